"""Evidence recall (eval/evidence.py) and the per-image records it reads (ToMe merge groups, the first cut of
the decoder-side methods), on the tiny random LLaVA; the runner writes each question's evidence."""
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from baselines.fastv import FastV
from baselines.pyramiddrop import PyramidDrop
from baselines.sparsevlm import SparseVLM
from baselines.tome import ToMe
from eval.evidence import evidence_recall, pool_cells, question_recall, reached
from eval.scenes import records, render, scene
from svdprune.families import generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("grid", [(4, 4), (4, 8), (8, 24), (5, 7)])
def test_pool_cells_are_torch_adaptive_pooling_cells(grid):
    one_hot = torch.eye(576).reshape(576, 24, 24)  # channel p is patch p
    pooled = F.adaptive_avg_pool2d(one_hot[None], grid)[0].flatten(1)  # (576, cells)
    assert [torch.nonzero(pooled[:, c]).flatten().tolist() for c in range(pooled.shape[1])] == pool_cells(grid)


def test_question_recall_counts_evidence_patches():
    assert question_recall([1, 2, 3, 4], {1, 2, 3}, {2}) == (0.75, 0.25)
    assert question_recall([], {1}, {1}) is None
    rows = [{"evidence": [0, 1], "kept_indices": [1, 5], "question_type": "color"},
            {"evidence": [5], "kept_indices": [1, 5], "question_type": "count"}]
    summary = evidence_recall("svd", rows)
    assert summary["recall"] == summary["own_recall"] == 75.0 and summary["n"] == 2
    assert summary["by_type"]["color"]["recall"] == 50.0
    assert evidence_recall("visionzip", rows)["recall"] == 100.0  # contextual tokens hold every other patch
    assert reached("sparsevlm", {"kept_indices": [1], "recycled_indices": [2]}) == ({1, 2}, {1})


def _images_and_questions(n=2):
    scenes_ = [scene("test", i) for i in range(n)]
    return [render(s) for s in scenes_], [s.questions[0][1] for s in scenes_]


@torch.no_grad()
def test_tome_merge_groups_match_merged_sizes(tiny):
    images, questions = _images_and_questions()
    method = ToMe(192)
    method.check(tiny)
    out = generate(tiny, method, questions, images, instruction=None, max_new_tokens=1)
    for groups, sizes in zip(out.stats["merge_groups"], out.stats["merged_sizes"]):
        assert len(groups) == 576
        counts = Counter(groups)
        assert [counts[g] for g in range(192)] == sizes  # every output token holds exactly its patches


class _Capture:
    """Wraps a decoder-side method and keeps the first state it returns (the first cut)."""

    def __init__(self, method):
        self.method, self.first = method, None

    def __getattr__(self, name):
        return getattr(self.method, name)

    def after_layer(self, layer_idx, view):
        state = self.method.after_layer(layer_idx, view)
        if state is not None and self.first is None:
            image_start = view.state.position_ids[view.state.is_image].view(len(view.state.hidden), -1)[:, :1]
            self.first = (state, image_start)
        return state


@torch.no_grad()
@pytest.mark.parametrize("method", [FastV(16, agg_layer=1), PyramidDrop(16, layers=[2, 3], ratios=[16.5 / 576, 0.01]),
                                    SparseVLM(16, layers=[1, 2], keep=[16, 7], recycle=False)],
                         ids=["fastv", "pyramiddrop", "sparsevlm"])
def test_decoder_methods_record_the_patches_of_their_first_cut(tiny, method):
    images, questions = _images_and_questions()
    captured = _Capture(method)
    captured.kind = method.kind
    out = generate(tiny, captured, questions, images, instruction=None, max_new_tokens=1)
    state, image_start = captured.first
    for b, kept in enumerate(out.stats["kept_indices"]):
        assert len(kept) == 16 and kept == sorted(kept) and len(set(kept)) == 16
        assert int(state.is_image[b].sum()) == 16
        if isinstance(method, FastV):  # FastV keeps the original position ids: they name the patches
            assert kept == (state.position_ids[b][state.is_image[b]] - image_start[b]).tolist()


def test_runner_writes_the_evidence_of_each_question(tiny, tmp_path):
    from harness.runner import run

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny", "model.vision_layers=3", "model.text_layers=4", "dataset=scenes", "dataset.scenes=2",
            "method=svd", "budget=16", f"output_dir={tmp_path}",
            "max_new_tokens=2", "progress=false"])
    run(cfg)
    [path] = tmp_path.glob("scenes/svd/*/predictions.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    expected = records("test", 2)
    assert [r["evidence"] for r in rows] == [r.extra["recorded"]["evidence"] for r in expected]
    manual = [question_recall(r["evidence"], set(r["kept_indices"]), set(r["kept_indices"]))[0] for r in rows]
    assert evidence_recall("svd", rows)["recall"] == pytest.approx(100 * sum(manual) / len(manual))

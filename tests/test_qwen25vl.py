"""Qwen2.5-VL through the engine (svdprune/families/qwen25vl.py), on a random tiny Qwen2_5_VLForConditionalGeneration: positions
equal HF's get_rope_index, vanilla equals HF generate (batch 1 and images of different sizes in one batch), every
supported method batched equals one question at a time, kept tokens keep their 3-D positions, unsupported methods are
refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.divprune import cosine_distance, max_min_select
from svdprune.families import qwen25vl
from svdprune.errors import UserError
from svdprune.pruning import METHODS, PruneContext, TokenState, Vanilla, build_method, default_params
from svdprune.families import generate, generate_by_image, supported_methods
from svdprune.surgery import greedy, new_cache, prefill

SIZES = [(300, 420), (224, 224), (448, 300), (100, 120)]  # 165, 64, 176 and 16 tokens at max_pixels 448 x 448
QUESTIONS = ["What color is the shape?", "Is there a circle?", "How many?", "What is on the left?"]


@pytest.fixture(scope="module")
def qwen():
    return qwen25vl.build_tiny(seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


@pytest.fixture(scope="module")
def inputs(qwen, images):
    return {i: qwen25vl.preprocess(qwen, image) for i, image in enumerate(images)}


def hf_inputs(lm, questions, image_list):
    """What the model card's processor hands HF: left-padded ids with every image's pads, patches, grids."""
    rows = [qwen25vl.prompt_ids(lm, q, None, image.num_tokens) for q, image in zip(questions, image_list)]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), lm.pad_token_id)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row)
        mask[i, length - len(row):] = 1
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.cat([im.patches for im in image_list]),
                image_grid_thw=torch.stack([im.grid for im in image_list]),
                mm_token_type_ids=(ids == lm.image_token_id).int())


def test_token_grid_follows_the_image_size(inputs):
    assert [inputs[i].num_tokens for i in range(4)] == [165, 64, 176, 16]
    assert inputs[0].token_grid == (11, 15) and inputs[0].patches.shape == (4 * 165, 3 * 2 * 14 * 14)


def test_positions_equal_hf_rope_index(qwen, inputs):
    image_list = [inputs[i] for i in range(4)]
    hf = hf_inputs(qwen, QUESTIONS, image_list)
    want, _ = qwen.model.model.get_rope_index(hf["input_ids"], hf["mm_token_type_ids"], hf["image_grid_thw"],
                                              attention_mask=hf["attention_mask"])
    for row, image in enumerate(image_list):
        ids = qwen25vl.prompt_ids(qwen, QUESTIONS[row], None, image.num_tokens)
        before = ids.index(qwen.image_token_id)
        cells = qwen25vl.raster_cells(torch.arange(image.num_tokens), image.token_grid[1])
        got = qwen25vl.mrope_positions(before, image.token_grid, cells, len(ids) - before - image.num_tokens)
        assert torch.equal(got, want[:, row, -len(ids):])


def test_vanilla_equals_hf_generate(qwen, inputs):
    """Answers token for token, and the first answer token's logits, batch 1 and one batch of four image sizes."""
    keys = [0, 1, 2, 3]
    ours = generate_by_image(qwen, Vanilla(), QUESTIONS, keys, inputs, instruction=None, max_new_tokens=6)
    for batch in ([[k] for k in keys], [keys]):
        for rows in batch:
            hf = hf_inputs(qwen, [QUESTIONS[k] for k in rows], [inputs[k] for k in rows])
            out = qwen.model.generate(**hf, max_new_tokens=6, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True)
            for j, k in enumerate(rows):
                assert out.sequences[j, hf["input_ids"].shape[1]:].tolist()[:len(ours.token_ids[k])] == ours.token_ids[k]
    # logits of the first answer token, batched engine vs HF one image at a time
    rows = qwen25vl._rows(qwen, Vanilla(), QUESTIONS, keys, inputs, instruction=None, seed=0)
    with torch.inference_mode():
        last, _, _ = prefill(qwen, qwen25vl._state(qwen, rows), Vanilla(), PruneContext(QUESTIONS), new_cache(qwen))
        logits = qwen.model.lm_head(last)
        for k in keys:
            hf = hf_inputs(qwen, [QUESTIONS[k]], [inputs[k]])
            torch.testing.assert_close(logits[k], qwen.model(**hf).logits[0, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", supported_methods("qwen25vl")[1:])
def test_methods_batched_equal_one_question_at_a_time(qwen, images, inputs, name):
    keys = [0, 1, 2, 3, 0]
    questions = QUESTIONS + ["Is it red?"]
    method = build_method(name, 32, default_params(name))
    batched = generate_by_image(qwen, method, questions, keys, inputs, instruction=None, max_new_tokens=4)
    alone = [generate(qwen, build_method(name, 32, default_params(name)), [q], [images[k]], instruction=None,
                      max_new_tokens=4) for q, k in zip(questions, keys)]
    assert batched.token_ids == [a.token_ids[0] for a in alone]
    assert batched.image_tokens_per_layer == [a.image_tokens_per_layer[0] for a in alone]
    assert batched.stats["image_tokens_unpruned"] == [165, 64, 176, 16, 165]
    after = [counts[-1] for counts in batched.image_tokens_per_layer]
    if name in ("pyramiddrop", "sparsevlm"):  # schedules fitted per image size: test_fitted_schedules_per_image
        assert after[3] == 16 and batched.stats["stage_keep_counts"][3] is None
        return
    kept = 36 if name == "dart" else 32  # DART: 4 image pivots + 8 pivots x 32 // 8
    assert after == [kept, kept, kept, 16, kept]  # the 16-token image keeps all of its tokens


def test_fitted_schedules_per_image(qwen, inputs):
    """PyramidDrop and SparseVLM refit their schedules to each image's own token count and the 28 layers; every layer
    sees what the fitted schedule says, and the kept and recycled tokens keep (take) real cells' 3-D positions."""
    from baselines.pyramiddrop import fit_keep_counts
    from baselines.sparsevlm import fit_keep, official_mean, stage_counts

    keys, sizes = [0, 1, 2], [165, 64, 176]
    pdrop = generate_by_image(qwen, build_method("pyramiddrop", 32, default_params("pyramiddrop")), QUESTIONS[:3],
                              keys, inputs, instruction=None, max_new_tokens=2)
    for n, per_layer, keeps in zip(sizes, pdrop.image_tokens_per_layer, pdrop.stats["stage_keep_counts"]):
        assert keeps == fit_keep_counts(n, 28, [2, 8, 16], 32)
        assert per_layer == [n] * 2 + [keeps[0]] * 6 + [keeps[1]] * 8 + [keeps[2]] * 12
        assert abs(sum(per_layer) / 28 - 32) <= 0.5  # the budget is the 28-layer average
    # a budget without a table entry and a ratio budget: fitted the same way (on LLaVA the first is refused)
    odd = build_method("pyramiddrop", 100, default_params("pyramiddrop"))
    odd.check(qwen)
    ratio = build_method("pyramiddrop", 64, default_params("pyramiddrop"))
    ratio.budget_ratio = 0.5
    out = generate_by_image(qwen, ratio, QUESTIONS[:3], keys, inputs, instruction=None, max_new_tokens=1)
    assert out.stats["stage_keep_counts"] == [fit_keep_counts(n, 28, [2, 8, 16], n // 2) for n in sizes]
    params = default_params("sparsevlm")
    table = {int(k): v for k, v in params["keep_counts"].items()}
    sparse = generate_by_image(qwen, build_method("sparsevlm", 32, params), QUESTIONS[:3], keys, inputs,
                               instruction=None, max_new_tokens=2)
    for i, n in enumerate(sizes):
        keep = fit_keep(n, 28, [2, 6, 15], 32, table)
        assert sparse.stats["stage_keep_counts"][i] == keep
        after = stage_counts(n, keep)
        assert sparse.image_tokens_per_layer[i] == [n] * 3 + [after[0]] * 4 + [after[1]] * 9 + [after[2]] * 12
        assert sparse.stats["image_tokens_mean_official"][i] == official_mean(n, 28, [2, 6, 15], keep)


def test_sparsevlm_cluster_tokens_take_their_centres_positions(qwen, inputs):
    """One stage with recycling on a batch of two: every image token after the cut, kept or recycled, has the 3-D
    position of an image cell of its row (no renumbering), and the text keeps its positions."""
    method = build_method("sparsevlm", 32, {**default_params("sparsevlm"), "layers": [2], "keep": [20]})
    rows = qwen25vl._rows(qwen, method, QUESTIONS[:2], [0, 0], inputs, instruction=None, seed=0)
    state = qwen25vl._state(qwen, rows)
    seen = {}

    class Spy(type(method)):
        def after_layer(self, layer_idx, view):
            out = super().after_layer(layer_idx, view)
            if out is not None:
                seen["before"], seen["after"] = view.state, out
            return out

    spy = Spy.__new__(Spy)
    spy.__dict__.update(method.__dict__)
    with torch.inference_mode():
        prefill(qwen, state, spy, PruneContext(QUESTIONS[:2]), new_cache(qwen))
    before, after = seen["before"], seen["after"]
    n_kept = int(after.is_image[0].sum())
    assert n_kept == stage_counts_of(165, [20])
    for row in range(2):
        cells = {tuple(p) for p in before.position_ids[:, row][:, before.is_image[row]].T.tolist()}
        image = after.position_ids[:, row][:, after.is_image[row]].T.tolist()
        assert all(tuple(p) in cells for p in image) and len({tuple(p) for p in image}) == n_kept
        text_before = before.position_ids[:, row][:, ~before.is_image[row] & ~before.padding[row]]
        text_after = after.position_ids[:, row][:, ~after.is_image[row] & ~after.padding[row]]
        assert torch.equal(text_before, text_after)


def stage_counts_of(n, keep):
    from baselines.sparsevlm import stage_counts

    return stage_counts(n, keep)[-1]


@pytest.mark.parametrize("name", ["svd", "random", "divprune"])
def test_encoder_cut_keeps_the_cells_positions(qwen, inputs, name):
    method = build_method(name, 24, default_params(name))
    rows = qwen25vl._rows(qwen, method, QUESTIONS[:3], [0, 1, 2], inputs, instruction=None, seed=0)
    for row, key in zip(rows, [0, 1, 2]):
        kept = torch.tensor(row.stats["kept_indices"])
        assert len(kept) == 24 and row.embeds.shape[0] == 24
        full = qwen25vl._rows(qwen, Vanilla(), [QUESTIONS[key]], [key], inputs, instruction=None, seed=0)[0]
        is_image = torch.tensor(full.ids) == qwen.image_token_id
        text_positions = full.positions[:, ~is_image]
        image_positions = full.positions[:, is_image]
        mine = torch.tensor(row.ids) == qwen.image_token_id
        assert torch.equal(row.positions[:, mine], image_positions[:, kept])  # each kept cell keeps its position
        assert torch.equal(row.positions[:, ~mine], text_positions)  # the text keeps its positions
        assert torch.equal(row.embeds, full.embeds[kept])


def test_divprune_measures_diversity_on_the_merged_tokens(qwen, inputs):
    tokens = qwen25vl.vision_tokens(qwen, [inputs[0]])[0]  # (165, d): already LLM-input embeddings
    _, cells, stats = qwen25vl.select(qwen, build_method("divprune", 20, {}), tokens, inputs[0], 0, None)
    want = max_min_select(cosine_distance(tokens[None]), 20).sort(dim=-1).values[0]
    assert stats["kept_indices"] == want.tolist()
    assert torch.equal(cells, qwen25vl.raster_cells(want, inputs[0].token_grid[1]))


def test_decoder_cut_keeps_3d_positions():
    positions = torch.arange(3 * 2 * 6).view(3, 2, 6)
    state = TokenState(hidden=torch.randn(2, 6, 4), position_ids=positions, padding=torch.zeros(2, 6, dtype=torch.bool),
                       is_image=torch.zeros(2, 6, dtype=torch.bool))
    keep = torch.tensor([[0, 2, 5], [1, 3, 4]])
    got = state.gather(keep).position_ids
    assert got.shape == (3, 2, 3)
    for axis in range(3):
        for row in range(2):
            assert got[axis, row].tolist() == positions[axis, row, keep[row]].tolist()


def test_decoding_continues_after_the_last_prompt_position(qwen, inputs):
    """After a cut the text keeps its positions, so the first generated token sits at the unpruned prompt's last
    position + 1 on all three axes (HF: rope_deltas), whatever was cut."""
    rows = qwen25vl._rows(qwen, build_method("svd", 16, {}), QUESTIONS[:1], [0], inputs, instruction=None, seed=0)
    full = qwen25vl._rows(qwen, Vanilla(), QUESTIONS[:1], [0], inputs, instruction=None, seed=0)
    assert torch.equal(rows[0].positions[:, -1], full[0].positions[:, -1])
    with torch.inference_mode():
        _, _, groups = prefill(qwen, qwen25vl._state(qwen, rows), Vanilla(), PruneContext(QUESTIONS[:1]),
                               new_cache(qwen))
    assert groups[-1].next_position.tolist() == [[int(full[0].positions.max()) + 1]] * 3


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(supported_methods("qwen25vl"))))
def test_unsupported_methods_are_refused_with_the_reason(qwen, inputs, name):
    params = default_params(name)
    if "clip_path" in params:  # TRIM's and CDPruner's CLIP: the random tiny one (no download)
        params["clip_path"] = "tiny"
    method = build_method(name, 32, params)
    with pytest.raises(UserError, match=f"method={name} does not run on Qwen2.5-VL: .+; methods that do: vanilla"):
        generate_by_image(qwen, method, QUESTIONS[:1], [0], inputs, instruction=None, max_new_tokens=2)


def test_stops_at_either_end_token(qwen):
    assert set(qwen.stop_ids) == {qwen.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    hidden = torch.zeros(2, qwen.model.lm_head.in_features)
    weight = qwen.model.lm_head.weight
    # hidden states whose argmax token is a stop token: both rows finish at once, nothing generated
    hidden[0] = weight[qwen.stop_ids[0]] * 100
    hidden[1] = weight[qwen.stop_ids[1]] * 100
    assert greedy(qwen, hidden, [], None, max_new_tokens=3) == [[], []]


def test_chat_template_is_the_model_cards():
    assert qwen25vl.chat_prompt("What is it?", "Answer briefly.") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>What is it?\nAnswer briefly.<|im_end|>\n<|im_start|>assistant\n")


def test_a_tokenizer_with_another_template_is_refused(qwen):
    tokenizer = qwen25vl.build_tiny_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}USER: {{ m['content'][1]['text'] }}{% endfor %}"
    with pytest.raises(UserError, match="chat template renders"):
        qwen25vl.check_chat_template(tokenizer)


# ------------------------------------------------------------------------------------------ run.py

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_run_py_on_the_tiny_qwen(shapes_folder, tmp_path):
    import harness.runner as runner

    base = ["model=qwen25vl_tiny", "model.text_layers=4", "dataset=local", f"dataset.path={shapes_folder}",
            f"output_dir={tmp_path}", "max_new_tokens=3", "progress=false", "limit=8", "batch_size=4"]
    metrics = runner.run(make_cfg([*base, "method=fastv", "budget=8"]))
    [path] = list(tmp_path.glob("local/fastv/*/predictions.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert metrics["n"] == 8 and metrics["model"] == "qwen25vl-tiny"
    for row in rows:
        assert row["prompt"].startswith("<|im_start|>system") and row["image_tokens_unpruned"] >= 4
        assert row["image_tokens_per_layer"][-1] == min(8, row["image_tokens_unpruned"])
    again = runner.run(make_cfg([*base, "method=fastv", "budget=8"]))  # resumed: nothing new to answer
    assert again["newly_answered"] == 0
    with pytest.raises(UserError, match="method=visionzip does not run on Qwen2.5-VL"):
        runner.run(make_cfg([*base, "method=visionzip", "budget=8"]))
    with pytest.raises(UserError, match=r"budget=300 is outside 1\.\.256"):
        runner.run(make_cfg([*base, "method=svd", "budget=300"]))
    assert not list(tmp_path.glob("local/visionzip/*")) and not list(tmp_path.glob("local/svd/*"))


# ------------------------------------------------------------------------------------------ compute counts

@pytest.mark.parametrize("grid", [(11, 15), (8, 8), (16, 11), (2, 2), (5, 4)])
def test_vision_count_equals_torch_counter(qwen, grid):
    from svdprune.flops import QwenGeometry, count_qwen_vision_flops, exact_qwen_vision_flops

    geometry = QwenGeometry.from_config(qwen.model.config)
    assert exact_qwen_vision_flops(grid, geometry) == count_qwen_vision_flops(qwen.model, grid)


def test_llm_layer_count_equals_torch_counter(qwen):
    """Qwen2.5-VL's decoder layer (grouped-query attention, q/k/v biases) counts as the Llama formula says."""
    from svdprune.flops import QwenGeometry, exact_llm_layer_flops, flop_counter

    geometry = QwenGeometry.from_config(qwen.model.config).text
    llm = qwen.language_model
    for n in (7, 40):
        hidden = torch.zeros(1, n, llm.config.hidden_size)
        positions = torch.arange(n)[None].expand(3, 1, n)
        counter = flop_counter()
        with counter, torch.no_grad():
            llm.layers[0](hidden, attention_mask=None, position_embeddings=llm.rotary_emb(hidden, positions),
                          cache=None, use_cache=False)
        assert counter.get_total_flops() == exact_llm_layer_flops(n, geometry)


# ------------------------------------------------------------------------------------------ loading a folder

def test_a_saved_folder_loads_and_answers_as_the_model(qwen, inputs, tmp_path):
    """The real loading code (from_pretrained of the model, tokenizer and image processor of a local folder, with
    min/max pixels from the settings) gives the same answers as the model it was saved from."""
    from omegaconf import OmegaConf

    from svdprune.families import load_model

    qwen.model.save_pretrained(tmp_path)
    qwen.tokenizer.save_pretrained(tmp_path)
    qwen.image_processor.save_pretrained(tmp_path)
    cfg = OmegaConf.create({"family": "qwen25vl", "kind": "pretrained", "path": str(tmp_path), "revision": None,
                            "dtype": "float32", "device": "cpu", "min_pixels": 3136, "max_pixels": 448 * 448})
    loaded = load_model(cfg, progress=False)
    assert loaded.family == "qwen25vl" and loaded.num_patches == 256 and set(loaded.stop_ids) == set(qwen.stop_ids)
    assert qwen25vl.preprocess(loaded, Image.new("RGB", (300, 420))).grid.tolist() == [1, 30, 22]
    want = generate_by_image(qwen, Vanilla(), QUESTIONS, [0, 1, 2, 3], inputs, instruction=None, max_new_tokens=4)
    got = generate_by_image(loaded, Vanilla(), QUESTIONS, [0, 1, 2, 3], inputs, instruction=None, max_new_tokens=4)
    assert got.token_ids == want.token_ids
    smaller = load_model(OmegaConf.merge(cfg, {"max_pixels": 224 * 224}), progress=False)
    assert qwen25vl.preprocess(smaller, Image.new("RGB", (300, 420))).num_tokens <= 64  # the setting is applied


def test_a_llava_folder_is_not_loaded_as_qwen(tmp_path):
    from omegaconf import OmegaConf

    from svdprune.families import load_model
    from svdprune.families.llava15 import build_tiny

    llava = build_tiny(vision_layers=1, text_layers=1)
    llava.model.save_pretrained(tmp_path)
    llava.tokenizer.save_pretrained(tmp_path)
    cfg = OmegaConf.create({"family": "qwen25vl", "kind": "pretrained", "path": str(tmp_path), "revision": None,
                            "dtype": "float32", "device": "cpu"})
    with pytest.raises(UserError, match="holds a 'llava' model; family qwen25vl needs 'qwen2_5_vl'"):
        load_model(cfg, progress=False)


# ------------------------------------------------------------------------------------------ ratio budgets

@pytest.mark.parametrize("name", ["svd", "fastv", "dart"])
def test_budget_ratio_keeps_a_share_of_each_image(qwen, inputs, name):
    method = build_method(name, 64, default_params(name))
    method.budget_ratio = 0.25
    out = generate_by_image(qwen, method, QUESTIONS, [0, 1, 2, 3], inputs, instruction=None, max_new_tokens=2)
    assert out.stats["image_budget"] == [41, 16, 44, 4]  # floor(0.25 x 165, 64, 176, 16)
    after = [counts[-1] for counts in out.image_tokens_per_layer]
    if name == "dart":  # 4 image pivots + 8 pivots x (k // 8)
        assert after == [4 + 8 * (k // 8) for k in (41, 16, 44, 4)]
    else:
        assert after == [41, 16, 44, 4]
    alone = [generate_by_image(qwen, method, [q], [k], inputs, instruction=None, max_new_tokens=2).token_ids[0]
             for q, k in zip(QUESTIONS, [0, 1, 2, 3])]
    assert out.token_ids == alone


def test_run_py_budget_ratio(shapes_folder, tmp_path):
    import harness.runner as runner

    base = ["model=qwen25vl_tiny", "model.text_layers=4", "dataset=local", f"dataset.path={shapes_folder}",
            f"output_dir={tmp_path}", "max_new_tokens=2", "progress=false", "limit=4", "method=svd"]
    metrics = runner.run(make_cfg([*base, "budget_ratio=0.5"]))
    assert metrics["budget"] is None and metrics["budget_ratio"] == 0.5
    [folder] = list(tmp_path.glob("local/svd/*"))
    assert folder.name.startswith("r0.5-qwen25vl-tiny-")
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert all(r["kept_tokens"] == max(1, r["image_tokens_unpruned"] // 2) for r in rows)
    runner.run(make_cfg([*base, "budget_ratio=0.5", "budget=17"]))  # budget is not part of a ratio run
    assert len(list(tmp_path.glob("local/svd/*"))) == 1
    with pytest.raises(UserError, match=r"budget_ratio=1.5; allowed: a share in \(0, 1\]"):
        runner.run(make_cfg([*base, "budget_ratio=1.5"]))
    with pytest.raises(UserError, match="budget_ratio=0.5 is for models whose images have their own token counts"):
        runner.run(make_cfg(["model=tiny", *base[1:], "budget_ratio=0.5"]))


# ------------------------------------------------------------------------------------------ pooling on the merged grid

def test_fitted_grid_shapes():
    from baselines.pooling import fitted_grid_shape

    assert fitted_grid_shape(32, (11, 15)) == (4, 8)  # aspect 0.5, closest to 11 / 15 among 32's factorisations
    assert fitted_grid_shape(32, (16, 11)) == (8, 4)
    assert fitted_grid_shape(64, (8, 8)) == (8, 8)
    assert fitted_grid_shape(37, (11, 15)) == (6, 6)  # 37 is prime: the largest count below with a fitting shape
    assert fitted_grid_shape(300, (11, 15)) == (11, 15)  # at most the grid


def test_pooling_pools_the_merged_grid_and_places_cells_at_their_bins(qwen, inputs):
    import torch.nn.functional as F

    tokens = qwen25vl.vision_tokens(qwen, [inputs[0]])[0]  # (165, d) on an 11 x 15 grid
    embeds, cells, stats = qwen25vl.select(qwen, build_method("pooling", 32, {}), tokens, inputs[0], 0, None)
    assert stats["pool_grid"] == [4, 8]
    grid = tokens.float().T.reshape(1, -1, 11, 15)
    want = F.adaptive_avg_pool2d(grid, (4, 8)).flatten(2).transpose(1, 2)[0]
    torch.testing.assert_close(embeds, want, rtol=0, atol=0)
    rows, cols = [0, 2, 5, 8], [0, 1, 3, 5, 7, 9, 11, 13]  # floor(i * 11 / 4), floor(j * 15 / 8)
    assert cells.tolist() == [[r, c] for r in rows for c in cols]


def test_the_memory_model_says_it_covers_llava_only():
    import torch as _torch

    from svdprune.memory import auto_batch_size, main

    with pytest.raises(UserError, match="model.family=qwen25vl: the memory model covers LLaVA-1.5 only"):
        main(["model=qwen25vl_tiny", "method=svd", "budget=16", "batch_size=1"])
    config = qwen25vl.tiny_config(qwen25vl.build_tiny_tokenizer(), text_layers=2, vision_layers=2)
    with pytest.raises(UserError, match="batch_size=auto: the memory model covers LLaVA-1.5 only"):
        auto_batch_size(config, build_method("svd", 16, {}), _torch.float16, 8, _torch.device("cuda"), free_bytes=10**10)


# ------------------------------------------------------------------------------------------ svdprune.prune()

@pytest.mark.parametrize("name", supported_methods("qwen25vl"))
def test_prune_api_equals_the_engine(qwen, inputs, name):
    """``svdprune.prune`` on a Qwen2_5_VLForConditionalGeneration + HF ``generate`` on the processor's inputs (pads,
    patches, grids) gives the engine's answers and per-question records: one mechanism. The four image sizes in one
    left-padded call, also for decoder-side methods (prefilled per size as run.py groups them, decoded as one batch)."""
    import svdprune

    keys = [0, 1, 2, 3]
    want = generate_by_image(qwen, build_method(name, 32, default_params(name)), QUESTIONS, keys, inputs,
                             instruction=None, max_new_tokens=4)
    calls = [keys]
    with svdprune.pruned(qwen.model, name, 32) as handle:
        got = {}
        for rows in calls:
            hf = hf_inputs(qwen, [QUESTIONS[k] for k in rows], [inputs[k] for k in rows])
            out = qwen.model.generate(**hf, max_new_tokens=4, do_sample=False)
            got.update({k: out[j, hf["input_ids"].shape[1]:].tolist() for j, k in enumerate(rows)})
        records = list(handle.records)
    for k in keys:
        answer = want.token_ids[k]
        assert got[k][:len(answer)] == answer  # HF pads after an end token, the engine stops before it
        if len(answer) < 4:
            assert got[k][len(answer)] in qwen.stop_ids
    assert [r["image_tokens_per_layer"] for r in records] == want.image_tokens_per_layer
    for key, values in want.stats.items():
        assert [r.get(key) for r in records] == values, key


def test_prune_api_refusals_and_remove(qwen, inputs):
    import svdprune

    hf = hf_inputs(qwen, QUESTIONS[:2], [inputs[0], inputs[1]])
    with torch.inference_mode():
        before = qwen.model(**hf).logits
    with svdprune.pruned(qwen.model, "vanilla", 32), torch.inference_mode():  # a full forward: logits aligned
        logits = qwen.model(**hf).logits  # with the user's ids; text positions as the unpruned model's
    text = hf["attention_mask"].bool() & (hf["input_ids"] != qwen.image_token_id)
    torch.testing.assert_close(logits[text], before[text], rtol=1e-4, atol=1e-4)
    assert not logits[~text].any()
    with pytest.raises(UserError, match="method=visionzip does not run on Qwen2.5-VL"):
        svdprune.prune(qwen.model, "visionzip", 32)
    handle = svdprune.prune(qwen.model, "fastv", 32)
    bad = dict(hf, image_grid_thw=hf["image_grid_thw"].flip(0))
    with pytest.raises(UserError, match="prompt 0 has 165 image tokens but its image_grid_thw"):
        qwen.model(**bad)
    handle.remove()
    with torch.inference_mode():
        assert torch.equal(qwen.model(**hf).logits, before)  # the unpruned model, bit for bit


def test_prune_api_full_forward_of_mixed_sizes_equals_one_prompt_per_call(qwen, inputs):
    """A decoder-side cut on images of two sizes in one full forward (``model(**inputs)``: logits at every text
    position, e.g. loglikelihood scoring): each row's text logits are those of the row run alone."""
    import svdprune

    hf = hf_inputs(qwen, QUESTIONS[:2], [inputs[0], inputs[1]])
    assert len({int(g.prod()) for g in hf["image_grid_thw"]}) == 2
    with svdprune.pruned(qwen.model, "fastv", 32) as handle, torch.inference_mode():
        together = qwen.model(**hf).logits
        alone = [qwen.model(**hf_inputs(qwen, [QUESTIONS[i]], [inputs[i]])).logits[0] for i in range(2)]
        counts = [r["image_tokens_per_layer"] for r in handle.records]
    assert counts[:2] == counts[2:]  # the same cut per row, together or alone
    for i in range(2):
        text = hf["attention_mask"][i].bool() & (hf["input_ids"][i] != qwen.image_token_id)
        own = alone[i][alone[i].abs().sum(-1) > 0]  # its text positions, in order
        torch.testing.assert_close(together[i][text], own, rtol=1e-4, atol=1e-4)


def test_attention_rows_equal_the_qwen_layers_eager_attention(qwen, inputs):
    """What FastV, PyramidDrop, SparseVLM and DART score with (baselines/attention.py) is a Qwen2.5-VL decoder layer's
    own eager attention (M-RoPE cos/sin, q/k biases, GQA), on a left-padded batch of two image sizes."""
    from baselines.attention import attention_rows
    from svdprune.surgery import _attention_mask

    rows = qwen25vl._rows(qwen, Vanilla(), QUESTIONS[:2], [0, 1], inputs, instruction=None, seed=0)
    state = qwen25vl._state(qwen, rows)
    llm = qwen.language_model
    layer = llm.layers[1]
    attn = layer.self_attn
    saved = attn.config._attn_implementation
    try:
        attn.config._attn_implementation = "eager"
        with torch.inference_mode():
            position_embeddings = llm.rotary_emb(state.hidden, state.position_ids)
            mask = _attention_mask(state.padding)
            additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
            _, weights = attn(hidden_states=layer.input_layernorm(state.hidden), position_embeddings=position_embeddings,
                              attention_mask=additive, position_ids=state.position_ids)
            query = torch.arange(state.hidden.shape[1]).expand(2, -1)
            ours = attention_rows(layer, state.hidden, position_embeddings, mask, query, scale="multiply")
    finally:
        attn.config._attn_implementation = saved
    torch.testing.assert_close(ours, weights.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["vanilla", "svd", "pooling"])
def test_shared_prefix_equals_the_whole_prompt(qwen, inputs, name):
    """Vanilla and encoder-side methods prefill each image's prefix once (the runner carries it to the next batch) and
    only the question suffixes per question: the same answers, prompt lengths and records as the whole prompt, the
    suffix's last hidden state to 1e-4, and a second batch on a carried prefix runs no vision tower."""
    from svdprune.surgery import new_cache
    from svdprune.surgery import prefill_suffixes

    method = build_method(name, 24, default_params(name))
    keys, questions = [0, 1, 2, 3, 0, 2], QUESTIONS + ["Is it red?", "Is it blue?"]
    whole = qwen25vl._generate_whole(qwen, method, questions, keys, inputs, instruction=None, max_new_tokens=4, seed=0)
    prefixes: dict = {}
    shared = generate_by_image(qwen, method, questions, keys, inputs, instruction=None, max_new_tokens=4,
                               prefixes=prefixes)
    assert shared.token_ids == whole.token_ids and shared.prompt_lengths == whole.prompt_lengths
    assert shared.image_tokens_per_layer == whole.image_tokens_per_layer and shared.stats == whole.stats
    assert set(prefixes) == {0, 1, 2, 3}
    # the suffix prefill's last hidden state against the whole prompt's, one row
    rows = qwen25vl._rows(qwen, method, questions[:1], [0], inputs, instruction=None, seed=0)
    prefix = prefixes[0]
    suffix = rows[0].ids[len(prefix.row.ids):]
    with torch.inference_mode():
        want, _, _ = prefill(qwen, qwen25vl._state(qwen, rows), Vanilla(), PruneContext(questions[:1]), new_cache(qwen))
        kv = [(k[None], v[None]) for k, v in prefix.kv]
        got, group = prefill_suffixes(qwen, kv, len(prefix.row.ids), [suffix], new_cache(qwen),
                                      text_start=torch.tensor([prefix.text_start]), axes=3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert group.next_position[:, 0].tolist() == [int(rows[0].positions.max()) + 1] * 3
    calls = []
    hook = qwen.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        again = generate_by_image(qwen, method, questions[:2], keys[:2], {}, instruction=None, max_new_tokens=4,
                                  prefixes=prefixes)
    finally:
        hook.remove()
    assert calls == [] and again.token_ids == whole.token_ids[:2]


def test_prune_api_budget_ratio(qwen, inputs):
    """``prune(..., budget_ratio=r)`` keeps floor(r N) of each image's tokens, as run.py's budget_ratio."""
    import svdprune

    method = build_method("svd", 64, default_params("svd"))
    method.budget_ratio = 0.25
    keys = [0, 1, 2, 3]
    want = generate_by_image(qwen, method, QUESTIONS, keys, inputs, instruction=None, max_new_tokens=3)
    with svdprune.pruned(qwen.model, "svd", budget_ratio=0.25) as handle:
        hf = hf_inputs(qwen, QUESTIONS, [inputs[k] for k in keys])
        out = qwen.model.generate(**hf, max_new_tokens=3, do_sample=False)
        records = list(handle.records)
        assert "budget_ratio=0.25" in repr(handle)
    assert [r["image_budget"] for r in records] == [41, 16, 44, 4]
    assert [r["kept_tokens"] for r in records] == [41, 16, 44, 4]
    for j, answer in enumerate(want.token_ids):
        assert out[j, hf["input_ids"].shape[1]:].tolist()[:len(answer)] == answer
    with pytest.raises(UserError, match="budget_ratio=0.5 is for models whose images have their own token counts"):
        from svdprune.families.llava15 import build_tiny

        svdprune.prune(build_tiny(vision_layers=1, text_layers=1).model, "svd", budget_ratio=0.5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loading_equals_from_pretrained(qwen, inputs, tmp_path, dtype):
    """The loader in half precision holds what plain ``from_pretrained(dtype=...)`` holds (every parameter and buffer,
    values and dtypes: rotary ``inv_freq`` stays float32), so the two models' forwards are bit for bit the same."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    for part in (qwen.model, qwen.tokenizer, qwen.image_processor):
        part.save_pretrained(tmp_path)
    ours = qwen25vl.load_pretrained(str(tmp_path), None, dtype, "cpu", min_pixels=qwen25vl.DEFAULT_MIN_PIXELS,
                                    max_pixels=qwen25vl.DEFAULT_MAX_PIXELS, progress=False).model
    theirs = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, dtype=getattr(torch, dtype)).eval()
    mine = {**dict(ours.named_parameters()), **dict(ours.named_buffers())}
    ref = {**dict(theirs.named_parameters()), **dict(theirs.named_buffers())}
    assert mine.keys() == ref.keys()
    for name, tensor in ref.items():
        assert mine[name].dtype == tensor.dtype and torch.equal(mine[name], tensor), name
    assert any(t.dtype == torch.float32 for name, t in ref.items() if "inv_freq" in name)
    hf = hf_inputs(qwen, QUESTIONS[:2], [inputs[0], inputs[1]])
    with torch.inference_mode():
        assert torch.equal(ours(**hf).logits, theirs(**hf).logits)


@pytest.mark.parametrize("name, kept", [("divprune", 600), ("dart", 4 + 8 * (600 // 8)), ("svd", 600), ("random", 600)])
def test_count_budgets_beyond_576_on_a_large_image(tmp_path, name, kept):
    """Budgets are checked against the model's own token counts, not LLaVA-1.5's 576: a 1008 x 672 image has
    36 x 24 = 864 tokens, budget=600 keeps 600 of them (DART: its pivots plus T per pivot, as released)."""
    import harness.runner as runner

    (tmp_path / "d" / "images").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (672, 1008, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "d" / "images" / "big.png")
    (tmp_path / "d" / "questions.jsonl").write_text(json.dumps(
        {"question_id": "q0", "image": "big.png", "question": "What is it?", "answer": "noise"}) + "\n")
    metrics = runner.run(make_cfg(["model=qwen25vl_tiny", "model.text_layers=4", "model.max_pixels=784000",
                                   "dataset=local", f"dataset.path={tmp_path / 'd'}", f"output_dir={tmp_path / 'o'}",
                                   "max_new_tokens=1", "progress=false", f"method={name}", "budget=600"]))
    [path] = list(tmp_path.glob(f"o/local/{name}/*/predictions.jsonl"))
    [row] = [json.loads(line) for line in path.read_text().splitlines()]
    assert row["image_tokens_unpruned"] == 864 and metrics["n"] == 1
    assert row["image_tokens_per_layer"][-1] == kept
    with pytest.raises(UserError, match=r"budget=1001 is outside 1\.\.1000"):
        runner.run(make_cfg(["model=qwen25vl_tiny", "model.max_pixels=784000", "dataset=local",
                             f"dataset.path={tmp_path / 'd'}", f"method={name}", "budget=1001"]))

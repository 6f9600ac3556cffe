"""lmms-eval end to end, offline, with the svdprune_llava model (eval/lmms_model.py) on a local task.

Opt-in (marker ``lmms``; skipped where lmms-eval is not installed)::

    pip install -e ".[lmms]"
    python -m pytest -m lmms tests/test_lmms_eval.py

The test writes a task (YAML + utils.py) and a small dataset (the first scenes test questions as JSON lines and
PNG files) to a temporary folder, runs the ``lmms-eval`` command on the scenes model through ``--include_path``,
and requires lmms-eval's answers and accuracy to be run.py's on the same questions (same method, budget,
prompt text and max_new_tokens).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from eval.datasets import load_dataset, load_image
from harness.mini_protocol import run_and_read
from harness.scenes_protocol import SCENES_MODEL, scenes_config

pytestmark = pytest.mark.lmms
pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install -e \".[lmms]\")")

N_QUESTIONS = 24
TASK = "svdprune_scenes_local"


def _write_task(folder, records, instruction: str) -> None:
    data = folder / "data.jsonl"
    images = folder / "images"
    images.mkdir(parents=True)
    with data.open("w") as f:
        for record in records:
            path = images / f"{record.question_id}.png"
            load_image(record).save(path)
            f.write(json.dumps({"question_id": record.question_id, "question": record.question,
                                "answers": record.answers, "image": str(path)}) + "\n")
    (folder / "utils.py").write_text(textwrap.dedent(f'''
        from PIL import Image

        from eval.scoring import score


        def doc_to_visual(doc):
            return [Image.open(doc["image"]).convert("RGB")]


        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
            return doc["question"] + "\\n" + {instruction!r}


        def process_results(doc, results):
            return {{"accuracy": 100.0 * score("gqa", results[0], doc["answers"])}}
    '''))
    (folder / f"{TASK}.yaml").write_text(textwrap.dedent(f"""
        task: {TASK}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answers
        process_results: !function utils.process_results
        generation_kwargs:
          max_new_tokens: 3
          temperature: 0
          do_sample: false
        metric_list:
          - metric: accuracy
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 0.0
    """))


def _run_lmms_eval(tmp_path, model: str, model_args: str, batch_size: int) -> list[dict]:
    """``lmms-eval --model <model>`` on the local task in tmp_path/task, offline; its logged samples."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": str(tmp_path / "task") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args,
               "--tasks", TASK, "--include_path", str(tmp_path / "task"), "--batch_size", str(batch_size),
               "--output_path", str(tmp_path / "out"), "--log_samples"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for file in (tmp_path / "out").rglob(f"*{TASK}*.jsonl")
            for line in file.read_text().splitlines() if line.strip()]


def _answers(samples: list[dict]) -> dict:
    """doc_id (the line of data.jsonl) -> the answer lmms-eval logged."""
    return {s["doc_id"]: s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
            for s in samples}


@pytest.mark.parametrize("method, budget, params", [("svd", 32, ""), ("fastv", 16, ",agg_layer=1")])
def test_lmms_eval_gives_run_py_answers_on_a_local_task(method, budget, params, tmp_path):
    cfg = scenes_config(method, budget, N_QUESTIONS, tmp_path / "runs", batch_size=8)
    metrics, rows = run_and_read(cfg)
    dataset = load_dataset(cfg.dataset)
    records = dataset.records[:N_QUESTIONS]
    _write_task(tmp_path / "task", records, dataset.instruction)

    samples = _run_lmms_eval(tmp_path, "svdprune_llava", f"pretrained={SCENES_MODEL},method={method},"
                             f"budget={budget},device=cpu,dtype=float32{params}", batch_size=4)
    assert len(samples) == N_QUESTIONS, [str(p) for p in (tmp_path / "out").rglob("*")]
    by_id = {row["question_id"]: row["prediction"] for row in rows}
    answers = _answers(samples)
    assert answers == {i: by_id[r.question_id] for i, r in enumerate(records)}
    results = json.loads(next((tmp_path / "out").rglob("*results.json")).read_text())["results"][TASK]
    assert results["accuracy,none"] == pytest.approx(metrics["this_run"]["accuracy"])


def _direct_logprob(model, tokenizer, image, context: str, choice: str) -> tuple[float, bool]:
    """(summed log-probability of `` {choice}</s>`` after the prompt, whether greedy gives it), computed here with
    a plain forward of ``model`` on run.py's token ids (independent of eval/lmms_model.py)."""
    import torch

    from svdprune.prompts import preprocess_image, tokenizer_image_token, vicuna_prompt

    prompt = vicuna_prompt(context, None)
    pixels = preprocess_image(image)[None]
    n_context = len(tokenizer_image_token(prompt, tokenizer, model.config.image_token_id, 576))
    ids = torch.tensor([tokenizer_image_token(f"{prompt} {choice}</s>", tokenizer, model.config.image_token_id, 576)])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits[0].float()[n_context - 1:-1]
    targets = ids[0, n_context:]
    logprob = float(torch.log_softmax(logits, -1).gather(-1, targets[:, None]).sum())
    return logprob, bool((logits.argmax(-1) == targets).all())


@pytest.mark.parametrize("method, budget", [("vanilla", 576), ("svd", 16)])
def test_loglikelihood_is_the_summed_log_probability_of_the_continuation(method, budget, tmp_path):
    """svdprune_llava.loglikelihood on lmms-eval Instances (yes/no continuations of scenes questions) against the
    summed log-probabilities computed directly: with plain HF for vanilla, with prune() for svd.

    Called directly, not through lmms-eval's evaluator: lmms-eval 0.7.3 turns every loglikelihood result into
    strings on the way to its multiple-choice scoring (``unwrap_generation_output``), so its argmax compares
    text; no model's multiple-choice accuracy is right there until that is fixed upstream."""
    import contextlib

    from lmms_eval.api.instance import Instance
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    import svdprune
    from eval.lmms_model import SvdpruneLlava

    dataset = load_dataset(scenes_config("vanilla", 576, N_QUESTIONS, tmp_path).dataset)
    records = [r for r in dataset.records[:80] if r.answers[0] in ("yes", "no")][:6]
    lmm = SvdpruneLlava(pretrained=str(SCENES_MODEL), method=method, budget=budget, device="cpu", dtype="float32")
    lmm.task_dict = {"local": {"test": {i: {"image": load_image(r)} for i, r in enumerate(records)}}}
    contexts = [f"{r.question}\n{dataset.instruction}" for r in records]
    requests = [Instance(request_type="loglikelihood", idx=0, metadata={"task": "local", "doc_id": i, "repeats": 1},
                         arguments=(contexts[i], choice, lambda doc: [doc["image"]], i, "local", "test"))
                for i in range(len(records)) for choice in ("yes", "no")]
    results = lmm.loglikelihood(requests)
    lmm.handle.remove()

    model = LlavaForConditionalGeneration.from_pretrained(SCENES_MODEL).eval()
    tokenizer = AutoTokenizer.from_pretrained(SCENES_MODEL)
    with svdprune.pruned(model, method, budget) if method != "vanilla" else contextlib.nullcontext():
        for request, (logprob, greedy) in zip(requests, results):
            i, choice = request.args[3], request.args[1]
            expected, expected_greedy = _direct_logprob(model, tokenizer, load_image(records[i]), contexts[i], choice)
            assert logprob == pytest.approx(expected, abs=1e-4)
            assert greedy == expected_greedy
    assert any(greedy for _, greedy in results) and not all(greedy for _, greedy in results)


@pytest.mark.parametrize("method, budget", [("svd", 8), ("fastv", 8)])
def test_lmms_eval_qwen25vl_gives_run_py_answers(method, budget, tmp_path):
    """The svdprune_qwen25vl model (a saved random tiny Qwen2.5-VL folder, the model card's processor and chat prompt)
    answers a local task as run.py's ``model=qwen25vl_7b model.path=<folder>`` does on the same questions."""
    from hydra import compose, initialize_config_dir

    from eval.fixtures import write_local_fixture
    from svdprune.families import qwen25vl

    folder = tmp_path / "qwen"
    lm = qwen25vl.build_tiny(seed=0, text_layers=4)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    lm.image_processor.save_pretrained(folder)
    data = write_local_fixture(tmp_path / "data", questions=6, images=3, seed=0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with initialize_config_dir(config_dir=os.path.join(root, "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=qwen25vl_7b", f"model.path={folder}", "model.dtype=float32", "model.device=cpu", "dataset=local",
            f"dataset.path={data}", f"output_dir={tmp_path / 'runs'}", "max_new_tokens=3", "progress=false",
            f"method={method}", f"budget={budget}", "batch_size=3"])
    _, rows = run_and_read(cfg)
    dataset = load_dataset(cfg.dataset)
    records = dataset.records
    _write_task(tmp_path / "task", records, dataset.instruction or "")

    answers = _answers(_run_lmms_eval(tmp_path, "svdprune_qwen25vl", f"pretrained={folder},method={method},"
                                      f"budget={budget},device=cpu,dtype=float32", batch_size=1))
    by_id = {row["question_id"]: row["prediction"] for row in rows}
    assert len(answers) == len(records) == 6
    assert answers == {i: by_id[r.question_id] for i, r in enumerate(records)}
    assert len(set(answers.values())) > 1  # the random model's answers are text, and differ between questions


@pytest.mark.parametrize("method, budget", [("svd", 32), ("fastv", 32)])
def test_lmms_eval_llava_next_gives_run_py_answers(method, budget, tmp_path):
    """The svdprune_llava_next model (a saved random tiny LLaVA-NeXT folder, llava-hf's AnyRes processor, the vicuna_v1
    prompt) answers a local task as run.py's ``model=llava_next_7b model.path=<folder>`` does on the same questions."""
    from hydra import compose, initialize_config_dir

    from eval.fixtures import write_local_fixture
    from svdprune.families import llava_next

    folder = tmp_path / "next"
    lm = llava_next.build_tiny(seed=0, text_layers=4)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    lm.image_processor.save_pretrained(folder)
    data = write_local_fixture(tmp_path / "data", questions=6, images=3, seed=0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    extra = ["method.params.agg_layer=1"] if method == "fastv" else []
    with initialize_config_dir(config_dir=os.path.join(root, "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=llava_next_7b", f"model.path={folder}", "model.dtype=float32", "model.device=cpu", "dataset=local",
            f"dataset.path={data}", f"output_dir={tmp_path / 'runs'}", "max_new_tokens=3", "progress=false",
            f"method={method}", f"budget={budget}", "batch_size=3", *extra])
    _, rows = run_and_read(cfg)
    dataset = load_dataset(cfg.dataset)
    records = dataset.records
    _write_task(tmp_path / "task", records, dataset.instruction or "")

    agg = ",agg_layer=1" if method == "fastv" else ""
    answers = _answers(_run_lmms_eval(tmp_path, "svdprune_llava_next", f"pretrained={folder},method={method},"
                                      f"budget={budget},device=cpu,dtype=float32{agg}", batch_size=1))
    by_id = {row["question_id"]: row["prediction"] for row in rows}
    assert len(answers) == len(records) == 6
    assert answers == {i: by_id[r.question_id] for i, r in enumerate(records)}


def test_qwen25vl_loglikelihood_is_the_summed_log_probability(tmp_path):
    """svdprune_qwen25vl.loglikelihood (vanilla) against plain HF Qwen2.5-VL forwards on the same chat text: the
    prompt, the continuation and ``<|im_end|>`` as the assistant turn."""
    import torch
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from eval.lmms_model import SvdpruneQwen25VL
    from svdprune.families import qwen25vl

    folder = tmp_path / "qwen"
    lm = qwen25vl.build_tiny(seed=0, text_layers=4)
    for part in (lm.model, lm.tokenizer, lm.image_processor):
        part.save_pretrained(folder)
    images = [Image.new("RGB", (160, 224), (200, 30, 30)), Image.new("RGB", (96, 96), (20, 20, 220))]
    contexts = ["Is it red?", "Is it blue?"]
    lmm = SvdpruneQwen25VL(pretrained=str(folder), method="vanilla", device="cpu", dtype="float32")
    lmm.task_dict = {"local": {"test": {i: {"image": image} for i, image in enumerate(images)}}}
    requests = [Instance(request_type="loglikelihood", idx=0, metadata={"task": "local", "doc_id": i, "repeats": 1},
                         arguments=(contexts[i], choice, lambda doc: [doc["image"]], i, "local", "test"))
                for i in range(2) for choice in ("yes", "no")]
    results = lmm.loglikelihood(requests)
    lmm.handle.remove()
    for request, (logprob, greedy) in zip(requests, results):
        i, choice = request.args[3], request.args[1]
        image = qwen25vl.preprocess(lm, images[i])
        prompt = qwen25vl.chat_prompt(contexts[i])
        n_context = len(qwen25vl.text_ids(lm, prompt, image.num_tokens))
        ids = torch.tensor([qwen25vl.text_ids(lm, f"{prompt}{choice}<|im_end|>", image.num_tokens)])
        with torch.no_grad():
            logits = lm.model(input_ids=ids, pixel_values=image.patches, image_grid_thw=image.grid[None],
                              mm_token_type_ids=(ids == lm.image_token_id).long()).logits[0, n_context - 1:-1]
        targets = ids[0, n_context:]
        assert logprob == pytest.approx(float(torch.log_softmax(logits, -1).gather(-1, targets[:, None]).sum()),
                                        abs=1e-4)
        assert greedy == bool((logits.argmax(-1) == targets).all())

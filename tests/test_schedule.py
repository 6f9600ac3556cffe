"""Scheduling by image (harness/schedule.py, svdprune.families.generate_by_image) against the straightforward
per-question path, on the tiny random model: same predictions question by question, one vision pass and one
prefix prefill per image, images prefetched within a bound, no mask without padding, CUDA OOM recovery."""
import json
import logging
from pathlib import Path

import pytest
import torch

import harness.runner as runner
import harness.schedule as schedule
from baselines.fastv import FastV
from eval.datasets import load_local
from omegaconf import OmegaConf
from svdprune.prompts import preprocess_image, vicuna_prompt
from svdprune.pruning import Vanilla
from svdprune.families import generate, generate_by_image
from svdprune.surgery import new_cache, prefill
from svdprune.families.llava15 import build_inputs, encode_images
from svdprune.families.llava15 import prefill_prefixes, split_prompt
from svdprune.surgery import prefill_suffixes
from svdprune.svd import SvdPrune
from svdprune.pruning import PruneContext
from tests.conftest import QUESTIONS
from tests.test_runner import base, make_cfg

INSTRUCTION = "Answer the question using a single word or phrase."
# (method overrides, label): vanilla, one encoder-side and one decoder-side method (tiny LLM: 4 layers)
METHODS = [(["method=vanilla"], "vanilla"), (["method=svd", "budget=16"], "svd"),
           (["method=fastv", "budget=16", "method.params.agg_layer=2"], "fastv")]


def rows_by_id(out):
    [path] = list(Path(out).glob("*/*/*/predictions.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_id = {r["question_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a question answered twice"
    return by_id


@pytest.mark.parametrize("overrides, label", METHODS, ids=[m[1] for m in METHODS])
def test_by_image_equals_per_question(shapes_folder, tmp_path, overrides, label):
    """12 questions on 8 images (q % 8; colour and shape questions of two prompt lengths): the per-question path
    in dataset order at batch size 3 against the by-image schedule at batch sizes 1 and 5 (batches mixing images,
    padded suffixes, an image spanning two batches). Every field of every row is equal: prediction, prompt,
    token counts, stats."""
    reference = tmp_path / "per_question"
    runner.run(make_cfg(base(shapes_folder, reference, *overrides, "schedule=per_question", "batch_size=3",
                             "limit=12")))
    expected = rows_by_id(reference)
    for batch_size in (1, 5):
        out = tmp_path / f"by_image_{batch_size}"
        runner.run(make_cfg(base(shapes_folder, out, *overrides, "schedule=by_image", f"batch_size={batch_size}",
                                 "limit=12")))
        assert rows_by_id(out) == expected, f"{label} batch {batch_size}"


def records(shapes_folder):
    return load_local(OmegaConf.create({"name": "local", "path": str(shapes_folder)})).records


def count_vision_images(tiny, run):
    """Images through the vision tower and rows through the first LLM layer while ``run()`` runs."""
    seen = {"images": 0, "layer0": []}
    hooks = [tiny.vision_tower.register_forward_hook(
                 lambda module, args, output: seen.__setitem__("images", seen["images"] + args[0].shape[0])),
             tiny.language_model.layers[0].register_forward_hook(
                 lambda module, args, output: seen["layer0"].append(tuple(args[0].shape[:2])))]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("batch_size", [1, 5])
def test_one_vision_pass_and_one_prefix_prefill_per_image(tiny, shapes_folder, batch_size):
    todo = records(shapes_folder)[:14]  # 14 questions on 8 images (q % 8)
    by_image = count_vision_images(tiny, lambda: [b for b in schedule.answer_batches(
        tiny, SvdPrune(16), todo, batch_size=batch_size, instruction=INSTRUCTION, max_new_tokens=1, seed=0,
        workers=2, ahead=3)])
    assert by_image["images"] == 8
    prefix_len = len(split_prompt(tiny, vicuna_prompt("", INSTRUCTION), 16)[0])
    prefix_rows = sum(rows for rows, length in by_image["layer0"] if length == prefix_len)
    assert prefix_rows == 8  # each image's prefix prefilled once; the rest are question suffixes (and decode steps)
    assert all(length < prefix_len for _, length in by_image["layer0"] if length != prefix_len)


def test_shared_prefix_prefill_matches_whole_prompt_prefill(tiny, random_images):
    """Prefix once + suffix from the cache computes the whole-prompt prefill up to summation order (float32)."""
    questions = QUESTIONS[:3]
    images = [random_images[0], random_images[0], random_images[1]]  # two questions share an image
    pixels = torch.stack([preprocess_image(img) for img in images])
    prompts = [vicuna_prompt(q, INSTRUCTION) for q in questions]
    with torch.no_grad():
        embeds = encode_images(tiny, SvdPrune(16), pixels, PruneContext(questions, model=tiny.model, lm=tiny))
        full, _, _ = prefill(tiny, build_inputs(tiny, prompts, embeds), Vanilla(576),
                             PruneContext(questions), new_cache(tiny))
        prefix, _ = split_prompt(tiny, prompts[0], 16)
        kv = prefill_prefixes(tiny, prefix, embeds[[0, 2]])  # the two distinct images
        rows = torch.tensor([0, 0, 1])
        shared, _ = prefill_suffixes(tiny, [(k[rows], v[rows]) for k, v in kv], len(prefix),
                                     [split_prompt(tiny, p, 16)[1] for p in prompts], new_cache(tiny))
    assert shared.shape == full.shape
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    assert (tiny.model.lm_head(shared).argmax(-1) == tiny.model.lm_head(full).argmax(-1)).all()


def attention_masks(tiny, run):
    """The attention_mask every call of layer 0's attention got while ``run()`` ran, with the query length."""
    seen = []
    hook = tiny.language_model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"].shape[1], kwargs.get("attention_mask"))),
        with_kwargs=True)
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_no_mask_without_padding(tiny, random_images):
    same_length = attention_masks(tiny, lambda: generate(tiny, SvdPrune(16), ["How many?", "How many?"],
                                                         random_images[:2], instruction=INSTRUCTION, max_new_tokens=3))
    assert same_length and all(mask is None for _, mask in same_length)  # prefill (is_causal) and decoding
    padded = attention_masks(tiny, lambda: generate(tiny, SvdPrune(16), ["How many?", QUESTIONS[3]],
                                                    random_images[:2], instruction=INSTRUCTION, max_new_tokens=3))
    assert all(mask is not None for _, mask in padded)
    pixels = {0: preprocess_image(random_images[0])}
    shared = attention_masks(tiny, lambda: generate_by_image(tiny, Vanilla(576), ["How many?"], [0], pixels,
                                                             instruction=INSTRUCTION, max_new_tokens=3))
    prefix_call, suffix_call, *decoding = shared
    assert prefix_call[1] is None and suffix_call[1] is not None  # a suffix attends to the cached prefix
    assert all(mask is None for _, mask in decoding)


def test_order_by_image_is_stable(shapes_folder):
    todo = records(shapes_folder)[:10]  # q0..q9 on images q % 8
    ordered = [r.question_id for r in schedule.order_by_image(todo)]
    assert ordered == [f"q{i:05d}" for i in (0, 8, 1, 9, 2, 3, 4, 5, 6, 7)]
    assert [r.question_id for r in schedule.order_by_image(todo[::-1])] == \
        [f"q{i:05d}" for i in (9, 1, 8, 0, 7, 6, 5, 4, 3, 2)]


def test_prefetcher_runs_ahead_within_its_bound():
    loaded = []
    prefetcher = schedule.Prefetcher(list(range(10)), lambda key: loaded.append(key) or torch.full((1,), key),
                                     workers=2, ahead=3)
    try:
        assert prefetcher.get(0).item() == 0
        assert prefetcher.held == 4  # image 0 and 3 ahead
        prefetcher.release(0)
        assert prefetcher.get(1).item() == 1 and prefetcher.held == 4
        assert prefetcher.get(5).item() == 5 and prefetcher.held == 8  # 1 is still held (not released)
        for key in range(1, 6):
            prefetcher.release(key)
        assert prefetcher.held == 3
        assert [prefetcher.get(key).item() for key in range(6, 10)] == [6, 7, 8, 9]
    finally:
        prefetcher.close()
    assert sorted(loaded) == list(range(10))  # each image decoded once


@pytest.mark.parametrize("name", schedule.SCHEDULES)
def test_cuda_oom_halves_the_batch(shapes_folder, tmp_path, monkeypatch, caplog, name):
    clean = tmp_path / "clean"
    runner.run(make_cfg(base(shapes_folder, clean, "budget=16", f"schedule={name}", "batch_size=8", "limit=8")))
    engine = "generate_by_image" if name == "by_image" else "generate"
    real, sizes = getattr(schedule, engine), []

    def out_of_memory_above_four(lm, method, questions, *args, **kwargs):
        sizes.append(len(questions))
        if len(questions) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(lm, method, questions, *args, **kwargs)

    monkeypatch.setattr(schedule, engine, out_of_memory_above_four)
    out = tmp_path / "oom"
    with caplog.at_level(logging.WARNING, logger="harness.schedule"):
        metrics = runner.run(make_cfg(base(shapes_folder, out, "budget=16", f"schedule={name}", "batch_size=8",
                                           "limit=8")))
    assert sizes == [8, 4, 4]
    assert [r.getMessage() for r in caplog.records] == [
        "CUDA out of memory in a batch of 8 questions: continuing with batch size 4"]
    assert rows_by_id(out) == rows_by_id(clean) and metrics["n"] == 8


def test_cuda_oom_at_batch_size_one_is_raised(shapes_folder, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(schedule, "generate_by_image", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        runner.run(make_cfg(base(shapes_folder, tmp_path, "budget=16", "batch_size=2")))
    assert all(path.read_text() == "" for path in tmp_path.glob("*/*/*/predictions.jsonl"))  # nothing answered


def test_bad_schedule_is_one_line(shapes_folder, tmp_path):
    from svdprune.errors import UserError

    with pytest.raises(UserError, match=r"^schedule='fast'; allowed: by_image, per_question$"):
        runner.run(make_cfg(base(shapes_folder, tmp_path, "schedule=fast")))
    assert not any(tmp_path.iterdir())


def test_fastv_shares_the_vision_pass_not_the_prefill(tiny, random_images):
    """Decoder-side: the image embeddings come once per image, the prompt is prefilled per question (its cut
    follows the question), and the kept tokens equal the per-question path's."""
    method = FastV(16, agg_layer=2)
    questions = [QUESTIONS[0], QUESTIONS[3], QUESTIONS[1]]
    keys, pixels = [0, 0, 1], {0: preprocess_image(random_images[0]), 1: preprocess_image(random_images[1])}
    seen = count_vision_images(tiny, lambda: generate_by_image(tiny, method, questions, keys, pixels,
                                                               instruction=INSTRUCTION, max_new_tokens=4))
    assert seen["images"] == 2 and seen["layer0"][0][0] == 3  # one prefill of the 3 whole prompts
    ours = generate_by_image(tiny, method, questions, keys, pixels, instruction=INSTRUCTION, max_new_tokens=4)
    reference = generate(tiny, method, questions, [random_images[k] for k in keys], instruction=INSTRUCTION,
                         max_new_tokens=4)
    assert ours.token_ids == reference.token_ids
    assert ours.image_tokens_per_layer == reference.image_tokens_per_layer == [[576, 576, 16, 16]] * 3


@pytest.mark.parametrize("error, is_oom", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("cusolver error: CUSOLVER_STATUS_ALLOC_FAILED, when calling `cusolverDnCreate(handle)`"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
    (ValueError("CUDA out of memory"), False),
])
def test_every_form_of_cuda_oom_is_recognised(error, is_oom):
    assert schedule._is_oom(error) is is_oom


def test_a_cublas_oom_halves_and_frees_the_failed_batch_first(shapes_folder, tmp_path, monkeypatch):
    """cuBLAS's allocation failure (a RuntimeError) is handled like torch's OutOfMemoryError, and when the
    batch is halved nothing references the failed batch's tensors any more (its traceback is dropped)."""
    import gc
    import weakref

    real, sizes, held = schedule.generate_by_image, [], []

    def cublas_oom_above_two(lm, method, questions, *args, **kwargs):
        sizes.append(len(questions))
        if len(questions) > 2:
            activations = torch.ones(1000)  # what the failed forward pass had allocated
            held.append(weakref.ref(activations))
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return real(lm, method, questions, *args, **kwargs)

    real_halve, alive = schedule._halve, []

    def halve(size, error, device):
        gc.collect()
        alive.append(held[-1]() is not None)
        return real_halve(size, error, device)

    monkeypatch.setattr(schedule, "generate_by_image", cublas_oom_above_two)
    monkeypatch.setattr(schedule, "_halve", halve)
    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "budget=16", "batch_size=4", "limit=4")))
    assert sizes == [4, 2, 2] and metrics["n"] == 4 and alive == [False]


def test_memory_a_carried_prefix_holds_its_own_image_only(tiny, random_images):
    """Issue 22: a prefix carried on to the next batch is its own tensor, not a view that keeps the KV of every
    image of its batch alive; the vision tower's hidden states are dropped after the encoder-side cut."""
    from svdprune.families.llava15 import encode_prefixes

    pixels = torch.stack([preprocess_image(img, tiny.image_size, tiny.image_mean, tiny.image_std)
                          for img in random_images[:3]])
    prefixes = encode_prefixes(tiny, SvdPrune(budget=16), pixels, instruction=None, seed=0)
    for prefix in prefixes:
        for keys, values in prefix.kv:
            for t in (keys, values):
                assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    context = PruneContext(["q"] * 3, model=tiny.model, lm=tiny)
    encode_images(tiny, SvdPrune(budget=16), pixels, context)
    assert context.vision_hidden_states is None and context.encoder_aux == {}


def test_memory_the_prefix_kv_is_handed_to_the_cache(tiny, random_images):
    """prefill_suffixes consumes the batch's prefix KV: afterwards the cache holds the only reference (the list
    is emptied), so the cache's growth replaces the prefix tensors instead of doubling them."""
    import weakref

    prompt = vicuna_prompt(QUESTIONS[0], None)
    prefix_ids, suffix = split_prompt(tiny, prompt, 16)
    with torch.inference_mode():  # as the engine runs
        embeds = torch.randn(1, 16, tiny.model.config.text_config.hidden_size)
        prefix_kv = [(k, v) for k, v in prefill_prefixes(tiny, prefix_ids, embeds)]
        first = weakref.ref(prefix_kv[0][0])
        cache = new_cache(tiny)
        prefill_suffixes(tiny, prefix_kv, len(prefix_ids), [suffix], cache)
    assert prefix_kv == [] and first() is None  # the cache holds its own copy; the prefix's tensors are gone

"""svdprune.prune(): every method on a transformers LLaVA the test loads itself, driven by plain HF ``generate``
and ``AutoProcessor``, gives run.py's answers and per-question records; remove() restores the model exactly.

The models are the committed trained checkpoints (mini on easy-VQA; scenes for TRIM, whose CLIP only scenes has),
loaded with ``LlavaForConditionalGeneration.from_pretrained`` as a user would.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import svdprune
from eval.datasets import load_dataset, load_image
from harness.mini_protocol import ROOT, mini_config, mini_overrides, run_and_read
from harness.scenes_protocol import scenes_config, scenes_overrides
from svdprune.errors import UserError
from svdprune.prompts import preprocess_image, tokenizer_image_token, vicuna_prompt

MINI, SCENES = ROOT / "checkpoints" / "mini", ROOT / "checkpoints" / "scenes"
N_QUESTIONS = 6
# two budgets per method (ToMe reaches only 192 on mini's 3-layer tower; pooling needs h x w cells). Not
# VisPruner: on easy-VQA's uniform backgrounds its duplicate removal ranks exactly equal tokens, so its kept set
# follows last-bit differences of the vision tower between batch sizes (the runner's 6 images vs one per call)
CASES = [("vanilla", 576), *[(m, b) for m in ("svd", "random", "divprune", "fastervlm", "visionzip", "pooling",
                                              "fastv", "pyramiddrop", "sparsevlm", "dart",
                                              "tokencarve", "flowcut")
                                    for b in (64, 16)],
         ("tome", 192)]


def _params(overrides: list[str]) -> dict:
    """``method.params.x=v`` overrides (the protocols' scaled schedules) -> prune() keyword arguments."""
    import yaml

    return {item.split("=", 1)[0].removeprefix("method.params."): yaml.safe_load(item.split("=", 1)[1])
            for item in overrides}


@pytest.fixture(scope="module")
def mini():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(MINI).eval(), AutoProcessor.from_pretrained(MINI)


def _questions(cfg):
    dataset = load_dataset(cfg.dataset)
    records = dataset.records[:N_QUESTIONS]
    return records, [vicuna_prompt(r.question, dataset.instruction) for r in records], \
        [load_image(r) for r in records], dataset.instruction


def _generate(model, processor, prompts, images, max_new_tokens, **kwargs) -> list[str]:
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return [text.strip() for text in processor.batch_decode(out[:, inputs.input_ids.shape[1]:],
                                                            skip_special_tokens=True)]


def _runner_rows(cfg, tmp_path) -> list[dict]:
    _, rows = run_and_read(cfg)
    by_id = {row["question_id"]: row for row in rows}
    return [by_id[r.question_id] for r in load_dataset(cfg.dataset).records[:N_QUESTIONS]]


def _check_against_runner(model, processor, method, budget, params, rows, prompts, images, max_new_tokens,
                          questions=None):
    for batch in (len(prompts), 1):  # batched (left padding) and one prompt per call
        with svdprune.pruned(model, method, budget, **params) as handle:
            texts = []
            for start in range(0, len(prompts), batch):
                if questions is not None:
                    handle.questions = questions[start:start + batch]
                texts += _generate(model, processor, prompts[start:start + batch], images[start:start + batch],
                                   max_new_tokens)
            records = handle.records
        assert texts == [row["prediction"] for row in rows], f"batch {batch}"
        assert len(records) == len(rows)
        for record, row in zip(records, rows):
            for key, value in record.items():
                assert row[key] == value, f"batch {batch}: {key}"


@pytest.mark.parametrize("method, budget", CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_prune_and_generate_give_the_runners_answers(mini, method, budget, tmp_path):
    model, processor = mini
    cfg = mini_config(method, budget, N_QUESTIONS, tmp_path, batch_size=N_QUESTIONS)
    rows = _runner_rows(cfg, tmp_path)
    _, prompts, images, _ = _questions(cfg)
    _check_against_runner(model, processor, method, budget, _params(mini_overrides(method, budget)), rows, prompts,
                          images, max_new_tokens=4)


@pytest.mark.parametrize("budget", (64, 16))
def test_trim_through_prune_on_scenes(budget, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(SCENES).eval()
    processor = AutoProcessor.from_pretrained(SCENES)
    cfg = scenes_config("trim", budget, N_QUESTIONS, tmp_path, batch_size=N_QUESTIONS)
    rows = _runner_rows(cfg, tmp_path)
    records, prompts, images, instruction = _questions(cfg)
    params = {"clip_path": str(SCENES / "clip"), **_params(scenes_overrides("trim", budget))}
    _check_against_runner(model, processor, "trim", budget, params, rows, prompts, images, max_new_tokens=3,
                          questions=[f"{r.question}\n{instruction}" for r in records])


def _inputs(processor, n=3, seed=0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(336, 336), (200, 500), (640, 120)][:n]]
    prompts = [vicuna_prompt(q) for q in ["what color is the shape?", "is there a circle?", "what shape is it?"][:n]]
    return processor(images=images, text=prompts, padding=True, return_tensors="pt")


def test_remove_restores_the_unpruned_model_bit_for_bit(mini):
    model, processor = mini
    inputs = _inputs(processor)
    with torch.no_grad():
        before = model(**inputs).logits
        generated_before = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        handle = svdprune.prune(model, "svd", 16)
        assert "forward" in model.__dict__
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
        handle.remove()
        handle.remove()  # harmless
        assert "forward" not in model.__dict__
        assert torch.equal(model(**inputs).logits, before)
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), generated_before)


def test_context_manager_removes_on_error_and_nested_prune_is_refused(mini):
    model, _ = mini
    with pytest.raises(RuntimeError, match="inside"):
        with svdprune.pruned(model, "fastv", 16, agg_layer=1):
            with pytest.raises(UserError, match="already pruned"):
                svdprune.prune(model, "svd", 32)
            raise RuntimeError("inside")
    assert "forward" not in model.__dict__
    svdprune.prune(model, "svd", 32).remove()  # allowed again once removed


def test_full_forward_logits_are_aligned_with_the_users_ids(mini):
    """vanilla through the engine: text positions carry the unpruned model's logits, image positions zeros;
    labels give HF's loss over them."""
    model, processor = mini
    inputs = _inputs(processor)
    text = inputs.attention_mask.bool() & (inputs.input_ids != model.config.image_token_id)
    with torch.no_grad():
        reference = model(**inputs).logits
        labels = torch.where(text, inputs.input_ids, -100)
        with svdprune.pruned(model, "vanilla", 576):
            out = model(**inputs, labels=labels)
    assert out.logits.shape == reference.shape
    torch.testing.assert_close(out.logits[text], reference[text], atol=2e-4, rtol=1e-3)  # summation order
    assert not out.logits[~text].any()
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                 ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_pruned_full_forward_matches_its_generate(mini):
    """With a real cut, the full forward's logits at each row's last token are what generate's first step sees."""
    model, processor = mini
    inputs = _inputs(processor)
    with torch.no_grad(), svdprune.pruned(model, "svd", 16):
        full = model(**inputs).logits
        last = model(**inputs, logits_to_keep=1).logits
    torch.testing.assert_close(full[:, -1], last[:, 0], atol=1e-5, rtol=1e-5)


def test_sampling_with_top_k_1_equals_greedy(mini):
    model, processor = mini
    inputs = _inputs(processor)
    with svdprune.pruned(model, "sparsevlm", 16, layers=[0], keep=[16]):
        greedy = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        sampled = model.generate(**inputs, max_new_tokens=4, do_sample=True, top_k=1, temperature=0.7)
    assert torch.equal(greedy, sampled)


def test_right_padding_gives_the_same_answers(mini):
    """The engine re-pads each row itself, so the processor's padding side does not change an answer."""
    model, processor = mini
    left = _inputs(processor)
    processor.tokenizer.padding_side = "right"
    try:
        right = _inputs(processor)
    finally:
        processor.tokenizer.padding_side = "left"
    with svdprune.pruned(model, "fastv", 16, agg_layer=1):
        a = model.generate(**left, max_new_tokens=4, do_sample=False)[:, left.input_ids.shape[1]:]
        b = model.generate(**right, max_new_tokens=4, do_sample=False)[:, right.input_ids.shape[1]:]
    assert torch.equal(a, b)


def test_records_and_defaults(mini):
    model, processor = mini
    with svdprune.pruned(model, "svd", 32) as handle:
        assert handle.params["tau"] == 0.9  # configs/method/svd.yaml
        model.generate(**_inputs(processor, n=2), max_new_tokens=2, do_sample=False)
    assert [r["kept_tokens"] for r in handle.records] == [32, 32]
    assert all(len(r["kept_indices"]) == 32 and r["rank"] >= 1 for r in handle.records)


@pytest.mark.parametrize("call, message", [
    (lambda m: svdprune.prune(m, "nope", 16), "unknown method 'nope'"),
    (lambda m: svdprune.prune(m, "svd", 0), "budget=0 is outside 1..576"),
    (lambda m: svdprune.prune(m, "svd", 700), "budget=700 is outside 1..576"),
    (lambda m: svdprune.prune(m, "svd", 16, tau=1.5), "tau=1.5"),
    (lambda m: svdprune.prune(m, "svd", 16, alpha=1), "no parameter 'alpha'"),
    (lambda m: svdprune.prune(m.model.language_model, "svd", 16), "needs a transformers LlavaForConditionalGeneration"),
])
def test_bad_arguments_are_one_line_errors(mini, call, message):
    model, _ = mini
    with pytest.raises(UserError, match=message):
        call(model)
    assert "forward" not in model.__dict__


def test_bad_inputs_are_one_line_errors(mini):
    model, processor = mini
    inputs = _inputs(processor, n=2)
    two_images = inputs.input_ids.clone()
    two_images[0, -2] = model.config.image_token_id
    with svdprune.pruned(model, "svd", 16):
        with pytest.raises(UserError, match="more than one image"):
            model(input_ids=two_images, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values)
        with pytest.raises(UserError, match="2 images in pixel_values"):
            model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values[:1])
        with pytest.raises(UserError, match="inputs_embeds"):
            model(inputs_embeds=torch.zeros(1, 3, 64), pixel_values=inputs.pixel_values[:1])
        out = model(**inputs)  # a pruned cache continues one token at a time
        with pytest.raises(UserError, match="one new token"):
            model(input_ids=inputs.input_ids[:, -2:], cache=out.cache)
        text_only = processor.tokenizer(["what color"], return_tensors="pt")
        assert model(**text_only).logits.shape[1] == text_only.input_ids.shape[1]  # text only: unpruned


@pytest.mark.parametrize("folder", [MINI, SCENES], ids=["mini", "scenes"])
def test_checkpoints_load_with_autoprocessor_as_run_py_feeds_them(folder):
    """AutoProcessor gives run.py's pixels (official LLaVA-1.5 pad-to-square), its token ids and its prompt."""
    from transformers import AutoProcessor, LlavaConfig

    processor = AutoProcessor.from_pretrained(folder)
    config = LlavaConfig.from_pretrained(folder)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(300, 500), (91, 37)]]
    prompts = [vicuna_prompt("what color is the shape?"), vicuna_prompt("is there a red circle?", None)]
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        assert torch.equal(inputs.pixel_values[i], preprocess_image(image))
        ids = inputs.input_ids[i][inputs.attention_mask[i].bool()].tolist()
        assert ids == tokenizer_image_token(prompt, processor.tokenizer, config.image_token_id, 576)
    assert inputs.attention_mask[1, 0] == 0 or inputs.attention_mask[0, 0] == 0  # left padding
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the shape?\n"
                                             "Answer the question using a single word or phrase."}]}]
    assert processor.apply_chat_template(message, add_generation_prompt=True) == prompts[0]


@pytest.mark.parametrize("method, budget", [("svd", 16), ("fastv", 16)])
def test_half_precision_model_gives_the_runners_half_precision_answers(method, budget, tmp_path):
    """A model the user loaded in bfloat16 (from_pretrained(dtype=...)) and run.py's model.dtype=bfloat16 agree."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(MINI, dtype=torch.bfloat16).eval()
    processor = AutoProcessor.from_pretrained(MINI)
    cfg = mini_config(method, budget, N_QUESTIONS, tmp_path, batch_size=N_QUESTIONS)
    cfg.model.dtype = "bfloat16"
    rows = _runner_rows(cfg, tmp_path)
    _, prompts, images, _ = _questions(cfg)
    _check_against_runner(model, processor, method, budget, _params(mini_overrides(method, budget)), rows, prompts,
                          images, max_new_tokens=4)


def test_a_llava_hf_preprocessor_config_with_do_pad_gives_run_pys_pixels(tmp_path):
    """llava-hf/llava-1.5-7b-hf's own preprocessor_config.json (CLIPImageProcessor: resize + centre crop) read as
    LlavaImageProcessorPil(do_pad=True): official LLaVA-1.5's pad-to-square pixels, the README's recipe."""
    import json

    from transformers import LlavaImageProcessorPil

    from svdprune.checkpoints.llava15 import PREPROCESSOR_CONFIG

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    image_processor = LlavaImageProcessorPil.from_pretrained(tmp_path, do_pad=True)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    assert torch.equal(image_processor(image, return_tensors="pt").pixel_values[0], preprocess_image(image))


def test_generate_without_a_cache_gives_the_same_answers(mini):
    """use_cache=False: every step is a fresh pruned prefill of the prompt plus what was generated; for an
    encoder-side method that is the same computation as decoding from the pruned cache."""
    model, processor = mini
    inputs = _inputs(processor)
    with svdprune.pruned(model, "svd", 16):
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)

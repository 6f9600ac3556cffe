"""LLaVA-NeXT through the engine (svdprune/families/llava_next.py), on a random tiny LlavaNextForConditionalGeneration:
AnyRes inputs as llava-hf's processor makes them, vanilla equal to HF generate on a left-padded batch of image sizes,
every supported method through the engine, run.py and svdprune.prune()."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from svdprune.errors import UserError
from svdprune.families import generate_by_image, llava_next, supported_methods
from svdprune.pruning import METHODS, Vanilla, build_method, default_params

SIZES = [(100, 250), (300, 120), (200, 200), (90, 90)]  # 166, 176, 336 and 136 image tokens (tiny: 112 px views)
QUESTIONS = ["What color is the shape?", "Is there a circle?", "How many?", "What is on the left?"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def next_lm():
    return llava_next.build_tiny(seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


@pytest.fixture(scope="module")
def inputs(next_lm, images):
    return {i: llava_next.preprocess(next_lm, image) for i, image in enumerate(images)}


def hf_processor(lm):
    from transformers import LlavaNextProcessor

    return LlavaNextProcessor(image_processor=lm.image_processor, tokenizer=lm.tokenizer, patch_size=14,
                              vision_feature_select_strategy="default", image_token="<image>",
                              num_additional_image_tokens=1)


def hf_inputs(lm, questions, image_list):
    """What llava-hf's processor hands HF generate: the prompts with <image> expanded, left-padded; pixels, sizes."""
    processor = hf_processor(lm)
    processor.tokenizer.padding_side = "left"
    prompts = [llava_next.prompt(q) for q in questions]
    return dict(processor(images=image_list, text=prompts, padding=True, return_tensors="pt"))


def test_inputs_equal_llava_hf_processor(next_lm, images, inputs):
    """Pixels of every view and the image token count (base + unpadded tiles + newlines) as llava-hf's processor, where
    it tiles as official LLaVA-NeXT (images 0-2); the 90 x 90 image (at most one tile on each side) is tiled 2 x 1 as
    official, where llava-hf tiles it 1 x 2: the same token count, other pixels."""
    assert [inputs[i].num_tokens for i in range(4)] == [166, 176, 336, 136]
    assert inputs[0].layout == (64, 6, 16) and inputs[1].layout == (64, 16, 6)
    assert [inputs[i].tiles for i in range(4)] == [(1, 2), (2, 1), (2, 2), (2, 1)]
    hf = hf_inputs(next_lm, QUESTIONS, images)
    counts = (hf["input_ids"] == next_lm.image_token_id).sum(-1).tolist()
    assert counts == [inputs[i].num_tokens for i in range(4)]
    for i in range(4):
        views = inputs[i].pixels.shape[0]
        assert torch.equal(hf["pixel_values"][i, :views].float(), inputs[i].pixels) == (i != 3)
        assert hf["image_sizes"][i].tolist() == inputs[i].image_size.tolist()
    assert llava_next.hf_tiles(next_lm.model.config, inputs[3].image_size) == (1, 2)
    ours = llava_next.model_inputs(next_lm, [llava_next.prompt(q) for q in QUESTIONS], images)
    assert torch.equal(ours["input_ids"], hf["input_ids"]) and torch.equal(ours["attention_mask"], hf["attention_mask"])
    assert ours["image_tiles"].tolist() == [[1, 2], [2, 1], [2, 2], [2, 1]]


def test_pixels_equal_official_process_anyres_image(next_lm):
    """Bit for bit the pixels official LLaVA-NeXT's process_anyres_image gives (recorded from haotian-liu/LLaVA by
    scripts/official_fixtures.py llava_next_anyres), also where llava-hf's tiling differs (the first two cases)."""
    from baselines.official.inputs import ANYRES, anyres_image, input_digest

    fixture = json.loads((ROOT / "tests" / "fixtures" / "official" / "llava_next_anyres.json").read_text())
    config = next_lm.model.config
    assert fixture["tile"] == config.vision_config.image_size == ANYRES["tile"]
    assert fixture["pinpoints"] == [list(p) for p in config.image_grid_pinpoints] == ANYRES["pinpoints"]
    differs = 0
    for case in fixture["cases"]:
        image = llava_next.preprocess(next_lm, anyres_image(case["size"], case["seed"]))
        width, height = case["best_resolution"]
        assert image.tiles == (height // fixture["tile"], width // fixture["tile"])
        assert image.pixels.shape[0] == case["views"]
        assert input_digest(image.pixels) == case["sha256"], case["size"]
        differs += llava_next.hf_tiles(config, image.image_size) != image.tiles
    assert differs == 2  # 90 x 90 and 100 x 60: llava-hf tiles them 1 x 2


def test_packing_equals_hf_get_image_features(next_lm, inputs):
    """Vision tower, projector and packing (base view, unpadded tiles, newline per row) bit for bit as transformers'
    get_image_features, on the images it tiles as we do."""
    ours = llava_next.vision_tokens(next_lm, [inputs[i] for i in range(3)])
    pixels = torch.cat([inputs[i].pixels for i in range(3)])
    sizes = torch.stack([inputs[i].image_size for i in range(3)])
    with torch.inference_mode():
        theirs = next_lm.model.model.get_image_features(pixel_values=pixels, image_sizes=sizes,
                                                        vision_feature_layer=-2,
                                                        vision_feature_select_strategy="default").pooler_output
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_newlines_are_where_hf_packs_the_image_newline(next_lm, inputs):
    tokens = llava_next.vision_tokens(next_lm, [inputs[0]])[0]
    newline = next_lm.model.model.image_newline
    mask = inputs[0].newline_mask()
    assert int(mask.sum()) == 6 and torch.equal(tokens[mask], newline.expand(6, -1))
    assert not (tokens[~mask] == newline).all(-1).any()


def test_vanilla_equals_hf_generate(next_lm, images, inputs):
    """Answers token for token on one left-padded batch of three image sizes, and one image at a time (the images
    llava-hf tiles as official LLaVA-NeXT; the fourth is tiled as official, which llava-hf does not)."""
    keys = [0, 1, 2]
    ours = generate_by_image(next_lm, Vanilla(), QUESTIONS[:3], keys, inputs, instruction=None, max_new_tokens=6)
    for rows in ([[k] for k in keys] + [keys]):
        hf = hf_inputs(next_lm, [QUESTIONS[k] for k in rows], [images[k] for k in rows])
        out = next_lm.model.generate(**hf, max_new_tokens=6, do_sample=False, pad_token_id=next_lm.pad_token_id)
        for j, k in enumerate(rows):
            answer = ours.token_ids[k]
            assert out[j, hf["input_ids"].shape[1]:].tolist()[:len(answer)] == answer
    assert [counts[0] for counts in ours.image_tokens_per_layer] == [166, 176, 336]


@pytest.mark.parametrize("name", supported_methods("llava_next")[1:])
def test_supported_methods_keep_their_budget(next_lm, inputs, name):
    """Each method that runs on the family keeps what its budget says, batched as one question at a time."""
    if name == "pooling":  # an AnyRes image is not one h x w grid: pooling's own check refuses it
        with pytest.raises(UserError, match="pooling: budget=32 does not fit"):
            build_method(name, 32, default_params(name)).check(next_lm)
        return
    method = build_method(name, 32, default_params(name))
    keys = [0, 1, 2, 0]
    batched = generate_by_image(next_lm, method, QUESTIONS, keys, inputs, instruction=None, max_new_tokens=3)
    alone = [generate_by_image(next_lm, method, [q], [k], inputs, instruction=None, max_new_tokens=3).token_ids[0]
             for q, k in zip(QUESTIONS, keys)]
    assert batched.token_ids == alone
    for counts, key in zip(batched.image_tokens_per_layer, keys):
        if "view_cls_attention" in method.needs:  # 32 split evenly over the image's views (base + tiles)
            views = inputs[key].pixels.shape[0]
            assert counts == [views * (32 // views)] * len(counts)
        elif method.kind == "encoder":
            assert counts == [32] * len(counts)
        else:
            assert counts[0] == inputs[key].num_tokens and counts[-1] <= inputs[key].num_tokens
            assert min(counts) < inputs[key].num_tokens


@pytest.mark.parametrize("name", ["vanilla", "svd", "divprune", "fastervlm"])
def test_shared_prefix_equals_the_whole_prompt(next_lm, inputs, name):
    """Vanilla and encoder-side methods prefill each image's prefix once (carried to the next batch) and only the
    question suffixes per question: the same answers, prompt lengths and records as the whole prompt, and a second
    batch on carried prefixes runs no vision tower."""
    method = build_method(name, 24, default_params(name))
    keys, questions = [0, 1, 2, 3, 0, 2], QUESTIONS + ["Is it red?", "Is it blue?"]
    whole = llava_next._generate_whole(next_lm, method, questions, keys, inputs, instruction=None, max_new_tokens=4,
                                       seed=0)
    prefixes: dict = {}
    shared = generate_by_image(next_lm, method, questions, keys, inputs, instruction=None, max_new_tokens=4,
                               prefixes=prefixes)
    assert shared.token_ids == whole.token_ids and shared.prompt_lengths == whole.prompt_lengths
    assert shared.image_tokens_per_layer == whole.image_tokens_per_layer and shared.stats == whole.stats
    assert set(prefixes) == {0, 1, 2, 3}
    calls = []
    hook = next_lm.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        again = generate_by_image(next_lm, method, questions[:2], keys[:2], {}, instruction=None, max_new_tokens=4,
                                  prefixes=prefixes)
    finally:
        hook.remove()
    assert not calls and again.token_ids == whole.token_ids[:2]


@pytest.mark.parametrize("name", ["svd", "divprune", "random"])
def test_encoder_cut_chooses_among_the_whole_span(next_lm, inputs, name):
    """An encoder-side cut chooses among the image's whole packed span, newline tokens included, as the authors'
    LLaVA-NeXT code of DivPrune does (kept_indices index the span; the kept tokens are those, in packed order), and
    budget_ratio is a share of that span."""
    image = inputs[0]
    tokens = llava_next.vision_tokens(next_lm, [image])[0]
    assert tokens.shape[0] == image.num_tokens == 166 and int(image.newline_mask().sum()) == image.layout[1]
    kept, stats = llava_next.select(next_lm, build_method(name, 16, default_params(name)), tokens, image, seed=0,
                                    instruction=None)
    assert kept.shape[0] == 16 and stats["kept_indices"] == sorted(stats["kept_indices"])
    assert torch.equal(kept, tokens[stats["kept_indices"]])
    method = build_method(name, 16, default_params(name))
    method.budget_ratio = 0.25  # what the runner sets for budget_ratio=0.25
    kept, _ = llava_next.select(next_lm, method, tokens, image, seed=0, instruction=None)
    assert kept.shape[0] == int(0.25 * 166) == 41


def test_divprune_equals_the_authors_llava_next_code_on_recorded_inputs():
    """DivPrune's authors' LLaVA-1.6 path (vbdi/divprune 799e2d9: their ``DivPrune`` on ``image_features[0]``, the
    whole packed span, newline tokens included), recorded on seeded spans of a 336 x 336 (1,176 tokens) and a
    672 x 672 image (2,928) by ``scripts/official_fixtures.py divprune_llava_next``: ours picks the same tokens in the
    same order. Each keeps exactly one newline token (they are one repeated vector)."""
    from baselines.divprune import DivPrune
    from baselines.official.inputs import divprune_next_inputs, input_digest
    from svdprune.pruning import PruneContext

    recorded = json.loads((ROOT / "tests" / "fixtures" / "official" / "divprune_llava_next.json").read_text())
    assert recorded["official"]["commit"] == "799e2d950aa01ba7860907f5a6d86061f885dca6"
    spans = {}
    for case in recorded["cases"]:
        key = (case["seed"], tuple(case["layout"]))
        if key not in spans:
            spans[key] = divprune_next_inputs(case["seed"], *case["layout"])
            assert input_digest(*spans[key]) == recorded["input_sha256"][f"{key[0]}/{'x'.join(map(str, key[1]))}"]
        tokens, newlines = spans[key]
        context = PruneContext(questions=None)
        context.features_are_llm_inputs = True
        kept = DivPrune(case["budget"]).reduce(tokens[None], context)[0]
        assert context.stats["kept_indices"][0] == case["kept"], (key, case["budget"])
        assert torch.equal(kept, tokens[case["kept"]]) and int(newlines[case["kept"]].sum()) == 1


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(supported_methods("llava_next"))))
def test_methods_it_lacks_a_capability_for_are_refused(name):
    from svdprune.families import check_family_method

    with pytest.raises(UserError, match=f"method={name} does not run on LLaVA-NeXT: .+; methods that do: vanilla"):
        check_family_method("llava_next", name)


def make_cfg(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_run_py_on_the_tiny_llava_next(shapes_folder, tmp_path):
    import harness.runner as runner

    base = ["model=llava_next_tiny", "model.text_layers=4", "dataset=local", f"dataset.path={shapes_folder}",
            f"output_dir={tmp_path}", "max_new_tokens=3", "progress=false", "limit=6", "batch_size=3"]
    for method, budget in (("svd", 32), ("fastv", 32), ("vanilla", 336)):
        extra = ["method.params.agg_layer=1"] if method == "fastv" else []
        metrics = runner.run(make_cfg([*base, f"method={method}", f"budget={budget}", *extra]))
        assert metrics["n"] == 6 and metrics["model"] == "llava-next-tiny"
        [path] = list(tmp_path.glob(f"local/{method}/*/predictions.jsonl"))
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            assert row["prompt"].startswith("A chat between") and row["image_tokens_unpruned"] > 64
            assert row["image_tokens_per_layer"][-1] == (row["image_tokens_unpruned"] if method == "vanilla" else 32)
    with pytest.raises(UserError, match="method=visionzip does not run on LLaVA-NeXT"):
        runner.run(make_cfg([*base, "method=visionzip", "budget=8"]))
    with pytest.raises(UserError, match=r"budget=400 is outside 1\.\.336"):
        runner.run(make_cfg([*base, "method=svd", "budget=400"]))


@pytest.mark.parametrize("name", [n for n in supported_methods("llava_next") if n != "pooling"])
def test_prune_api_equals_the_engine(next_lm, images, inputs, name):
    """``svdprune.prune`` on a LlavaNextForConditionalGeneration + HF ``generate`` gives the engine's answers and
    per-question records, four image sizes in one left-padded call: on llava-hf's processor inputs (the three images it
    tiles as official) and on :func:`llava_next.model_inputs` (official tiling stated by ``image_tiles``, all four)."""
    import svdprune

    method = build_method(name, 32, default_params(name))
    want = generate_by_image(next_lm, method, QUESTIONS, [0, 1, 2, 3], inputs, instruction=None, max_new_tokens=4)
    calls = [(hf_inputs(next_lm, QUESTIONS[:3], images[:3]), [0, 1, 2]),
             (llava_next.model_inputs(next_lm, [llava_next.prompt(q) for q in QUESTIONS], images), [0, 1, 2, 3])]
    for hf, keys in calls:
        with svdprune.pruned(next_lm.model, name, 32) as handle:
            out = next_lm.model.generate(**hf, max_new_tokens=4, do_sample=False, pad_token_id=next_lm.pad_token_id)
            records = list(handle.records)
        for j, k in enumerate(keys):
            answer = want.token_ids[k]
            assert out[j, hf["input_ids"].shape[1]:].tolist()[:len(answer)] == answer
        assert [r["image_tokens_per_layer"] for r in records] == [want.image_tokens_per_layer[k] for k in keys]


def test_prune_remove_restores_the_model(next_lm, images):
    import svdprune

    hf = hf_inputs(next_lm, QUESTIONS[:2], images[:2])
    with torch.inference_mode():
        before = next_lm.model(**hf).logits
        handle = svdprune.prune(next_lm.model, "svd", 16)
        next_lm.model(**hf)
        handle.remove()
        assert torch.equal(next_lm.model(**hf).logits, before)


def test_a_saved_folder_loads_as_from_pretrained_in_bfloat16(next_lm, images, tmp_path):
    """load_pretrained on a saved folder gives transformers' own from_pretrained(dtype=bfloat16), bit for bit, and its
    image processor (read back from the folder) the same pixels as the in-memory one."""
    from transformers import LlavaNextForConditionalGeneration

    next_lm.model.save_pretrained(tmp_path)
    next_lm.tokenizer.save_pretrained(tmp_path)
    next_lm.image_processor.save_pretrained(tmp_path)
    ours = llava_next.load_pretrained(str(tmp_path), None, "bfloat16", "cpu", progress=False)
    theirs = LlavaNextForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    mine, want = ours.model.state_dict(), theirs.state_dict()
    assert mine.keys() == want.keys()
    assert all(mine[k].dtype == want[k].dtype and torch.equal(mine[k], want[k]) for k in want)
    assert ours.num_patches == next_lm.num_patches == 336
    for image in images:
        assert torch.equal(llava_next.preprocess(ours, image).pixels, llava_next.preprocess(next_lm, image).pixels)


def test_dart_equals_the_authors_llava_next_code_on_recorded_inputs():
    """DART's authors' LLaVA-NeXT path (ZichenWen1/DART 9fee9fa, ``config.text_length`` set: the whole image span
    of base view, tiles and newline tokens is the candidate set, T = min(budget, span - 4) // 8), recorded on
    seeded inputs with the spans of a 336 x 336 (1,176 tokens) and a 672 x 672 (2,928) image by
    ``scripts/official_fixtures.py dart_llava_next``: our selection over the same span is the same positions."""
    from baselines.dart import Dart, dart_retained
    from baselines.official.inputs import dart_inputs, input_digest

    recorded = json.loads((ROOT / "tests" / "fixtures" / "official" / "dart_llava_next.json").read_text())
    assert recorded["official"]["commit"] == "9fee9fa199d591cf91891ad468ab52c754de9bf5"
    assert {640, 320, 160} <= {case["budget"] for case in recorded["cases"]}
    prefix, suffix = recorded["prefix"], recorded["suffix"]
    inputs = {}
    for case in recorded["cases"]:
        key = (case["seed"], case["image_tokens"])
        if key not in inputs:
            inputs[key] = dart_inputs(case["seed"], prefix, suffix, case["image_tokens"])
            assert input_digest(*inputs[key]) == recorded["input_sha256"][f"{key[0]}/{key[1]}"]
        keys, states = inputs[key]
        length, span = keys.shape[2], case["image_tokens"]
        norms = torch.norm(keys.transpose(1, 2).reshape(1, length, -1), p=1, dim=-1)[0]
        method = Dart(case["budget"])
        kept = dart_retained(norms, states[0], list(range(prefix, prefix + span)), list(range(prefix + span, length)),
                             method.pivot_image, method.pivot_text, method.per_pivot)
        assert kept == case["kept_positions"], (key, case["budget"])
        assert len(kept) == 4 + 8 * (case["budget"] // 8) == method.kept_image_tokens(span)


def test_dart_on_llava_next_takes_newline_tokens_as_candidates(next_lm, inputs):
    """The image span DART cuts in the engine is the authors' one: every image position, newline tokens included
    (their eval takes all tokens between the prefix and the text): 36 of 166 at budget 32, and the recorded kept
    indices are indices into that whole span."""
    from baselines.dart import Dart

    out = generate_by_image(next_lm, Dart(32), [QUESTIONS[0]], [0], inputs, instruction=None, max_new_tokens=2)
    counts = out.image_tokens_per_layer[0]
    assert counts[:2] == [166, 166] and counts[2:] == [36] * (len(counts) - 2)
    kept = out.stats["kept_indices"][0]
    assert len(kept) == 36 and max(kept) < 166


def authors_spatial_merge(token_ids: torch.Tensor, masks: torch.Tensor, tiles: tuple[int, int]) -> list[int]:
    """FasterVLM's / VisPruner's LLaVA-NeXT merge of (V, P) per-view values under (V, P) keep masks, as their
    ``prepare_inputs_labels_for_multimodal`` does it with ``mm_patch_merge_type`` ``spatial``: the base view's kept
    values, then the tiles viewed as (tile rows, tile columns, side, side), permuted (0, 2, 1, 3), flattened, masked."""
    side = math.isqrt(token_ids.shape[1])
    rows, cols = tiles
    tiles_ids = token_ids[1:].view(rows, cols, side, side).permute(0, 2, 1, 3).flatten(0, 3)
    tiles_mask = masks[1:].view(rows, cols, side, side).permute(0, 2, 1, 3).flatten(0, 3)
    return token_ids[0][masks[0]].tolist() + tiles_ids[tiles_mask].tolist()


@pytest.mark.parametrize("name", ["fastervlm", "vispruner"])
def test_per_view_methods_select_per_view_and_merge_as_their_authors(next_lm, inputs, name):
    """FasterVLM and VisPruner on AnyRes, as their authors' LLaVA-1.6 code: the method's own selection on each view
    (here 32 // views per view; each view alone selects the same patches as in the batch of views), and the views'
    kept tokens merged without unpadding or newline tokens in the order of the authors' index-mask merge
    (re-derived above from their code); the merged tokens are the projected kept features in that order."""
    from svdprune.pruning import PruneContext

    for key in (0, 2):  # a 1 x 2 tiling (3 views) and a 2 x 2 one (5 views)
        image = inputs[key]
        views = image.pixels.shape[0]
        method = build_method(name, 32, default_params(name))
        merged, stats = llava_next.select_per_view(next_lm, method, image, seed=0, instruction=None)
        kept = stats["kept_indices"]
        per_view = 32 // views
        assert merged.shape[0] == views * per_view and all(len(k) == per_view for k in kept)
        pixels = image.pixels.to(next_lm.device, next_lm.dtype)
        for v in range(views):  # each view on its own: the same selection
            alone = method.with_budget(per_view)
            context = PruneContext(questions=None, model=next_lm.model, lm=next_lm)
            features = alone.encode(next_lm.vision_tower, pixels[v:v + 1], next_lm.feature_layer, context)
            alone.reduce(features, context)
            assert context.stats["kept_indices"][0] == kept[v]
        vision = next_lm.vision_tower.config
        side = vision.image_size // vision.patch_size
        masks = torch.zeros(views, side * side, dtype=torch.bool)
        for v, indices in enumerate(kept):
            masks[v, indices] = True
        ids = torch.arange(views * side * side).view(views, side * side)
        expected = authors_spatial_merge(ids, masks, image.tiles)
        order = [v * side * side + p for v, p in llava_next.spatial_merge_order(image, kept, side)]
        assert order == expected
        hidden = next_lm.vision_tower(pixels, output_hidden_states=True).hidden_states[next_lm.feature_layer][:, 1:]
        projected = next_lm.projector(hidden).flatten(0, 1)  # (V * P, d)
        assert torch.allclose(merged, projected[expected], atol=1e-6)

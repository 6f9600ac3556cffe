"""Record the official implementations' outputs on seeded inputs: the fixtures under tests/fixtures/official/.
(``scripts/official_fixtures.py`` is its command line.)

The authors' function is read from their repository at the pinned commit (``git show``), compiled and run
unmodified; nothing of it is stored in this project. Only its outputs are written, with the recipe of the
inputs (:mod:`baselines.official.inputs`: seeded ``torch.randn`` of LLaVA-1.5-7B's shapes) and their sha256, so
``tests/test_methods_2025.py`` regenerates the same inputs and compares our selection with the recorded one.

Exact ties: the official code ranks with ``argsort``/``topk``, which leave ties in an unspecified order (ours
breaks them towards the lower index). Where the recorded run meets an exact float32 tie in a ranking the
selection is not defined by the method, so a case with a tie is not recorded: the script replays the
ranking steps on the same inputs (``ties_*`` below) and skips such (seed, budget) pairs, saying so.
"""
from __future__ import annotations

import ast
import subprocess
import textwrap
from pathlib import Path

import torch

from baselines.official.inputs import (ANYRES, FIXTURES, anyres_image, cdpruner_inputs, dart_inputs,
                                       divprune_next_inputs, flowcut_inputs, flowcut_tower, holov_inputs, input_digest,
                                       tokencarve_inputs, vispruner_inputs)

BUDGETS = (192, 128, 64, 32, 16)


def official_function(repo: Path, commit: str, path: str, name: str, owner: str | None, namespace: dict):
    """Compile one function (or method of class ``owner``) of the official file at ``commit``; return it."""
    source = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], capture_output=True, text=True,
                            check=True).stdout
    body = ast.parse(source).body
    if owner:
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == owner).body
    node = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)
    text = textwrap.dedent("\n".join(source.splitlines()[node.lineno - 1:node.end_lineno]))
    scope = dict(namespace)
    exec(compile(text, f"{repo}/{path}@{commit[:12]}:{name}", "exec"), scope)
    return scope[name]


def has_tie(values: torch.Tensor) -> bool:
    """Whether any row of (B, N) values holds two exactly equal entries."""
    ordered = values.sort(dim=-1).values
    return bool((ordered[:, 1:] == ordered[:, :-1]).any())


# ---------------------------------------------------------------------------------------------- VisPruner

VISPRUNER = {"repo": "Theia-4869/VisPruner", "commit": "aefa01adc7c7ce6334e880c88225e90cede760d1",
             "path": "llava/model/llava_arch.py", "function": "LlavaMetaForCausalLM.encode_images"}


def ties_vispruner(features: torch.Tensor, scores: torch.Tensor, budget: int, ratio: float) -> bool:
    """Replay VisPruner's rankings (the CLS ranking and every duplicate-removal step) and report an exact tie."""
    if has_tie(scores):
        return True
    important = int(budget * ratio)
    diverse = budget - important
    rows = torch.arange(features.shape[0])[:, None]
    residual = scores.argsort(dim=-1, descending=True)[:, important:]
    normalized = features / features.norm(dim=-1, keepdim=True)
    while diverse > 0 and residual.shape[1] > diverse:
        drop = min(8, residual.shape[1] - diverse)
        a, b = residual[:, ::2], residual[:, 1::2]
        best = (normalized[rows, a] @ normalized[rows, b].transpose(-1, -2)).max(dim=-1).values
        if has_tie(best):
            return True
        residual = torch.cat([torch.gather(a, 1, best.argsort(dim=-1, descending=True)[:, drop:]), b], dim=-1)
    return False


def record_vispruner(repo: Path) -> dict:
    encode_images = official_function(repo, VISPRUNER["commit"], VISPRUNER["path"], "encode_images",
                                      "LlavaMetaForCausalLM", {"torch": torch})

    class Tower:  # the official CLIPVisionTower returns (features, attentions[-2][:, :, 0, 1:])
        def __init__(self, features, attentions):
            self.outputs = features, attentions

        def __call__(self, images, output_attentions=False):
            return self.outputs

    class Model:  # get_model(): the vision tower and mm_projector (identity: only the index mask is recorded)
        def __init__(self, tower):
            self.tower = tower
            self.mm_projector = lambda x: x

        def get_vision_tower(self):
            return self.tower

    class Llava:  # what encode_images reads from self
        def __init__(self, tower, budget, ratio):
            self.model, self.budget, self.ratio = Model(tower), budget, ratio

        def get_model(self):
            return self.model

        def get_visual_token_num(self):
            return self.budget

        def get_important_ratio(self):
            return self.ratio

    spec = FIXTURES["vispruner"]
    cases, skipped = [], []
    for seed in spec["seeds"]:
        features, attentions = vispruner_inputs(seed)
        for budget in spec["budgets"]:
            ratio = spec["important_ratio"]
            if ties_vispruner(features, attentions.mean(dim=1), budget, ratio):
                skipped.append({"seed": seed, "budget": budget})
                continue
            _, masks = encode_images(Llava(Tower(features, attentions), budget, ratio), None)
            kept = [row.nonzero()[:, 0].tolist() for row in masks]
            cases.append({"seed": seed, "budget": budget, "important_ratio": ratio, "kept": kept})
    return {"method": "vispruner", "official": VISPRUNER, "inputs": "baselines/official/inputs.py:vispruner_inputs",
            "input_sha256": {str(s): input_digest(*vispruner_inputs(s)) for s in spec["seeds"]},
            "skipped_for_ties": skipped, "cases": cases}


# ----------------------------------------------------------------------------------------------- CDPruner

CDPRUNER = {"repo": "Theia-4869/CDPruner", "commit": "9541616c40fcd5625de1cdb8ea6c33c129eb7864",
            "path": "llava/model/llava_arch.py", "function": "LlavaMetaForCausalLM.encode_images"}


def record_cdpruner(repo: Path) -> dict:
    """The official encode_images with its vision tower's outputs given: (features, image embeds, text embeds).
    ``mm_projector`` is the identity, so the recorded "features" are the projected tokens themselves."""
    encode_images = official_function(repo, CDPRUNER["commit"], CDPRUNER["path"], "encode_images",
                                      "LlavaMetaForCausalLM", {"torch": torch})

    class Model:
        def __init__(self, outputs):
            self.outputs = outputs
            self.mm_projector = lambda x: x

        def get_vision_tower(self):
            return lambda images, texts=None: self.outputs

    class Llava:
        def __init__(self, outputs, budget):
            self.model, self.visual_token_num = Model(outputs), budget

        def get_model(self):
            return self.model

    spec = FIXTURES["cdpruner"]
    cases, unstable = [], []
    for seed in spec["seeds"]:
        inputs = cdpruner_inputs(seed, spec["windows"][seed])
        for budget in spec["budgets"]:
            _, masks = encode_images(Llava(inputs, budget), None, texts="unused")
            kept = [row.nonzero()[:, 0].tolist() for row in masks]
            # the same official code in float64: a selection that flips there sits on a float32 near-tie
            _, masks64 = encode_images(Llava(tuple(t.double() for t in inputs), budget), None, texts="unused")
            if [row.nonzero()[:, 0].tolist() for row in masks64] != kept:
                unstable.append({"seed": seed, "budget": budget})
                continue
            cases.append({"seed": seed, "windows": spec["windows"][seed], "budget": budget, "kept": kept})
    return {"method": "cdpruner", "official": CDPRUNER, "inputs": "baselines/official/inputs.py:cdpruner_inputs",
            "input_sha256": {str(s): input_digest(*cdpruner_inputs(s, spec["windows"][s])) for s in spec["seeds"]},
            "skipped_for_ties": unstable, "cases": cases}


# --------------------------------------------------------------------------------------------------- DART

DART = {"repo": "ModelTC/llmc", "commit": "05eedff08c58ce5a3a4e2e879133bc922dff6ff5",
        "path": "llmc/compression/token_reduction/dart.py", "function": "get_retained_image_token"}


def record_dart(repo: Path) -> dict:
    """llmc's ``get_retained_image_token`` (DART's authors' code there) with the released config's pivots and
    ``max_num_trunction`` = the budget; the keys are what its pruning hook passes (``any_states[-2]``)."""
    retained = official_function(repo, DART["commit"], DART["path"], "get_retained_image_token", None,
                                 {"torch": torch, "math": __import__("math")})
    spec = FIXTURES["dart"]
    cases = []
    for seed in spec["seeds"]:
        keys, states = dart_inputs(seed, spec["prefix"], spec["suffix"])
        for budget in spec["budgets"]:
            paras = {"image_token_start_index": spec["prefix"], "image_token_length": 576,
                     "max_num_trunction": budget, "pivot_image_token": 4, "pivot_text_token": 4,
                     "reduction_ratio": 0.778}
            kept = sorted(retained(paras, states, keys).tolist())  # the hook passes any_states[-2] = k
            cases.append({"seed": seed, "budget": budget, "kept_positions": kept})
    return {"method": "dart", "official": DART, "inputs": "baselines/official/inputs.py:dart_inputs",
            "prefix": spec["prefix"], "suffix": spec["suffix"],
            "input_sha256": {str(s): input_digest(*dart_inputs(s, spec["prefix"], spec["suffix"]))
                             for s in spec["seeds"]},
            "skipped_for_ties": [], "cases": cases}


DART_LLAVA_NEXT = {"repo": "ZichenWen1/DART", "commit": "9fee9fa199d591cf91891ad468ab52c754de9bf5",
                   "path": "llava/model/language_model/modeling_llama_self.py",
                   "function": "DART.get_retained_image_token"}


def record_dart_llava_next(repo: Path) -> dict:
    """The authors' LLaVA-NeXT path of ``get_retained_image_token`` (``config.text_length`` set, as their eval
    scripts set it for a llava-v1.6 model: the prompt's ids less the one ``<image>``): the image span is every
    token between the 35-token prefix and the text (base view, tiles and newline tokens), and T =
    min(retain_token_num_for_llava_next, span - pivot_image_token) // 8 with retain = the budget. Commit
    9fee9fa (Zichen Wen, 2025-03-19, "update llava-next" and its fixes), read from a clone of the authors'
    repository or of a fork that holds that commit (xqy1111111/DART: ZichenWen1/DART could not be fetched here)."""
    import math
    from types import SimpleNamespace

    retained = official_function(repo, DART_LLAVA_NEXT["commit"], DART_LLAVA_NEXT["path"], "get_retained_image_token",
                                 "DART", {"torch": torch, "math": math, "LlamaConfig": object})
    spec = FIXTURES["dart_llava_next"]
    cases = []
    for seed in spec["seeds"]:
        for image in spec["images"]:
            keys, states = dart_inputs(seed, spec["prefix"], spec["suffix"], image)
            for budget in spec["budgets"]:
                dart_config = {"K": 2, "image_token_start_index": spec["prefix"], "image_token_length": 576,
                               "max_num_trunction": 128, "reduction_ratio": 0.778, "pivot_image_token": 4,
                               "pivot_text_token": 4, "retain_token_num_for_llava_next": budget}
                config = SimpleNamespace(DART_config=dart_config, text_length=keys.shape[2] - image)
                kept = sorted(retained(None, config, states, keys).tolist())  # any_states = layer K-1's keys
                cases.append({"seed": seed, "image_tokens": image, "budget": budget, "kept_positions": kept})
    return {"method": "dart", "family": "llava_next", "official": DART_LLAVA_NEXT,
            "inputs": "baselines/official/inputs.py:dart_inputs", "prefix": spec["prefix"], "suffix": spec["suffix"],
            "input_sha256": {f"{s}/{n}": input_digest(*dart_inputs(s, spec["prefix"], spec["suffix"], n))
                             for s in spec["seeds"] for n in spec["images"]},
            "skipped_for_ties": [], "cases": cases}


DIVPRUNE_LLAVA_NEXT = {"repo": "vbdi/divprune", "commit": "799e2d950aa01ba7860907f5a6d86061f885dca6",
                       "path": "LLaVA/llava/model/llava_arch.py", "function": "LlavaMetaForCausalLM.DivPrune"}


def record_divprune_llava_next(repo: Path) -> dict:
    """The authors' ``DivPrune`` (with their ``pairwise_cosine_similarity``) as their LLaVA-1.6 path calls it: on the
    whole packed image span of the LLM-input embeddings (``new_input_embeds[0][35:35 + img_feature_len]``, with
    ``img_feature_len = image_features[0].shape[0]``: base view, unpadded tiles and newline tokens), keeping
    ``int(round(ratio * span))`` tokens, here ratio = budget / span. Float32 inputs (their model dtype is fp16)."""
    from types import SimpleNamespace

    similarity = official_function(repo, DIVPRUNE_LLAVA_NEXT["commit"], DIVPRUNE_LLAVA_NEXT["path"],
                                   "pairwise_cosine_similarity", "LlavaMetaForCausalLM", {"torch": torch})
    divprune = official_function(repo, DIVPRUNE_LLAVA_NEXT["commit"], DIVPRUNE_LLAVA_NEXT["path"], "DivPrune",
                                 "LlavaMetaForCausalLM", {"torch": torch})
    model = SimpleNamespace(pairwise_cosine_similarity=lambda matrix: similarity(None, matrix))
    spec = FIXTURES["divprune_llava_next"]
    cases = []
    for seed in spec["seeds"]:
        for base, rows, cols in spec["layouts"]:
            tokens, _ = divprune_next_inputs(seed, base, rows, cols)
            span = tokens.shape[0]
            for budget in spec["budgets"]:
                picks, _ = divprune(model, tokens, span, None, threshold_ratio=budget / span)
                assert len(picks) == budget
                cases.append({"seed": seed, "layout": [base, rows, cols], "budget": budget,
                              "picks": picks.tolist(), "kept": sorted(picks.tolist())})
    return {"method": "divprune", "family": "llava_next", "official": DIVPRUNE_LLAVA_NEXT,
            "inputs": "baselines/official/inputs.py:divprune_next_inputs",
            "input_sha256": {f"{s}/{'x'.join(map(str, layout))}": input_digest(*divprune_next_inputs(s, *layout))
                             for s in spec["seeds"] for layout in spec["layouts"]},
            "skipped_for_ties": [], "cases": cases}


# -------------------------------------------------------------------------------------------------- HoloV

HOLOV = {"repo": "obananas/HoloV", "commit": "1d2e65e961e698ff0e7d5bb4625489177dd9deba",
         "path": "llava/model/utils.py", "function": "HoloV"}


def record_holov(repo: Path) -> dict:
    """The released ``HoloV(image_tokens, attention, num_patches=16, new_image_token_num=budget)``. Its output
    rows are input rows or zeros: recorded as the input index of every output row (-1 = a zero row)."""
    holov = official_function(repo, HOLOV["commit"], HOLOV["path"], "HoloV", None, {"torch": torch})
    spec = FIXTURES["holov"]
    cases = []
    for seed in spec["seeds"]:
        tokens, attention = holov_inputs(seed)
        for budget in spec["budgets"]:
            out = holov(tokens, attention, num_patches=16, new_image_token_num=budget)
            rows = []
            for b in range(tokens.shape[0]):
                match = (out[b][:, None, :] == tokens[b][None, :, :]).all(dim=-1)  # (k, N)
                zero = (out[b] == 0).all(dim=-1)
                assert bool((match.sum(dim=1) + zero.long() == 1).all()), "an output row is neither an input nor 0"
                rows.append([int(m.nonzero()[0, 0]) if not z else -1 for m, z in zip(match, zero)])
            cases.append({"seed": seed, "budget": budget, "output_rows": rows})
    return {"method": "holov", "official": HOLOV, "inputs": "baselines/official/inputs.py:holov_inputs",
            "input_sha256": {str(s): input_digest(*holov_inputs(s)) for s in spec["seeds"]},
            "skipped_for_ties": [], "cases": cases}


# --------------------------------------------------------------------------------------------- TokenCarve

TOKENCARVE = {"repo": "ShawnTan86/TokenCarve", "commit": "a57bd59a214d9010eb1a4decb61b0e3543b7d125",
              "path": "TokenCarve/modeling_llama.py",
              "function": "LlamaModel.forward, branch layer_idx == Token_carve_work_layer"}


def official_branch(repo: Path) -> object:
    """The statements of the released ``elif layer_idx == Token_carve_work_layer:`` branch of
    ``LlamaModel.forward``, compiled unmodified (they run in a namespace the recorder fills)."""
    source = subprocess.run(["git", "-C", str(repo), "show", f"{TOKENCARVE['commit']}:{TOKENCARVE['path']}"],
                            capture_output=True, text=True, check=True).stdout
    lines = source.splitlines()
    model = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "LlamaModel")
    forward = next(n for n in model.body if isinstance(n, ast.FunctionDef) and n.name == "forward")
    branch = next(n for n in ast.walk(forward) if isinstance(n, ast.If) and isinstance(n.test, ast.Compare)
                  and ast.unparse(n.test) == "layer_idx == Token_carve_work_layer")
    text = textwrap.dedent("\n".join(lines[branch.body[0].lineno - 1:branch.body[-1].end_lineno]))
    return compile(text, f"{repo}/{TOKENCARVE['path']}@{TOKENCARVE['commit'][:12]}:work-layer branch", "exec")


def tokencarve_cut_ties(attention: torch.Tensor, states: torch.Tensor, budget: int, weight: float) -> bool:
    """Replay the released rankings; report an exact tie in the attention or information order, or at the
    stage-I cut or the A/B split of the fused order (where the released ``topk`` order is unspecified)."""
    u, s, _ = torch.linalg.svd(states)
    information = torch.sum(torch.abs(u @ torch.diag(s)), dim=1)
    if has_tie(attention[None]) or has_tie(information[None]):
        return True
    n = attention.shape[0]
    weighting = torch.arange(n, 0, -1)
    fused = torch.zeros(n)
    fused[torch.sort(attention, descending=True).indices] += weighting * weight
    fused[torch.sort(information, descending=True).indices] += weighting * (1 - weight)
    ordered = fused.sort(descending=True).values
    rank = int(budget / 2 * 3)
    cuts = [c for c in (rank, int(0.5 * rank)) if 0 < c < n]
    return any(bool(ordered[c - 1] == ordered[c]) for c in cuts)


def record_tokencarve(repo: Path) -> dict:
    """The released work-layer branch on layer 1's outputs (``layer_outputs``: hidden states and attention of the
    last query row; the other rows are unused), with the loader's settings for T = budget. Recorded: the kept
    positions and the sha256 of the kept image tokens' hidden states after the merge (float32, bit for bit)."""
    from types import SimpleNamespace

    branch = official_branch(repo)
    spec = FIXTURES["tokencarve"]
    prefix, suffix = spec["prefix"], spec["suffix"]
    cases, skipped = [], []
    for seed in spec["seeds"]:
        states, last_row = tokencarve_inputs(seed, prefix, suffix)
        length = states.shape[1]
        for weight in spec["weights"]:
            for budget in spec["budgets"]:
                image = slice(prefix, prefix + 576)
                if tokencarve_cut_ties(last_row[0, :, image].mean(dim=0), states[0, image], budget, weight):
                    skipped.append({"seed": seed, "budget": budget, "weight": weight})
                    continue
                attention = torch.zeros(1, 32, length, length)
                attention[:, :, -1] = last_row[0]
                hidden = states.clone()
                cache = SimpleNamespace(key_cache=[torch.zeros(1, 1, length, 1)] * 2,
                                        value_cache=[torch.zeros(1, 1, length, 1)] * 2, seen_tokens=length)
                scope = {"torch": torch, "layer_outputs": (hidden, attention), "hidden_states": hidden,
                         "inputs_embeds": hidden, "batch_size": 1, "seq_length_with_past": length,
                         "past_key_values": cache, "all_self_attns": (attention, attention),
                         "decoder_layer": SimpleNamespace(self_attn=SimpleNamespace()),
                         "self": SimpleNamespace(token_carve_img_index=None),
                         "_prepare_4d_causal_attention_mask": lambda *args, **kwargs: None,
                         "Token_carve_sys_length": prefix, "Token_carve_image_token_length": 576,
                         "Token_carve_image_token_rank": int(budget / 2 * 3),
                         "Token_carve_merge_token_nums": int(budget / 2),
                         "Token_carve_SV_AV_mode": 0, "Token_carve_SV_AV_weight": weight}
                exec(branch, scope)
                keep = scope["keep_indexs"].tolist()
                kept_image = [p for p in keep if prefix <= p < prefix + 576]
                out = scope["hidden_states"][0]  # (kept, 4096): pruned, merged
                image_rows = out[[keep.index(p) for p in kept_image]]
                cases.append({"seed": seed, "budget": budget, "weight": weight,
                              "kept_positions": kept_image,
                              "kept_states_sha256": input_digest(image_rows)})
    return {"method": "tokencarve", "official": TOKENCARVE, "inputs": "baselines/official/inputs.py:tokencarve_inputs",
            "prefix": prefix, "suffix": suffix,
            "input_sha256": {str(s): input_digest(*tokencarve_inputs(s, prefix, suffix)) for s in spec["seeds"]},
            "skipped_for_ties": skipped, "cases": cases}


# ------------------------------------------------------------------------------------------------ FlowCut

FLOWCUT = {"repo": "TungChintao/FlowCut", "commit": "a2ecd247cb3c605773ec317a0c246425b47abdbe",
           "path": "flowcut/modeling_clip_flowcut.py",
           "function": "CLIPEncoder_forward, CLIPEncoderLayer_forward, CLIPAttention_forward (+ utils_flowcut.py)"}


def record_flowcut(repo: Path) -> dict:
    """The released encoder forward (its layer and attention forwards bound to a seeded random tower's modules,
    ``apply_flowcut_config`` with ``target = budget + 1``), batch 1, as LLaVA's tower calls it
    (``output_hidden_states=True, output_attentions=True``). Recorded: the returned ``all_keep_indices`` (patch
    indices) and each token's sum of LLaVA's features ``hidden_states[-2][:, 1:]`` (eager attention there, SDPA
    in ours: equal to rounding, not bit for bit)."""
    from types import MethodType, SimpleNamespace
    from typing import Optional, Tuple, Union

    from torch import nn
    from transformers.modeling_outputs import BaseModelOutput

    commit, utils = FLOWCUT["commit"], "flowcut/utils_flowcut.py"
    helpers = {"torch": torch}
    helpers["compute_score"] = official_function(repo, commit, utils, "compute_score", None, helpers)
    helpers["adaptive_prune_ratio"] = official_function(repo, commit, utils, "adaptive_prune_ratio", None, helpers)
    scope = {**helpers, "nn": nn, "Optional": Optional, "Tuple": Tuple, "Union": Union,
             "BaseModelOutput": BaseModelOutput}
    forwards = {name: official_function(repo, commit, FLOWCUT["path"], name, None, scope)
                for name in ("CLIPAttention_forward", "CLIPEncoderLayer_forward", "CLIPEncoder_forward",
                             "apply_flowcut_config")}
    spec = FIXTURES["flowcut"]
    cases = []
    for seed in spec["seeds"]:
        tower = flowcut_tower(seed)
        pixels = flowcut_inputs(seed)[0]
        encoder = tower.encoder
        encoder.forward = MethodType(forwards["CLIPEncoder_forward"], encoder)
        for layer in encoder.layers:
            layer.forward = MethodType(forwards["CLIPEncoderLayer_forward"], layer)
            attn = layer.self_attn
            attn.forward = MethodType(forwards["CLIPAttention_forward"], attn)
            # transformers 4.x's CLIPAttention._shape, which the released attention calls (gone in 5.x)
            attn._shape = (lambda a: lambda tensor, seq_len, bsz: tensor.view(
                bsz, seq_len, a.num_heads, a.head_dim).transpose(1, 2).contiguous())(attn)
        with torch.no_grad():
            inputs = tower.pre_layrnorm(tower.embeddings(pixels))
            for budget in spec["budgets"]:
                forwards["apply_flowcut_config"](SimpleNamespace(vision_model=SimpleNamespace(encoder=encoder)),
                                                 target_tokens=budget + 1)
                outputs, keep = encoder(inputs_embeds=inputs, output_attentions=True, output_hidden_states=True,
                                        return_dict=True)
                features = outputs.hidden_states[-2][:, 1:]
                assert features.shape[1] == keep.shape[1] == budget, (features.shape, keep.shape, budget)
                cases.append({"seed": seed, "budget": budget, "kept_patches": keep[0].tolist(),
                              "feature_sums": [round(v, 6) for v in features[0].double().sum(dim=-1).tolist()]})
    return {"method": "flowcut", "official": FLOWCUT, "inputs": "baselines/official/inputs.py:flowcut_inputs",
            "input_sha256": {str(s): input_digest(*flowcut_inputs(s)) for s in spec["seeds"]},
            "skipped_for_ties": [], "cases": cases}


# ---------------------------------------------------------------------------------------------- LLaVA-NeXT AnyRes

LLAVA_NEXT = {"repo": "haotian-liu/LLaVA", "commit": "c121f0432da27facab705978f83c4ada465e46fd",
              "path": "llava/mm_utils.py"}


def record_llava_next_anyres(repo: Path) -> dict:
    """Official LLaVA-NeXT's ``process_anyres_image`` (with ``select_best_resolution``, ``resize_and_pad_image``,
    ``divide_to_patches`` from the same file, in one namespace) on seeded images at the tiny model's geometry: a CLIP
    image processor of 112 px views, as the official eval passes the vision tower's processor. Recorded per image: the
    resolution chosen (width, height), the number of views, the sha256 of the float32 pixels and their per-view sums."""
    import math

    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from svdprune.prompts import CLIP_MEAN, CLIP_STD

    scope = {"math": math, "torch": torch, "Image": Image, "ast": ast}
    for name in ("select_best_resolution", "resize_and_pad_image", "divide_to_patches", "process_anyres_image"):
        scope[name] = official_function(repo, LLAVA_NEXT["commit"], LLAVA_NEXT["path"], name, None, scope)
        scope[name].__globals__.update(scope)  # each compiled function sees the others, as in their module
    tile = ANYRES["tile"]
    clip = CLIPImageProcessorPil(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    cases = []
    for case in ANYRES["cases"]:
        image = anyres_image(case["size"], case["seed"])
        pixels = scope["process_anyres_image"](image, clip, ANYRES["pinpoints"]).to(torch.float32)
        cases.append({**case, "best_resolution": list(scope["select_best_resolution"](image.size, ANYRES["pinpoints"])),
                      "views": pixels.shape[0], "sha256": input_digest(pixels),
                      "view_sums": [float(v.double().sum()) for v in pixels]})
    return {**LLAVA_NEXT, "tile": tile, "pinpoints": ANYRES["pinpoints"], "cases": cases, "skipped_for_ties": []}


RECORDERS = {"llava_next_anyres": record_llava_next_anyres, "vispruner": record_vispruner, "cdpruner": record_cdpruner,
             "dart": record_dart, "dart_llava_next": record_dart_llava_next,
             "divprune_llava_next": record_divprune_llava_next, "holov": record_holov,
             "tokencarve": record_tokencarve, "flowcut": record_flowcut}

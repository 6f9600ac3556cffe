"""VisionZip and FasterVLM (CLS-attention methods) against references built on *eager* attention.

The methods recompute the CLS attention row from q/k with SDPA on; the references read it from a second
copy of the tiny tower running eager attention with ``output_attentions=True`` (same weights).
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import CLIPVisionModel

from baselines._encoder_common import cls_attention_and_keys
from baselines.fastervlm import FasterVLM
from baselines.visionzip import OFFICIAL_SPLITS, VisionZip, split_for
from svdprune.errors import UserError
from svdprune.pruning import PruneContext, build_method
from svdprune.families.llava15 import encode_images

BUDGETS = (192, 128, 64, 32, 16)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def eager(tiny, pixels):
    """Eager-attention twin of the tiny tower and its outputs (attentions + hidden states) on ``pixels``."""
    config = copy.deepcopy(tiny.vision_tower.config)
    config._attn_implementation = "eager"
    tower = CLIPVisionModel(config).eval()
    tower.load_state_dict(tiny.vision_tower.state_dict())
    with torch.no_grad():
        out = tower(pixels, output_attentions=True, output_hidden_states=True)
    assert tower.config._attn_implementation == "eager" and tiny.vision_tower.config._attn_implementation == "sdpa"
    return tower, out


def head_mean_keys(layer, layer_input):
    """The layer's key states (k_proj of its LayerNorm'd input) averaged over heads, by hand."""
    attn = layer.self_attn
    keys = attn.k_proj(layer.layer_norm1(layer_input))  # (T, D)
    return keys.view(keys.shape[0], attn.num_heads, attn.head_dim).mean(dim=1)


def ranked(values: list[float]) -> list[int]:
    """Indices by decreasing value, ties to the lower index."""
    return sorted(range(len(values)), key=lambda j: (-values[j], j))


# -------------------------------------------------------------------------------------- recomputed row

def test_recomputed_cls_row_equals_eager(tiny, eager):
    _, out = eager
    layer = tiny.vision_tower.encoder.layers[1]  # produces hidden_states[-2] of the 3-layer tiny tower
    cls_attn, _ = cls_attention_and_keys(layer, out.hidden_states[1])
    torch.testing.assert_close(cls_attn, out.attentions[-2][:, :, 0].float(), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------- FasterVLM

def reference_fastervlm(attn, k):
    """attn: (H, T, T) eager attention of layer -2 for one image. Top-k patches by head-mean CLS attention."""
    heads = attn.shape[0]
    scores = [sum(float(attn[h, 0, 1 + j]) for h in range(heads)) / heads for j in range(attn.shape[-1] - 1)]
    return sorted(ranked(scores)[:k])


@pytest.mark.parametrize("budget", (64, 16))
def test_fastervlm_matches_eager_reference(tiny, eager, pixels, budget):
    _, out = eager
    method = FasterVLM(budget=budget)
    context = PruneContext(["q", "q"], model=tiny.model, lm=tiny)
    features = method.encode(tiny.vision_tower, pixels, -2, context)
    kept = method.reduce(features, context)
    for i in range(2):
        want = reference_fastervlm(out.attentions[-2][i], budget)
        assert context.stats["kept_indices"][i] == want
        torch.testing.assert_close(kept[i], out.hidden_states[-2][i, 1:][want], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- VisionZip

def reference_visionzip(hidden, attn, metric, dominant, contextual):
    """VisionZip for one image by its definition. hidden: (T, D) layer -2 output incl. CLS; attn: (H, T, T)
    eager attention of that layer; metric: (T, C) keys averaged over heads."""
    patches = hidden.shape[0] - 1
    score = [sum(float(attn[h, 0, 1 + j]) for h in range(attn.shape[0])) for j in range(patches)]
    dom = sorted(ranked(score)[:dominant - 1])
    tokens = [hidden[0]] + [hidden[1 + j] for j in dom]
    rest = [j for j in range(patches) if j not in set(dom)]
    n = len(rest)
    step = max(1, n // contextual)
    targets = list(range(0, n, step))[:contextual]
    unit = metric[1:].double()
    unit = unit / unit.norm(dim=-1, keepdim=True)
    cosine = (unit @ unit.T).tolist()
    members = {t: [] for t in targets}
    for m in range(n):
        if m in members:
            continue
        best, best_sim = None, -float("inf")
        for t in targets:
            if cosine[rest[m]][rest[t]] > best_sim:
                best, best_sim = t, cosine[rest[m]][rest[t]]
        members[best].append(m)
    for t in targets:
        token = hidden[1 + rest[t]].double()
        if members[t]:
            token = token + sum(hidden[1 + rest[m]].double() for m in members[t]) / len(members[t])
        tokens.append(token.to(hidden.dtype))
    return torch.stack(tokens), dom


@pytest.mark.parametrize("budget", (64, 16))
def test_visionzip_matches_eager_reference(tiny, eager, pixels, budget):
    _, out = eager
    method = VisionZip(budget=budget)
    dominant, contextual = OFFICIAL_SPLITS[budget]
    context = PruneContext(["q", "q"], model=tiny.model, lm=tiny)
    features = method.encode(tiny.vision_tower, pixels, -2, context)
    got = method.reduce(features, context)
    assert got.shape == (2, budget, features.shape[-1])
    layer = tiny.vision_tower.encoder.layers[1]
    for i in range(2):
        with torch.no_grad():
            metric = head_mean_keys(layer, out.hidden_states[1][i])
        want, dom = reference_visionzip(out.hidden_states[-2][i], out.attentions[-2][i], metric, dominant, contextual)
        assert context.stats["kept_indices"][i] == dom  # the dominant tokens are eager attention's top ones
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[i, 0], out.hidden_states[-2][i, 0], rtol=1e-5, atol=1e-6)  # CLS first


def test_visionzip_splits():
    assert {k: split_for(k, {}, 5 / 32) for k in BUDGETS} == OFFICIAL_SPLITS  # the ratio rule = the table
    for budget in BUDGETS:
        method = VisionZip(budget=budget)
        assert (method.dominant, method.contextual) == OFFICIAL_SPLITS[budget]
    assert (VisionZip(budget=2).dominant, VisionZip(budget=2).contextual) == (1, 1)
    assert (VisionZip(budget=100).dominant, VisionZip(budget=100).contextual) == (84, 16)
    custom = VisionZip(budget=64, splits={"64": [60, 4]})
    assert (custom.dominant, custom.contextual) == (60, 4)


@pytest.mark.parametrize("params", [{"splits": {64: [60, 5]}}, {"splits": {64: [0, 64]}}, {"splits": {64: "x"}},
                                    {"contextual_ratio": 0}, {"contextual_ratio": True}])
def test_visionzip_bad_parameters(params):
    with pytest.raises(UserError):
        VisionZip(budget=64, **params)


@pytest.mark.parametrize("budget", [1, 0, 577])
def test_visionzip_impossible_budget(budget):
    with pytest.raises(UserError, match="budget"):
        VisionZip(budget=budget)


@pytest.mark.parametrize("name", ["visionzip", "fastervlm"])
def test_every_budget_is_exact_and_deterministic(tiny, pixels, name):
    for budget in BUDGETS + (2, 100, 575):
        method = build_method(name, budget, {})
        first = encode_images(tiny, method, pixels, PruneContext(["q", "q"], model=tiny.model, lm=tiny))
        assert first.shape[:2] == (2, budget)
    second = encode_images(tiny, method, pixels, PruneContext(["q", "q"], model=tiny.model, lm=tiny))
    torch.testing.assert_close(second, first, rtol=0, atol=0)

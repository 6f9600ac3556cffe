"""ToMe (baselines/tome.py) against brute-force references written from the paper's definition."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.tome import (LLAVA15_MERGE_LAYERS, ToMe, bipartite_soft_matching, check_schedule,
                            decreasing_schedule, merge_weighted)
from svdprune.errors import UserError
from svdprune.families.llava15 import build_tiny
from svdprune.pruning import PruneContext, Vanilla, build_method

BUDGETS = (192, 128, 64, 32, 16)


@pytest.fixture(scope="module")
def deep_tower():
    """A tiny CLIP tower with CLIP-L's depth (24 layers, 577 tokens): ToMe merges in layers 0..22."""
    return build_tiny(seed=1, vision_layers=24, text_layers=1).vision_tower


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------- brute-force ToMe

def reference_merge(metric, x, size, r):
    """One ToMe step for one image by its definition, with explicit loops.

    Tokens alternate A (even position) / B (odd position); CLS (position 0) never merges; every A token's
    best cosine match in B; the r A tokens with the best matches (ties: lower position) merge into their
    match by size-weighted mean; output = unmerged A by position, then all B tokens.
    """
    t = len(x)
    unit = metric.double() / metric.double().norm(dim=-1, keepdim=True)
    cosine = (unit @ unit.T).tolist()  # cosine[i][j] between tokens i and j
    a_pos, b_pos = list(range(0, t, 2)), list(range(1, t, 2))
    best = {}
    for a in a_pos[1:]:
        best_b, best_s = None, -math.inf
        for b in b_pos:
            s = cosine[a][b]
            if s > best_s:
                best_b, best_s = b, s
        best[a] = (best_s, best_b)
    ranked = sorted(best, key=lambda a: (-best[a][0], a))
    merged = set(ranked[:r])
    members = {b: [] for b in b_pos}
    for a in merged:
        members[best[a][1]].append(a)
    out_x, out_size = [], []
    for a in a_pos:
        if a not in merged:
            out_x.append(x[a].double())
            out_size.append(float(size[a]))
    for b in b_pos:
        total, weight = size[b] * x[b].double(), float(size[b])
        for a in members[b]:
            total = total + size[a] * x[a].double()
            weight += float(size[a])
        out_x.append(total / weight)
        out_size.append(weight)
    return torch.stack(out_x), torch.tensor(out_size, dtype=torch.float64)


def reference_layer(layer, hidden, size, r):
    """A CLIP encoder layer with proportional attention (+ log size on the logits) and a ToMe merge, one image."""
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x).view(-1, heads, hd).transpose(0, 1)
    k = attn.k_proj(x).view(-1, heads, hd).transpose(0, 1)
    v = attn.v_proj(x).view(-1, heads, hd).transpose(0, 1)
    logits = q @ k.transpose(-1, -2) * hd ** -0.5 + torch.log(size.float())[None, None, :]
    out = (torch.softmax(logits, dim=-1) @ v).transpose(0, 1).reshape(len(hidden), -1)
    hidden = hidden + attn.out_proj(out)
    if r > 0:
        metric = k.mean(dim=0)  # keys averaged over heads
        merged, size = reference_merge(metric, hidden, size, r)
        hidden = merged.float()
    return hidden + layer.mlp(layer.layer_norm2(hidden)), size


@torch.no_grad()
def reference_tome(tower, pixels, schedule):
    outputs, sizes = [], []
    for image in pixels:
        hidden = tower.pre_layrnorm(tower.embeddings(image[None]))[0]
        size = torch.ones(len(hidden), dtype=torch.float64)
        for layer, r in zip(tower.encoder.layers, schedule):
            hidden, size = reference_layer(layer, hidden, size, r)
        outputs.append(hidden[1:])
        sizes.append(size[1:])
    return torch.stack(outputs), torch.stack(sizes)


# ------------------------------------------------------------------------------------------------ tests

def test_merge_step_matches_reference():
    gen = torch.Generator().manual_seed(3)
    metric, x = torch.randn(2, 41, 6, generator=gen), torch.randn(2, 41, 5, generator=gen)
    size = torch.randint(1, 5, (2, 41, 1), generator=gen).float()
    for r in (0, 1, 7, 20):
        plan = bipartite_soft_matching(metric, r)
        got, got_size = merge_weighted(x, size, plan)
        for i in range(2):
            want, want_size = reference_merge(metric[i], x[i], size[i, :, 0], r)
            torch.testing.assert_close(got[i].double(), want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got_size[i, :, 0].double(), want_size)
        assert got_size.sum(dim=(1, 2)).tolist() == size.sum(dim=(1, 2)).tolist()  # sizes are conserved
        assert got.shape[1] == 41 - r


@pytest.mark.parametrize("budget", [128, 16])
def test_encode_matches_reference_tower(deep_tower, pixels, budget):
    method = ToMe(budget=budget)
    context = PruneContext(["q", "q"])
    got = method.encode(deep_tower, pixels, -2, context)
    assert got.shape == (2, budget, deep_tower.config.hidden_size)
    want, want_sizes = reference_tome(deep_tower, pixels[1:], method.schedule)  # the second image
    torch.testing.assert_close(got[1:], want, rtol=1e-4, atol=1e-4)
    assert context.stats["merged_sizes"][1:] == want_sizes.round().long().tolist()
    assert context.stats["tome_schedule"] == [method.schedule] * 2


def test_zero_merges_is_the_identity(tiny, deep_tower, pixels):
    for tower in (tiny.vision_tower, deep_tower):
        method = ToMe(budget=576)
        assert set(method.schedule) == {0}
        context = PruneContext(["q", "q"])
        got = method.encode(tower, pixels, -2, context)
        want = Vanilla().encode(tower, pixels, -2, PruneContext(["q", "q"]))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert context.stats["merged_sizes"] == [[1] * 576] * 2


@pytest.mark.parametrize("budget", BUDGETS)
def test_budgets_are_exact_and_sizes_sum_to_input(deep_tower, pixels, budget):
    method = build_method("tome", budget, {"inflect": -0.4, "schedule": None, "prop_attn": True})
    context = PruneContext(["q"])
    out = method.encode(deep_tower, pixels[:1], -2, context)
    assert out.shape[1] == budget == method.reduce(out, context).shape[1]
    assert len(method.schedule) == LLAVA15_MERGE_LAYERS and sum(method.schedule) == 576 - budget
    assert all(a >= b for a, b in zip(method.schedule, method.schedule[1:]))  # decreasing
    for sizes in context.stats["merged_sizes"]:
        assert len(sizes) == budget and sum(sizes) == 576 and min(sizes) >= 1


def test_deterministic_and_batch_independent(deep_tower, pixels):
    method = ToMe(budget=32)
    batch = method.encode(deep_tower, pixels, -2, PruneContext(["q", "q"]))
    again = method.encode(deep_tower, pixels, -2, PruneContext(["q", "q"]))
    torch.testing.assert_close(again, batch, rtol=0, atol=0)
    alone = method.encode(deep_tower, pixels[1:], -2, PruneContext(["q"]))
    torch.testing.assert_close(alone[0], batch[1], rtol=1e-5, atol=1e-5)


def test_schedule_rules():
    assert decreasing_schedule(576, 16, 23, -0.4)[:2] == [35, 34]
    # an even schedule would stall near 20 tokens (50% cap); the cap-aware schedule lands exactly
    for budget in range(1, 577):
        for inflect in (-1.0, -0.4, 0.0):
            schedule = decreasing_schedule(576, budget, 23, inflect)
            check_schedule(schedule, 576, budget)
    tokens = 576
    for r in decreasing_schedule(576, 16, 23, 0.0):
        assert r <= tokens // 2
        tokens -= r
    assert tokens == 16
    with pytest.raises(ValueError):
        decreasing_schedule(576, 143, 2, -0.4)  # two layers halve 576 to 144 at best
    assert decreasing_schedule(576, 144, 2, -0.4) == [288, 144]


def test_budget_the_tower_cannot_reach(tiny, pixels):
    method = ToMe(budget=64)  # fine for CLIP-L's 23 merge layers ...
    with pytest.raises(UserError, match="budget=64"):
        method.encode(tiny.vision_tower, pixels, -2, PruneContext(["q", "q"]))  # ... not for 2 layers


@pytest.mark.parametrize("params", [{"inflect": 2}, {"inflect": "x"}, {"prop_attn": "yes"},
                                    {"schedule": [1, -1]}, {"schedule": [100] * 5}, {"schedule": "abc"}])
def test_bad_parameters(params):
    with pytest.raises(UserError):
        ToMe(budget=64, **params)


@pytest.mark.parametrize("budget", [0, 577, 2.5])
def test_bad_budget(budget):
    with pytest.raises(UserError, match="budget"):
        ToMe(budget=budget)


def test_explicit_schedule(deep_tower, pixels):
    schedule = [200, 100, 50, 26]  # 576 - 376 = 200 left
    method = ToMe(budget=200, schedule=schedule)
    assert method.schedule[:4] == schedule and sum(method.schedule) == 376
    out = method.encode(deep_tower, pixels, -2, PruneContext(["q", "q"]))
    assert out.shape[1] == 200

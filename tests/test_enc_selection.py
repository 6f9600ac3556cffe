"""DivPrune, random-k and spatial pooling against brute-force references (explicit loops)."""
from __future__ import annotations

import hashlib

import pytest
import torch

from baselines.divprune import DivPrune
from baselines.pooling import SpatialPooling, grid_shape
from baselines.random_k import RandomK
from svdprune.errors import UserError
from svdprune.pruning import PruneContext, build_method
from svdprune.families.llava15 import encode_images
from svdprune.families.llava15 import build_tiny

BUDGETS = (192, 128, 64, 32, 16)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 336, 336, generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def features(tiny, pixels):
    with torch.no_grad():
        return tiny.vision_tower(pixels[:2], output_hidden_states=True).hidden_states[-2][:, 1:]


# -------------------------------------------------------------------------------------------- DivPrune

def reference_divprune(embeddings, k):
    """Max-min diversity by its definition: d = 1 - cosine; first the token whose nearest other token is
    farthest, then repeatedly the token farthest (in min distance) from the picked set; raster order."""
    unit = embeddings.double() / embeddings.double().norm(dim=-1, keepdim=True)
    d = (1.0 - unit @ unit.T).tolist()
    n = len(d)
    nearest = [min(d[i][j] for i in range(n) if i != j) for j in range(n)]
    picked = [max(range(n), key=lambda j: (nearest[j], -j))]
    min_dist = list(d[picked[0]])
    while len(picked) < k:
        candidates = [j for j in range(n) if j not in picked]
        best = max(candidates, key=lambda j: (min_dist[j], -j))
        picked.append(best)
        min_dist = [min(min_dist[j], d[best][j]) for j in range(n)]
    return sorted(picked)


@pytest.mark.parametrize("budget", [32, 16])
def test_divprune_matches_reference(tiny, features, budget):
    context = PruneContext(["q", "q"], model=tiny.model, lm=tiny)
    got = DivPrune(budget=budget).reduce(features, context)
    with torch.no_grad():
        embeddings = tiny.projector(features)
    for i in range(2):
        want = reference_divprune(embeddings[i], budget)
        assert context.stats["kept_indices"][i] == want
        torch.testing.assert_close(got[i], features[i, want], rtol=0, atol=0)


def test_divprune_uses_the_projected_space(tiny, features):
    """Selecting on the raw features would give another set: the projector really is used."""
    context = PruneContext(["q", "q"], model=tiny.model, lm=tiny)
    DivPrune(budget=32).reduce(features, context)
    assert context.stats["kept_indices"][0] != reference_divprune(features[0], 32)


# ---------------------------------------------------------------------------------------------- random

def documented_seed(image: torch.Tensor, seed: int) -> int:
    digest = hashlib.sha256(str(seed).encode() + b":" + image.to(torch.float16).contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def test_random_matches_documented_draw(tiny, pixels):
    method = RandomK(budget=16)
    context = PruneContext(["q"] * 3, seed=3, model=tiny.model, lm=tiny)
    context.pixels_float32 = pixels  # as llava15.to_model hands them over
    features = method.encode(tiny.vision_tower, pixels, -2, context)
    out = method.reduce(features, context)
    for i in range(3):
        generator = torch.Generator().manual_seed(documented_seed(pixels[i], 3))
        want = sorted(torch.randperm(576, generator=generator)[:16].tolist())
        assert context.stats["kept_indices"][i] == want
        torch.testing.assert_close(out[i], features[i, want], rtol=0, atol=0)
    kept = context.stats["kept_indices"]
    assert kept[0] != kept[1] != kept[2]  # a subset per image


def test_random_seed_batch_and_sharing(tiny, pixels):
    def kept(method, images, seed):
        context = PruneContext(["q"] * len(images), seed=seed, model=tiny.model, lm=tiny)
        context.pixels_float32 = images
        method.reduce(method.encode(tiny.vision_tower, images, -2, context), context)
        return context.stats["kept_indices"]

    method = RandomK(budget=32)
    batch = kept(method, pixels, 0)
    assert kept(method, pixels, 0) == batch  # deterministic under a seed
    assert kept(method, pixels[1:2], 0) == batch[1:2]  # independent of the batch it is in
    assert kept(method, pixels, 1) != batch  # the seed matters
    shared = kept(RandomK(budget=32, per_image=False), pixels, 0)
    assert shared[0] == shared[1] == shared[2]
    assert shared[0] == sorted(torch.randperm(576, generator=torch.Generator().manual_seed(0))[:32].tolist())


# ---------------------------------------------------------------------------------------------- pooling

def reference_pool(features, h, w, side=24):
    """Average of the patches in each adaptive-pooling bin: rows floor(i*24/h) .. ceil((i+1)*24/h) - 1."""
    grid = features.double().view(side, side, -1)
    cells = []
    for i in range(h):
        r0, r1 = (i * side) // h, -((-(i + 1) * side) // h)
        for j in range(w):
            c0, c1 = (j * side) // w, -((-(j + 1) * side) // w)
            total = sum(grid[r, c] for r in range(r0, r1) for c in range(c0, c1))
            cells.append(total / ((r1 - r0) * (c1 - c0)))
    return torch.stack(cells).float()


def test_grid_shapes():
    assert {k: grid_shape(k, 24) for k in (576, 192, 128, 64, 32, 16, 1)} == {
        576: (24, 24), 192: (12, 16), 128: (8, 16), 64: (8, 8), 32: (4, 8), 16: (4, 4), 1: (1, 1)}
    assert grid_shape(37, 24) is None and grid_shape(24 * 25, 24) is None


@pytest.mark.parametrize("budget", BUDGETS)
def test_pooling_matches_reference(features, budget):
    context = PruneContext(["q", "q"])
    got = SpatialPooling(budget=budget).reduce(features, context)
    h, w = grid_shape(budget, 24)
    assert context.stats["pool_grid"] == [[h, w]] * 2
    for i in range(2):
        torch.testing.assert_close(got[i], reference_pool(features[i], h, w), rtol=1e-5, atol=1e-5)


def test_pooling_max_mode(features):
    got = SpatialPooling(budget=16, mode="max").reduce(features, PruneContext(["q", "q"]))
    want = features[0].view(4, 6, 4, 6, -1).amax(dim=(1, 3)).reshape(16, -1)
    torch.testing.assert_close(got[0], want, rtol=0, atol=0)


@pytest.mark.parametrize("budget", [37, 601, 0])
def test_pooling_impossible_budget(budget):
    with pytest.raises(UserError, match="budget"):
        SpatialPooling(budget=budget)


# ------------------------------------------------------------------------------------------ all budgets

@pytest.mark.parametrize("name", ["divprune", "random", "pooling"])
def test_every_budget_is_exact_and_deterministic(tiny, pixels, name):
    for budget in BUDGETS:
        method = build_method(name, budget, {})
        first = encode_images(tiny, method, pixels[:2], PruneContext(["q", "q"], model=tiny.model, lm=tiny))
        assert first.shape[:2] == (2, budget)
    again = encode_images(tiny, method, pixels[:2], PruneContext(["q", "q"], model=tiny.model, lm=tiny))
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.parametrize("name,params", [("random", {"per_image": "yes"}), ("pooling", {"mode": "median"})])
def test_bad_parameters(name, params):
    with pytest.raises(UserError, match=next(iter(params))):
        build_method(name, 64, params)


@pytest.mark.parametrize("name", ["divprune", "random", "fastervlm"])
@pytest.mark.parametrize("budget", [0, 577, 1.5, True])
def test_impossible_budget(name, budget):
    if budget == 577:  # the model's own count bounds it, not LLaVA's 576 (LLaVA-NeXT's images have up to 2,928)
        method = build_method(name, budget, {})
        with pytest.raises(UserError, match="budget=577 is more than the 576 patch tokens"):
            method.check(build_tiny(vision_layers=3, text_layers=1))
        return
    with pytest.raises(UserError, match="budget"):
        build_method(name, budget, {})


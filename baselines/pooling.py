"""Spatial pooling: average the 24 x 24 grid of layer -2 patch features down to exactly ``budget`` cells.

Not from a paper's code; a standard floor. The pooling is ``torch.nn.functional.adaptive_avg_pool2d`` over
the patch grid (features in float32, cast back), output cells in raster order (row by row).

Grid shape for budget k (**Decision**): the factorisation k = h * w with h <= w <= 24 (the patch grid side)
whose h is largest, i.e. the most square grid with exactly k cells: 576 -> 24 x 24 (identity), 192 -> 12 x 16,
128 -> 8 x 16, 64 -> 8 x 8, 32 -> 4 x 8, 16 -> 4 x 4. Adaptive pooling uses PyTorch's bins: output cell i of
a side covers input rows floor(i * 24 / h) .. ceil((i + 1) * 24 / h) - 1, so for 24 -> 16 the bins are 2 or
3 patches wide and neighbouring bins overlap by one patch. A budget with no such factorisation (e.g. a prime
above 24) is refused. ``mode: max`` uses adaptive max pooling instead (ablation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from svdprune.errors import UserError
from svdprune.pruning import EncoderPruner

from ._encoder_common import LLAVA15_GRID, check_budget

NAME = "pooling"
MODES = ("avg", "max")


def grid_shape(k: int, side: int) -> tuple[int, int] | None:
    """(h, w) with h * w == k, h <= w <= side, h as large as possible; None if there is none."""
    for h in range(math.isqrt(k), 0, -1):
        if k % h == 0:
            w = k // h
            return (h, w) if w <= side else None
    return None


def pool_tokens(features: torch.Tensor, shape: tuple[int, int], mode: str = "avg") -> torch.Tensor:
    """(B, side*side, D) raster patch features -> (B, h*w, D) pooled, raster order of the pooled grid."""
    batch, n, dim = features.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} patch tokens are not a square grid")
    grid = features.float().transpose(1, 2).reshape(batch, dim, side, side)
    pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    pooled = pool(grid, shape)  # (B, D, h, w)
    return pooled.flatten(2).transpose(1, 2).to(features.dtype)


class SpatialPooling(EncoderPruner):
    kind = "encoder"

    def __init__(self, budget: int, mode: str = "avg"):
        self.budget = check_budget(NAME, budget)
        if mode not in MODES:
            raise UserError(f"{NAME}: method.params.mode={mode!r}; allowed: {', '.join(MODES)}")
        self.mode = mode
        self.shape = grid_shape(budget, LLAVA15_GRID)
        if self.shape is None:
            raise UserError(f"{NAME}: budget={budget} is not h x w cells with h, w <= {LLAVA15_GRID}; allowed: "
                            "a budget with such a factorisation (e.g. 16, 32, 64, 128, 192, 576)")

    def check(self, lm) -> None:
        side = math.isqrt(lm.num_patches)
        if side * side != lm.num_patches or grid_shape(self.budget, side) is None:
            raise UserError(f"{NAME}: budget={self.budget} does not fit this tower's {lm.num_patches} patches "
                            f"as h x w cells with h, w <= {side}")

    def reduce(self, features, context):
        side = math.isqrt(features.shape[1])
        shape = grid_shape(self.budget, side)
        if shape is None:
            raise UserError(f"{NAME}: budget={self.budget} does not fit this tower's {side} x {side} grid")
        context.record(pool_grid=[list(shape)] * features.shape[0])
        return pool_tokens(features, shape, self.mode)

"""Spatial pooling: average the 24 x 24 grid of layer -2 patch features down to exactly ``budget`` cells.

Not from a paper's code; a standard floor. The pooling is ``torch.nn.functional.adaptive_avg_pool2d`` over
the patch grid (features in float32, cast back), output cells in raster order (row by row).

Grid shape for budget k (**Decision**): the factorisation k = h * w with h <= w <= 24 (the patch grid side)
whose h is largest, i.e. the most square grid with exactly k cells: 576 -> 24 x 24 (identity), 192 -> 12 x 16,
128 -> 8 x 16, 64 -> 8 x 8, 32 -> 4 x 8, 16 -> 4 x 4. Adaptive pooling uses PyTorch's bins: output cell i of
a side covers input rows floor(i * 24 / h) .. ceil((i + 1) * 24 / h) - 1, so for 24 -> 16 the bins are 2 or
3 patches wide and neighbouring bins overlap by one patch. A budget with no such factorisation (e.g. a prime
above 24) is refused. ``mode: max`` uses adaptive max pooling instead (ablation).

On Qwen2.5-VL (**Decision**, no published reference) the grid is the image's own h x w merged-token grid (after the
patch merger, LLM-input embeddings) and the pooled shape is :func:`fitted_grid_shape`: exactly k cells with the
aspect closest to the image's where k factorises within the grid, else the largest count below k that does.
A pooled cell takes the 3-D position of the first cell of its bin (svdprune/families/qwen25vl.py), so the pooled grid keeps
the image's layout at the original scale and the text keeps its positions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from svdprune.errors import UserError
from svdprune.params import Choice
from svdprune.pruning import EncoderPruner, register

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


def fitted_grid_shape(k: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The pooled shape for a budget of k cells on an h x w grid that need not be square (Qwen2.5-VL's merged grid):
    (p, q) with p * q = k, p <= h, q <= w, whose aspect p / q is closest to h / w (ties: the larger p); when no
    factorisation of k fits the grid, the largest count below k that has one. At most h * w cells."""
    h, w = grid
    for count in range(min(k, h * w), 0, -1):
        shapes = [(p, count // p) for p in range(1, h + 1) if count % p == 0 and count // p <= w]
        if shapes:
            return min(shapes, key=lambda s: (abs(math.log(s[0] * w / (s[1] * h))), -s[0]))
    raise ValueError(f"no pooled shape for {k} cells on a {h} x {w} grid")


def bin_starts(out: int, size: int) -> list[int]:
    """First input index of each of ``out`` adaptive-pooling bins over ``size`` (PyTorch's floor(i * size / out))."""
    return [i * size // out for i in range(out)]


def pool_tokens(features: torch.Tensor, shape: tuple[int, int], mode: str = "avg",
                grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, h*w, D) raster patch features of an h x w ``grid`` (default: square) -> (B, p*q, D) pooled to ``shape``
    (p, q), raster order of the pooled grid."""
    batch, n, dim = features.shape
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens are not a square grid")
        grid = (side, side)
    grid_features = features.float().transpose(1, 2).reshape(batch, dim, *grid)
    pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    pooled = pool(grid_features, shape)  # (B, D, p, q)
    return pooled.flatten(2).transpose(1, 2).to(features.dtype)


@register
class SpatialPooling(EncoderPruner):
    name, label, in_paper, table_row = "pooling", "Pooling", False, 110
    reaches_all = True
    kind = "encoder"

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"mode": Choice(*MODES, default="avg")}

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
        if context.token_grid is not None:  # a grid of the image's own shape (Qwen2.5-VL): the fitted pooled shape
            shape = fitted_grid_shape(self.budget, context.token_grid)
            rows, cols = (bin_starts(out, size) for out, size in zip(shape, context.token_grid))
            context.record(pool_grid=[list(shape)] * features.shape[0],
                           pool_cells=[[[r, c] for r in rows for c in cols]] * features.shape[0])  # bins' first cells
            return pool_tokens(features, shape, self.mode, context.token_grid)
        side = math.isqrt(features.shape[1])
        shape = grid_shape(self.budget, side)
        if shape is None:
            raise UserError(f"{NAME}: budget={self.budget} does not fit this tower's {side} x {side} grid")
        context.record(pool_grid=[list(shape)] * features.shape[0])
        return pool_tokens(features, shape, self.mode)

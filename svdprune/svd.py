"""SVD-Prune: vision-token selection by rank-r leverage scores.

Paper: "Beyond Attention Scores: SVD-Based Vision Token Pruning" (Sec. 3.2). No public code exists;
this file is the whole algorithm, as the paper describes it:

1. X = vision features of the layer LLaVA uses (CLIP layer -2, CLS dropped), (N, D), before the
   projector, in float32.
2. Thin SVD X = U S V^T.
3. Energy e_j = s_j^2 / sum_i s_i^2; r = smallest integer with cumulative energy >= tau,
   clamped to 1 <= r <= numerical rank of X.
4. Leverage of token i: l_i = (1/r) * sum_{j<=r} U_ij^2 (sums to 1 over tokens).
5. Keep the top-k tokens by l_i (ties: lower index first) and re-sort them into raster order.

Decisions where the paper is silent (all config options of ``method=svd``):
- ``center`` (default False): the paper decomposes X as is; ``center=True`` subtracts the token mean.
- ``weighting`` (default "uniform"): "uniform" is Eq. 4; "sigma" weights column j by s_j^2
  (normalised so the scores still sum to 1). Ablation only.
- ``energy`` (default "s2"): "s2" is Eq. 2; "sigma" uses s_j instead of s_j^2. Ablation only.
- ``solver`` (default "svd"): "svd" is ``torch.linalg.svd``; "gram" gets the same U and s from the
  eigendecomposition of the N x N Gram matrix X X^T (s_j^2 = eigenvalues), several times cheaper. Both give
  the same selection wherever the kept set is not decided by float noise (tested). At tau = 1 with a full-rank
  X and N <= D every leverage equals 1/N exactly, so the kept set is decided by rounding under either solver.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .params import Choice, Flag, Number
from .pruning import EncoderPruner, register

WEIGHTINGS = ("uniform", "sigma")
ENERGIES = ("s2", "sigma")
SOLVERS = ("svd", "gram")


def spectral_rank(singular_values: torch.Tensor, tau: float, energy: str = "s2",
                  max_dim: int | None = None) -> torch.Tensor:
    """Smallest r with cumulative spectral energy >= tau, clamped to [1, numerical rank].

    singular_values: (B, M) descending, non-negative. Returns (B,) long.
    The energy sum runs in float64. The numerical rank uses ``torch.linalg.matrix_rank``'s tolerance,
    s > s_max * max(N, D) * eps (pass ``max_dim`` = max(N, D); default M): at tau = 1 rounding can
    leave the cumulative energy a hair below 1, and the clamp then gives the rank instead of
    singular directions of a zero singular value.
    """
    s = singular_values.double()
    weights = s * s if energy == "s2" else s
    total = weights.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    cumulative = torch.cumsum(weights / total, dim=-1)  # (B, M)
    r = (cumulative < tau).sum(-1) + 1  # components needed before the threshold is reached
    tol = s[:, :1] * (max_dim or s.shape[-1]) * torch.finfo(singular_values.dtype).eps
    numerical_rank = (s > tol).sum(-1).clamp_min(1)
    return torch.minimum(r, numerical_rank).clamp_min(1)


def left_singular(x: torch.Tensor, solver: str = "svd") -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values of x (B, N, D): u (B, N, M), s (B, M), M = min(N, D)."""
    if solver == "svd":
        u, s, _ = torch.linalg.svd(x, full_matrices=False)
        return u, s
    if solver == "gram":
        n, m = x.shape[1], min(x.shape[1], x.shape[2])
        eigenvalues, eigenvectors = torch.linalg.eigh(x @ x.mT)  # ascending; X X^T = U diag(s^2) U^T
        # eigenvalues carry absolute errors ~ eps * lambda_max: below n * eps * lambda_max they are noise, i.e.
        # zero singular values (the SVD path's own cutoff on s would let sqrt(noise) through)
        noise = eigenvalues[:, -1:] * n * torch.finfo(eigenvalues.dtype).eps
        eigenvalues = torch.where(eigenvalues > noise, eigenvalues, torch.zeros_like(eigenvalues))
        s = eigenvalues.flip(-1)[:, :m].sqrt()
        return eigenvectors.flip(-1)[..., :m], s
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


@dataclass
class LeverageResult:
    scores: torch.Tensor  # (B, N) float32, each row sums to 1
    rank: torch.Tensor  # (B,) long, the r used for each image


def leverage(
    x: torch.Tensor,
    tau: float = 0.9,
    *,
    center: bool = False,
    weighting: str = "uniform",
    energy: str = "s2",
    solver: str = "svd",
) -> LeverageResult:
    """Rank-r leverage scores and the rank r, batched over images. x: (B, N, D) -> scores (B, N)."""
    if x.dim() != 3:
        raise ValueError(f"x must be (B, N, D), got shape {tuple(x.shape)}")
    x = x.float()
    if center:
        x = x - x.mean(dim=1, keepdim=True)
    u, s = left_singular(x, solver)  # u: (B, N, M), s: (B, M) descending, M = min(N, D)
    r = spectral_rank(s, tau, energy, max_dim=max(x.shape[1], x.shape[2]))  # (B,)
    in_subspace = torch.arange(s.shape[-1], device=x.device)[None, :] < r[:, None]  # (B, M)
    if weighting == "uniform":
        column_weight = in_subspace.float() / r[:, None].float()
    elif weighting == "sigma":
        s2 = torch.where(in_subspace, s * s, torch.zeros_like(s))
        column_weight = s2 / s2.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    scores = torch.einsum("bnm,bm->bn", u * u, column_weight)  # (B, N)
    return LeverageResult(scores=scores, rank=r)


def leverage_scores(x: torch.Tensor, tau: float = 0.9, **options) -> torch.Tensor:
    """Leverage score of every token. x: (B, N, D) -> (B, N) float32 (rows sum to 1)."""
    return leverage(x, tau, **options).scores


def top_k_raster(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores per row, ties to the lower index, returned ascending.

    scores: (B, N) -> (B, k) long.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # (B, N)
    return torch.sort(order[:, :k], dim=-1).values


def select_tokens(x: torch.Tensor, budget: int, tau: float = 0.9, **options) -> torch.Tensor:
    """Indices of the ``budget`` tokens SVD-Prune keeps. x: (B, N, D) -> (B, budget) long, ascending."""
    n = x.shape[1]
    if not 1 <= budget <= n:
        raise ValueError(f"budget must be in 1..{n}, got {budget}")
    return top_k_raster(leverage_scores(x, tau, **options), budget)


@register
class SvdPrune(EncoderPruner):
    """Encoder-side pruner: keeps ``budget`` patch features by leverage score (see module docstring)."""

    name, label, in_paper, table_row = "svd", "SVD-Prune", True, 120

    kind = "encoder"

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"tau": Number(0, 1, open_low=True, default=0.9), "center": Flag(default=False),
              "weighting": Choice(*WEIGHTINGS, default="uniform"), "energy": Choice(*ENERGIES, default="s2"),
              "solver": Choice(*SOLVERS, default="svd")}

    def __init__(self, budget: int, tau: float = 0.9, center: bool = False,
                 weighting: str = "uniform", energy: str = "s2", solver: str = "svd"):
        if not (isinstance(tau, (int, float)) and 0 < tau <= 1):
            raise UserError(f"method.params.tau={tau!r} is outside (0, 1]")
        if weighting not in WEIGHTINGS:
            raise UserError(f"method.params.weighting={weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
        if energy not in ENERGIES:
            raise UserError(f"method.params.energy={energy!r}; allowed: {', '.join(ENERGIES)}")
        if solver not in SOLVERS:
            raise UserError(f"method.params.solver={solver!r}; allowed: {', '.join(SOLVERS)}")
        self.budget = budget
        self.tau = tau
        self.options = dict(center=center, weighting=weighting, energy=energy, solver=solver)

    def reduce(self, features: torch.Tensor, context) -> torch.Tensor:
        """features: (B, N, D) layer -2 patch features -> (B, budget, D), raster order."""
        result = leverage(features, self.tau, **self.options)
        keep = top_k_raster(result.scores, self.budget)  # (B, k)
        context.record(rank=result.rank.tolist(), kept_indices=keep.tolist())
        return torch.gather(features, 1, keep[..., None].expand(-1, -1, features.shape[-1]))

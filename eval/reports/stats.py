"""The statistics of the reports: bootstrap confidence intervals, exact paired tests, Holm's correction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


# ------------------------------------------------------------------------------------- statistics


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_mean_ci(scores: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-question ``scores`` (resampling questions with
    replacement, ``n_boot`` times, numpy Generator seeded by ``seed``).

    Implemented exactly, not approximately, through the counts: a resample of n questions draws each
    distinct score value v a Multinomial(n, freq) number of times, so the resampled mean is
    sum_v v * count_v / n -- the same distribution as resampling indices, at O(distinct values) per
    replicate (scores take a handful of values: 0/1 for GQA, 0/.3/.6/.9/1 for TextVQA). For a paired
    bootstrap pass the per-question differences.
    """
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap of an empty score list")
    values, counts = np.unique(x, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(x.size, counts / x.size, size=n_boot)
    return _quantiles(draws @ values / x.size, level)


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n fair coin flips: min(1, 2 * P(X <= min(k, n - k)))."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    term, total = 1, 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return min(1.0, 2 * total / (1 << n))


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """Exact McNemar test on paired 0/1 scores: (n10 = a right & b wrong, n01 = a wrong & b right, p)."""
    a, b = np.asarray(a), np.asarray(b)
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("McNemar needs 0/1 scores")
    n10 = int(((a == 1) & (b == 0)).sum())
    n01 = int(((a == 0) & (b == 1)).sum())
    return n10, n01, binomial_two_sided_p(n10, n10 + n01)


def sign_flip_p(differences: Sequence[float], n_perm: int = 10_000, seed: int = 0) -> float:
    """Paired randomization test of mean difference 0: each question's difference keeps or flips its sign
    with probability 1/2 (exchangeable pair under H0). Two-sided Monte Carlo p = (1 + #{|T*| >= |T|}) /
    (n_perm + 1). Exact in distribution through the counts: of the c questions with difference v, a
    Binomial(c, 1/2) number flip."""
    d = np.asarray(differences, dtype=float)
    values, counts = np.unique(d[d != 0], return_counts=True)
    observed = abs(float(d.sum()))
    if values.size == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    flips = rng.binomial(counts, 0.5, size=(n_perm, values.size))
    stats = np.abs((counts - 2 * flips) @ values)
    return float((1 + (stats >= observed - 1e-9).sum()) / (n_perm + 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class PairedResult:
    n: int  # questions both runs answered
    accuracy_a: float  # percent, on the paired questions
    accuracy_b: float
    diff: float  # a - b, points
    ci_low: float
    ci_high: float
    test: str  # "mcnemar-exact" | "sign-flip"
    p: float
    n10: int | None = None  # a right, b wrong (binary scores only)
    n01: int | None = None


def paired_comparison(a: dict[str, float], b: dict[str, float], n_boot: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> PairedResult | None:
    """Method a vs method b on the questions both answered: accuracy difference (points) with a paired
    bootstrap CI, and the exact McNemar test for 0/1 scores (a sign-flip randomization test otherwise)."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    sa = np.array([a[q] for q in common], dtype=float)
    sb = np.array([b[q] for q in common], dtype=float)
    d = sa - sb
    lo, hi = bootstrap_mean_ci(d, n_boot, seed, level)
    binary = np.isin(sa, (0, 1)).all() and np.isin(sb, (0, 1)).all()
    if binary:
        n10, n01, p = mcnemar_exact(sa, sb)
        test = "mcnemar-exact"
    else:
        n10 = n01 = None
        p, test = sign_flip_p(d, n_boot, seed), "sign-flip"
    return PairedResult(len(common), 100 * sa.mean(), 100 * sb.mean(), 100 * d.mean(), 100 * lo, 100 * hi,
                        test, p, n10, n01)



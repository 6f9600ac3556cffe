"""Evidence recall: how much of a question's evidence (the patches of the objects it is about, eval/scenes.py)
reaches the LLM under a pruning method. Computed from the per-image records the methods write into
predictions.jsonl; pure functions, no model.

Two numbers per question, both shares of its evidence patches:

* **recall**: patches whose information reaches the LLM: kept as a token, or inside the merge group of a
  token that reaches the LLM (ToMe's merged tokens, VisionZip's contextual tokens, TRIM's aggregate token,
  pooling cells, SparseVLM's recycled tokens); for decoder-side methods, the image tokens kept after the
  first cut (plus, for SparseVLM, the patches merged into its recycled tokens at that cut).
* **own recall**: patches that reach the LLM as a token of their own, unmerged (kept indices; a ToMe group
  of one patch). For pure selection methods both numbers are the same; for merging methods the gap is how
  much of the evidence arrives only averaged with other patches.

What each method records (``context.record``): ``kept_indices`` (svd, random, fastervlm, divprune, trim,
vispruner, cdpruner, flowcut, visionzip's dominant patches, and the first cut of fastv / pyramiddrop /
sparsevlm / dart / tokencarve), ``merged_indices`` and ``merge_target_indices`` (tokencarve: the patches
merged into kept tokens reach the LLM; the kept tokens that received them are no longer their own),
``merge_groups`` (tome: each patch's output token), ``pool_grid`` (pooling: h x w cells, derived here),
``recycled_indices`` (sparsevlm). VisionZip assigns every non-dominant patch to a contextual token and TRIM
averages every unselected patch into its aggregate token, so for those two every patch reaches the LLM.
"""
from __future__ import annotations

from collections import Counter


def reaches_all(method: str) -> bool:
    """Whether every patch ends in some token the LLM sees under ``method`` (merged, pooled or aggregated in), as the
    method class declares (``reaches_all``)."""
    from svdprune.pruning import METHODS

    return method in METHODS and METHODS[method].reaches_all


def pool_cells(grid: tuple[int, int], side: int = 24) -> list[list[int]]:
    """The patches of each cell of adaptive pooling of a side x side grid to grid = (h, w) cells, in cell
    order (torch's adaptive pooling: cell i spans rows floor(i*side/h) .. ceil((i+1)*side/h) - 1)."""
    h, w = grid
    rows = [range(i * side // h, -(-(i + 1) * side // h)) for i in range(h)]
    cols = [range(j * side // w, -(-(j + 1) * side // w)) for j in range(w)]
    return [[r * side + c for r in rr for c in cc] for rr in rows for cc in cols]


def reached(method: str, row: dict, num_patches: int = 576) -> tuple[set[int], set[int]]:
    """(patches whose information reaches the LLM, patches that reach it as their own token) for one
    predictions.jsonl row of ``method``."""
    everything = set(range(num_patches))
    if method == "vanilla":
        return everything, everything
    if "merge_groups" in row:
        sizes = Counter(row["merge_groups"])
        return everything, {p for p, g in enumerate(row["merge_groups"]) if sizes[g] == 1}
    if "pool_grid" in row:
        side = int(round(num_patches ** 0.5))
        own = {cell[0] for cell in pool_cells(tuple(row["pool_grid"]), side) if len(cell) == 1}
        return everything, own
    if "kept_indices" not in row:
        raise ValueError(f"{method}: the row records no kept_indices / merge_groups / pool_grid")
    kept = set(row["kept_indices"])
    own = kept - set(row.get("merge_target_indices", ()))  # kept tokens that received merges (TokenCarve)
    if reaches_all(method):
        return everything, own
    return kept | set(row.get("recycled_indices", ())) | set(row.get("merged_indices", ())), own


def question_recall(evidence: list[int], reach: set[int], own: set[int]) -> tuple[float, float] | None:
    """(recall, own recall) of one question; None when it has no evidence patches."""
    if not evidence:
        return None
    return (sum(p in reach for p in evidence) / len(evidence), sum(p in own for p in evidence) / len(evidence))


def evidence_recall(method: str, rows: list[dict]) -> dict:
    """Mean recall and own recall (%) over the rows that carry evidence, overall and per question type."""
    by_type: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        value = question_recall(row.get("evidence") or [], *reached(method, row))
        if value is not None:
            by_type.setdefault(row.get("question_type") or "all", []).append(value)
    values = [v for vs in by_type.values() for v in vs]
    if not values:
        return {"recall": None, "own_recall": None, "n": 0}

    def mean(vs, i):
        return 100.0 * sum(v[i] for v in vs) / len(vs)

    return {"recall": mean(values, 0), "own_recall": mean(values, 1), "n": len(values),
            "by_type": {t: {"recall": mean(vs, 0), "own_recall": mean(vs, 1), "n": len(vs)}
                        for t, vs in sorted(by_type.items())}}

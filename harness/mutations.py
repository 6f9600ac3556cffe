"""Does the scenes CI regression catch a broken method? Reruns the regression cases of the methods a deliberate
bug touches, with the bug patched into this process only (no file is edited), and reports which cases fail
against results/scenes/regression.json, with the regression test's tolerances.
(``scripts/mutation_check.py`` is its command line.)

Mutations:

* ``reversed_top_k``: ``top_k_raster`` (svdprune/svd.py), the top-k every selection method shares, keeps the k
  *lowest* scores (the sort reversed). Touches svd, fastervlm, visionzip (its dominant tokens) and trim.
* ``fastv_first_token``: FastV ranks the image tokens by the attention the *first* prompt token (BOS) pays them
  instead of the last one.
* ``tokencarve_ascending``: TokenCarve's rankings (attention, information, fused, merge order) put the lowest first.
* ``flowcut_negated``: FlowCut's per-layer flow score is negated, so every cut keeps the least-flow patches.

A mutation should fail every one of its cases; the script exits 1 when some case still passes.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager

import torch

from harness.regression import cases, load_reference, mismatch
from harness.scenes_protocol import REGRESSION_AGREEMENT, REGRESSION_REFERENCE, REGRESSION_TOLERANCE, scenes_run


def reversed_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(scores, dim=-1, descending=False, stable=True).indices  # the bug: ascending
    return torch.sort(order[:, :k], dim=-1).values


def ascending(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, dim=-1, descending=False, stable=True).indices  # the bug: lowest first


def negated_flow_scores(original):
    return lambda *args: -original(*args)  # the bug: the least flow ranks first


def first_token_index(state) -> torch.Tensor:
    """(B, 1): each row's first real token (rows are left-padded)."""
    return (~state.padding).float().argmax(dim=-1, keepdim=True)


@contextmanager
def patched(targets: list[tuple[object, str, object]]):
    saved = [(module, name, getattr(module, name)) for module, name, _ in targets]
    try:
        for module, name, value in targets:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def mutations() -> dict[str, tuple[list[str], list[tuple[object, str, object]]]]:
    """name -> (methods it touches, (module, attribute, replacement) to patch)."""
    import baselines.fastervlm
    import baselines.fastv
    import baselines.flowcut
    import baselines.tokencarve
    import baselines.trim
    import baselines.visionzip
    import svdprune.svd

    top_k_users = [svdprune.svd, baselines.fastervlm, baselines.visionzip, baselines.trim]
    return {
        "reversed_top_k": (["svd", "fastervlm", "visionzip", "trim"],
                           [(m, "top_k_raster", reversed_top_k) for m in top_k_users]),
        "fastv_first_token": (["fastv"], [(baselines.fastv, "last_token_index", first_token_index)]),
        "tokencarve_ascending": (["tokencarve"], [(baselines.tokencarve, "descending", ascending)]),
        "flowcut_negated": (["flowcut"], [(baselines.flowcut, "flow_scores",
                                           negated_flow_scores(baselines.flowcut.flow_scores))]),
    }


def run(names: list[str]) -> int:
    """Each named mutation patched in, its methods' regression cases rerun; 1 when some case still passes."""
    table = mutations()
    reference = load_reference(REGRESSION_REFERENCE)
    survived = 0
    for name in names:
        methods, targets = table[name]
        print(f"## {name}")
        with patched(targets), tempfile.TemporaryDirectory() as scratch:
            for method, budget in cases(reference):
                if method not in methods:
                    continue
                accuracy, rows = scenes_run(method, budget, reference["limit"], scratch)
                failure = mismatch(reference, method, budget, accuracy, [r["prediction"] for r in rows],
                                   REGRESSION_TOLERANCE, REGRESSION_AGREEMENT)
                survived += failure is None
                print(f"{method} k={budget}: " + (f"CAUGHT ({failure.split(': ', 1)[1]})" if failure
                                                  else f"NOT CAUGHT (accuracy {accuracy:.2f})"), flush=True)
    return 1 if survived else 0

"""svdprune: SVD-Prune and the baselines it is compared with, for LLaVA-1.5.

Public API (imported lazily, so that ``import svdprune.errors`` stays light)::

    handle = svdprune.prune(model, "svd", budget=32)     # any transformers LlavaForConditionalGeneration
    with svdprune.pruned(model, "fastv", 64): ...
    svdprune.METHODS                                     # the method names

See svdprune/api.py.
"""
from __future__ import annotations

__all__ = ["METHODS", "PruneHandle", "prune", "pruned"]


def __getattr__(name: str):
    if name in ("prune", "pruned", "PruneHandle"):
        from . import api

        return getattr(api, name)
    if name == "METHODS":
        from .pruning import METHODS

        return sorted(METHODS)
    raise AttributeError(f"module 'svdprune' has no attribute {name!r}")

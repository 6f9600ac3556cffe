"""The loaded model a process keeps between the runs of a sweep.

Hydra's basic launcher (``python run.py -m ...`` without a cluster launcher) runs every job of a sweep in one
process, one after the other. Loading LLaVA-1.5-7B (14 GB) for each of Table 1's ~160 runs would dominate the
sweep, and even the mini model's fixed cost per run is about 3.5 s. :class:`LoadedModels` keeps the last model:
a job whose model is the same one -- the same model settings (kind, path, revision, dtype, device, the tiny
model's own settings) and the same weights (the fingerprint of the files, :mod:`harness.identity`) -- reuses
it; another model replaces it (the old one is released first, so two never sit in memory together). The
fingerprint memo is kept too, so the weight files are only ``stat``-ed once per job.

A model is reused only as it was loaded: the engine never changes a model's weights or modules (methods work
on activations; ToMe's key hook is removed after each forward), so a reused model computes what a fresh one
would (tested: a sweep's answers equal those of separate processes).
"""
from __future__ import annotations

import gc
import json

from omegaconf import OmegaConf

from svdprune.families import load_model
from svdprune.models import LoadedModel

from .identity import Sha256Memo


class LoadedModels:
    """At most one loaded model, reused while the model asked for is the same (see the module docstring)."""

    def __init__(self):
        self.memo = Sha256Memo()
        self._key: str | None = None
        self._model: LoadedModel | None = None
        self.loads = 0  # how many times a model was actually loaded (for tests and benchmarks)

    def get(self, model_cfg, fingerprint: str | None, progress: bool = True) -> LoadedModel:
        settings = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
        key = json.dumps({"settings": settings, "fingerprint": fingerprint}, sort_keys=True, default=str)
        if key != self._key or self._model is None:
            self.release()
            self._model = load_model(model_cfg, progress=progress)
            self._key = key
            self.loads += 1
        return self._model

    def release(self) -> None:
        """Drop the kept model (and return its memory: CUDA's cache too)."""
        if self._model is None:
            return
        self._model, self._key = None, None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

"""Seeded inputs of LLaVA-1.5-7B's shapes on which the official implementations were run
(scripts/official_fixtures.py records their outputs in tests/fixtures/official/; tests/test_methods_2025.py
compares ours). Each fixture stores the sha256 of its inputs, so a change of torch's generator is caught
instead of comparing different inputs."""
from __future__ import annotations

import hashlib

import torch

PATCHES, VISION_WIDTH, VISION_HEADS = 576, 1024, 16  # CLIP ViT-L/14-336 at layer -2, CLS dropped

FIXTURES = {
    # budgets: the harness's 192..16 and some the official loop runs at (T mod 4 in {0, 1}, T >= 5)
    "vispruner": {"seeds": [0, 2, 3, 4], "budgets": [192, 128, 64, 32, 16, 5, 9, 100, 257, 573],
                  "important_ratio": 0.5},
}


def vispruner_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (2, 576, 1024) float32, CLS attention to the patches (2, 16, 576): a softmax over CLS + 576)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, PATCHES, VISION_WIDTH, generator=generator)
    logits = 3.0 * torch.randn(2, VISION_HEADS, 1 + PATCHES, generator=generator)
    return features, torch.softmax(logits, dim=-1)[:, :, 1:]


def input_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()

"""Random-k: keep ``budget`` patch tokens chosen uniformly at random (a floor for every scoring method).

Not from a paper's code; a standard baseline. The LLM sees the kept tokens of layer -2 in raster order.

Seeding: ``per_image: true`` (default) draws a different subset for every image from a seed derived from
the run seed (``context.seed``) and the image's preprocessed pixels (sha256 of the float32 pixel tensor
rounded to float16; the engine hands the float32 values over as ``context.pixels_float32``, since a
bfloat16 model's pixels rounded again to float16 hash differently), so an image gets the same subset
whatever batch it is in and whatever the device/dtype; with
``per_image: false`` every image gets the same subset, drawn from the run seed alone. The draw is
``torch.randperm(N, generator=torch.Generator().manual_seed(s))[:budget]`` on the CPU, then sorted.
"""
from __future__ import annotations

import torch

from svdprune.errors import UserError
from svdprune.pruning import EncoderPruner

from ._encoder_common import (check_budget, check_runtime_budget, gather_tokens, image_seeds, stash, unstash)

NAME = "random"


def random_subset(num_tokens: int, k: int, seed: int) -> torch.Tensor:
    """k distinct indices of range(num_tokens), ascending, from ``seed`` (CPU generator)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(num_tokens, generator=generator)[:k]).values


class RandomK(EncoderPruner):
    kind = "encoder"

    def __init__(self, budget: int, per_image: bool = True):
        self.budget = check_budget(NAME, budget)
        if not isinstance(per_image, bool):
            raise UserError(f"{NAME}: method.params.per_image={per_image!r}; allowed: true, false")
        self.per_image = per_image

    def encode(self, vision_tower, pixel_values, feature_layer, context):
        features = super().encode(vision_tower, pixel_values, feature_layer, context)
        if self.per_image:
            pixels = context.pixels_float32 if context.pixels_float32 is not None else pixel_values
            seeds = image_seeds(pixels, context.seed)  # from the float32 pixels: the same draw in every dtype
        else:
            seeds = [int(context.seed)] * pixel_values.shape[0]
        stash(context, random_seeds=seeds)
        return features

    def reduce(self, features, context):
        check_runtime_budget(NAME, self.budget, features.shape[1])
        seeds = unstash(context, "random_seeds", NAME)
        keep = torch.stack([random_subset(features.shape[1], self.budget, s) for s in seeds]).to(features.device)
        context.record(kept_indices=keep.tolist())
        return gather_tokens(features, keep)

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
from svdprune.params import Flag
from svdprune.pruning import EncoderPruner, register

from ._encoder_common import check_budget, check_runtime_budget, gather_tokens, image_seeds

NAME = "random"


def random_subset(num_tokens: int, k: int, seed: int) -> torch.Tensor:
    """k distinct indices of range(num_tokens), ascending, from ``seed`` (CPU generator)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(num_tokens, generator=generator)[:k]).values


@register
class RandomK(EncoderPruner):
    name, label, in_paper, table_row = "random", "Random-k", False, 100
    kind = "encoder"

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"per_image": Flag(default=True)}

    def __init__(self, budget: int, per_image: bool = True):
        self.budget = check_budget(NAME, budget, high=None)  # the model's own token count: check() and reduce()
        if not isinstance(per_image, bool):
            raise UserError(f"{NAME}: method.params.per_image={per_image!r}; allowed: true, false")
        self.per_image = per_image

    def check(self, lm) -> None:
        check_runtime_budget(NAME, self.budget, lm.num_patches)

    def seeds(self, context, batch: int) -> list[int]:
        """One seed per image of the batch. Per image: from the float32 pixels the engine put on the context (the
        same draw in every dtype, whichever model family preprocessed them)."""
        if not self.per_image:
            return [int(context.seed)] * batch
        if context.pixels_float32 is None:
            raise ValueError(f"{NAME}: per_image seeds need context.pixels_float32 (set by the model family's front)")
        return image_seeds(context.pixels_float32, context.seed)

    def reduce(self, features, context):
        check_runtime_budget(NAME, self.budget, features.shape[1])
        seeds = self.seeds(context, features.shape[0])
        keep = torch.stack([random_subset(features.shape[1], self.budget, s) for s in seeds]).to(features.device)
        context.record(kept_indices=keep.tolist())
        return gather_tokens(features, keep)

"""HoloV: the budget spread holistically over chunks of the image sequence (Zou et al., NeurIPS 2025).

Reference: obananas/HoloV at 1d2e65e961e698ff0e7d5bb4625489177dd9deba, ``llava/model/utils.py`` lines 22-154
(``HoloV``), ``llava/model/llava_arch.py`` lines 141-145 (``encode_images``: the CLS attention row of layer -2,
head mean, ``.float()``; the features **after** ``mm_projector``) and line 239 (the call, ``num_patches=16``,
``new_image_token_num=64`` hard-coded: the budget here), ``llava/model/multimodal_encoder/clip_encoder.py``
lines 35-46 (``attentions[-2][:, :, 0, 1:]``). Training-free.

Per image (E = the 576 projected tokens, a = their CLS attention, k = budget):

1. Cut the raster sequence into 16 contiguous chunks (36 tokens each for 576: 1.5 rows of the 24 x 24 grid,
   not 2-D crops; with a remainder the first chunks get one more).
2. Chunk score: with Ê = E / (|E| + 1e-6), S = Ê Êᵀ with a zeroed diagonal, per token the mean ``μ = ΣS / (n-1)``
   and the spread ``v = Σ(S - μ)² / (n-1)`` over the whole row (the zeroed diagonal included, as released);
   token score ``1000 a + 0.09 v · mean|1000 a| / (mean|v| + 1e-6)``; chunk score = mean token score.
3. Allocation: ``w = score / (Σ score + 1e-6)``, ``floor(w k)`` tokens per chunk, the remainder one each to the
   chunks of largest w. A chunk allocated at least its size keeps all its tokens (raster order); otherwise its
   top tokens by attention (highest first).
4. The chunks' tokens concatenated in chunk order; the released code **pads with zero embeddings** (after the
   projector) when the chunks could not take their allocation, and truncates if more. The engine zeroes those
   slots after projecting (``PruneContext.zero_slots``), so the LLM sees exactly the released sequence.

Differences on purpose: scores and similarities in float32 (released: the projected tokens in fp16; the
attention in float32 from fp16 probabilities); the CLS row is recomputed from the layer's LayerNorm and q/k
(SDPA stays on); ``topk`` ties go to the lower index (released: unspecified). The kept tokens are handed to the
engine before the projector (the projector acts per token: the same embeddings).

The committed fixture ``tests/fixtures/official/holov.json`` holds the released ``HoloV`` function's output on
seeded inputs of LLaVA-1.5-7B's shapes; ``tests/test_methods_2025.py`` requires ours to equal it.

Not on Qwen2.5-VL: it reads CLIP's [CLS] attention (``needs``); the authors' Qwen version is not ported here yet.
"""
from __future__ import annotations

import torch

from svdprune.errors import UserError
from svdprune.params import Integer, Number
from svdprune.pruning import EncoderPruner, register

from ._encoder_common import (check_budget, check_int, check_runtime_budget, cls_patch_attention, gather_tokens,
                              producing_layer, stash, unstash, vision_layers)

NAME = "holov"
EPS = 1e-6


def chunk_bounds(n: int, chunks: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) chunks of range(n); the first ``n % chunks`` get one token more; empty ones dropped."""
    size, extra = divmod(n, chunks)
    bounds, start = [], 0
    for c in range(chunks):
        end = start + size + (1 if c < extra else 0)
        if end > start:
            bounds.append((start, end))
        start = end
    return bounds


def chunk_score(tokens: torch.Tensor, attention: torch.Tensor, alpha: float) -> torch.Tensor:
    """tokens: (n, d); attention: (n,) -> scalar HoloV score of one chunk (float32)."""
    n = tokens.shape[0]
    if n <= 1:
        return attention.mean()
    x = tokens.float()
    normalized = x / (x.norm(dim=1, keepdim=True) + EPS)
    similarity = (normalized @ normalized.t()) * (1 - torch.eye(n, device=x.device))
    mean = similarity.sum(dim=1) / (n - 1)
    spread = ((similarity - mean[:, None]) ** 2).sum(dim=1) / (n - 1)
    scaled = attention * 1e3
    spread = spread * (scaled.abs().mean() / (spread.abs().mean() + EPS))
    return (scaled + alpha * spread).mean()


def allocate(scores: torch.Tensor, budget: int) -> list[int]:
    """(C,) chunk scores -> tokens per chunk: floor of the budget's share, the remainder to the largest shares."""
    weights = scores / (scores.sum() + EPS)
    allocated = (weights * budget).floor().long()
    remaining = budget - int(allocated.sum())
    if remaining > 0:
        order = torch.sort(weights, descending=True, stable=True).indices[:min(remaining, len(weights))]
        allocated[order] += 1
    return allocated.tolist()


def holov_select(tokens: torch.Tensor, attention: torch.Tensor, budget: int, chunks: int = 16,
                 alpha: float = 0.09) -> list[int]:
    """One image: tokens (N, d) projected, attention (N,) -> the kept token indices in the released output order
    (at most ``budget``; the released code fills the rest of the budget with zero embeddings)."""
    bounds = chunk_bounds(tokens.shape[0], chunks)
    scores = torch.stack([chunk_score(tokens[s:e], attention[s:e], alpha) for s, e in bounds])
    kept = []
    for (start, end), count in zip(bounds, allocate(scores, budget)):
        if count <= 0:
            continue
        if count >= end - start:
            kept += list(range(start, end))
        else:
            top = torch.sort(attention[start:end], descending=True, stable=True).indices[:count]
            kept += [start + i for i in top.tolist()]
    return kept[:budget]


@register
class HoloV(EncoderPruner):
    """Spreads the budget over 16 chunks by attention + similarity spread; per chunk its top-attention tokens."""

    name, label, in_paper, table_row = "holov", "HoloV", False, 80
    needs = frozenset({"cls_attention"})

    kind = "encoder"

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"chunks": Integer(1, 576, default=16), "alpha": Number(0, default=0.09)}

    def __init__(self, budget: int, chunks: int = 16, alpha: float = 0.09):
        self.budget = check_budget(NAME, budget)
        self.chunks = check_int(NAME, "method.params.chunks", chunks, 1, 576)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            raise UserError(f"{NAME}: method.params.alpha={alpha!r}; allowed: a number >= 0")
        self.alpha = float(alpha)

    def describe(self) -> dict:
        return {"chunks": self.chunks, "alpha": self.alpha}

    def check(self, lm) -> None:
        producing_layer(lm.feature_layer, len(vision_layers(lm.vision_tower)))
        check_runtime_budget(NAME, self.budget, lm.num_patches)

    @torch.no_grad()
    def encode(self, vision_tower, pixel_values, feature_layer, context):
        features = super().encode(vision_tower, pixel_values, feature_layer, context)
        check_runtime_budget(NAME, self.budget, features.shape[1])
        stash(context, holov_attention=cls_patch_attention(vision_tower, feature_layer, context))  # (B, N)
        return features

    @torch.no_grad()
    def reduce(self, features, context):
        attention = unstash(context, "holov_attention", NAME)
        tokens = context.project(features)  # (B, N, d) what the released code scores
        batch = features.shape[0]
        keep = torch.zeros(batch, self.budget, dtype=torch.long, device=features.device)
        zero = torch.zeros(batch, self.budget, dtype=torch.bool, device=features.device)
        records = []
        for row in range(batch):
            kept = holov_select(tokens[row], attention[row], self.budget, self.chunks, self.alpha)
            records.append(kept)
            keep[row, :len(kept)] = torch.tensor(kept, dtype=torch.long)
            zero[row, len(kept):] = True  # released: zero embeddings after the kept tokens
        context.record(kept_indices=records)
        if bool(zero.any()):
            context.zero_slots = zero
        return gather_tokens(features, keep)

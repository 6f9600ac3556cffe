"""DivPrune: diversity-based visual token pruning (Alvar et al., CVPR 2025).

Reference: vbdi/divprune, ``LLaVA/llava/model/llava_arch.py`` (``LlavaMetaForCausalLM.DivPrune``,
``pairwise_cosine_similarity`` and the call in ``prepare_inputs_labels_for_multimodal``). Training-free.

A max-min diversity (farthest point) selection on the **projected** image tokens (the LLM-input embeddings
of the 576 patches, i.e. after the projector, ``context.project``):

* distance d(i, j) = 1 - cosine(e_i, e_j);
* first pick: the token whose nearest neighbour is farthest -- per token the second smallest value of
  its distance column (the smallest is its distance to itself), argmax;
* every next pick: the token whose minimum distance to the picked set is largest (argmax; first index on
  ties);
* the picked indices are sorted back into raster order.

The LLM receives the selected tokens' pre-projector features (the engine projects them again; the
projector acts per token, so the embeddings are identical to the official selected embeddings).

Differences on purpose: distances are computed in float32 (the official code uses the model dtype, fp16);
already-picked tokens are excluded explicitly from later picks (the official code relies on their
distance to themselves being ~0, which only fails for duplicate tokens), so the result always holds
``budget`` distinct tokens. Batched over images (the official code is batch size 1).

ModelTC/llmc (LightCompress) at 05eedff, ``llmc/compression/token_reduction/divprune.py`` (read, not run): the
authors' selection on the LLM-input embeddings (``divprune``: the same first pick and max-min steps, argmax ties to
the first index, the model dtype), kept slots sorted back, original LLaVA code base only; its ``rate`` is the share
**kept** (``round(rate * 576)`` tokens), the opposite of its FastV's and FasterVLM's ``rate``. Same kept set as
ours except where fp16 rounding or a duplicate token (see above) makes the two differ.
"""
from __future__ import annotations

import torch

from svdprune.pruning import EncoderPruner, register

from ._encoder_common import check_budget, check_runtime_budget, gather_tokens

NAME = "divprune"


def cosine_distance(x: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N, N) 1 - cosine similarity, float32."""
    x = x.float()
    x = x / x.norm(dim=-1, keepdim=True)
    return 1.0 - x @ x.transpose(1, 2)


def max_min_select(distance: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's greedy selection on a (B, N, N) distance matrix -> (B, k) picks in selection order."""
    batch, n, _ = distance.shape
    picks = torch.empty(batch, k, dtype=torch.long, device=distance.device)
    rows = torch.arange(batch, device=distance.device)
    # first pick: second smallest value of every column = distance to the nearest neighbour
    nearest = torch.topk(distance, 2, dim=1, largest=False).values[:, 1]  # (B, N)
    picks[:, 0] = nearest.argmax(dim=-1)
    min_dist = distance[rows, picks[:, 0]].clone()  # (B, N): min distance of each column to the picked rows
    picked = torch.zeros(batch, n, dtype=torch.bool, device=distance.device)
    picked[rows, picks[:, 0]] = True
    for i in range(1, k):
        scores = min_dist.masked_fill(picked, -torch.inf)
        picks[:, i] = scores.argmax(dim=-1)
        picked[rows, picks[:, i]] = True
        min_dist = torch.minimum(min_dist, distance[rows, picks[:, i]])
    return picks


@register
class DivPrune(EncoderPruner):
    """Keeps a max-min diverse set of ``budget`` tokens (in projected space), raster order."""

    name, label, in_paper, table_row = "divprune", "DivPrune", False, 50

    kind = "encoder"

    def __init__(self, budget: int):
        self.budget = check_budget(NAME, budget, high=None)  # the model's own token count: check() and reduce()

    def check(self, lm) -> None:
        check_runtime_budget(NAME, self.budget, lm.num_patches)

    @torch.no_grad()
    def reduce(self, features, context):
        check_runtime_budget(NAME, self.budget, features.shape[1])
        embeddings = features if context.features_are_llm_inputs else context.project(features)  # (B, N, d)
        picks = max_min_select(cosine_distance(embeddings), self.budget)
        keep = torch.sort(picks, dim=-1).values
        context.record(kept_indices=keep.tolist())
        return gather_tokens(features, keep)

"""VisPruner: important tokens by [CLS] attention, then diverse tokens by removing duplicates (Zhang et al., ICCV 2025).

Reference: Theia-4869/VisPruner at aefa01adc7c7ce6334e880c88225e90cede760d1,
``llava/model/llava_arch.py`` lines 141-186 (``LlavaMetaForCausalLM.encode_images``) and
``llava/model/multimodal_encoder/clip_encoder.py`` lines 35-52 (``feature_select``: ``attentions[-2][:, :, 0, 1:]``,
the CLS query's post-softmax row of the layer that produces ``hidden_states[-2]``). Defaults from
``llava/eval/model_vqa_loader.py`` (``--important_ratio 0.5``). Training-free. The successor of FasterVLM.

For a budget T and ``important_ratio`` r, per image (X = the 576 layer -2 patch features, before the projector):

1. **Important**: ``T_imp = int(T * r)`` patches with the highest CLS attention, averaged over heads; all patches
   are ranked by it (descending) and the ranking's tail is the *residual* list, in that ranking order.
2. **Diverse**: ``T_div = T - T_imp``. Repeat while the residual list is longer than ``T_div``: split the list
   alternately into ``a`` (even places) and ``b`` (odd places); score each ``a`` token by its highest cosine
   similarity (of the normalised features X) to any ``b`` token; drop the ``r = min(8, R - T_div)`` ``a`` tokens
   with the highest scores; the new list is the remaining ``a`` tokens in descending score order followed by
   all of ``b``. The ``T_div`` survivors are the diverse tokens.
3. The LLM receives the important and diverse tokens in raster order (the official code masks the projected
   sequence; the projector acts per token, so projecting the kept tokens gives the same embeddings).

Differences on purpose, none of which changes a selection the official code makes without ties:

* Scores and similarities in float32 (official: the model dtype, fp16); the CLS row is recomputed from the
  layer's LayerNorm and q/k projections (SDPA stays on; the official code turns on ``output_attentions``).
* Both rankings are stable sorts (ties to the lower place); ``argsort`` leaves ties unspecified.
* **Budgets the released code cannot run.** The official loop indexes the ``a`` half with ``R // 2`` places, so
  it raises as soon as the residual list has odd length (with r = 0.5: every budget T with ``T mod 4`` in
  {2, 3}, e.g. 30 or 191) and for T <= 4. Here ``a`` is every even place (``ceil(R / 2)`` tokens) and
  ``r = min(8, R - T_div, len(a))``: identical wherever the official code runs (checked for every budget 1..576
  on random LLaVA-1.5-7B-shaped inputs), and exactly T tokens elsewhere. The paper's budgets 192/128/64 (and
  the harness's 32/16) are all ones the official code runs.

Numerics: on images with many identical patches (uniform backgrounds, padding) the duplicate-removal scores
hold exact ties and near-ties, so the diverse tokens follow the last bits of the features: the vision tower
run at another batch size (another BLAS blocking) can change which of those equal-looking tokens survive
(seen on the mini model's easy-VQA images; the answers were the same). The official code shares this.

The committed fixture ``tests/fixtures/official/vispruner.json`` holds the official code's kept indices on
seeded inputs of LLaVA-1.5-7B's shapes (``tests/test_methods_2025.py`` requires ours to equal them).

An image of several CLIP views (LLaVA-NeXT's AnyRes) -- the authors' LLaVA-1.6 code (Theia-4869/VisPruner aefa01a,
``encode_images`` and ``prepare_inputs_labels_for_multimodal``): the same selection on every view (T per view,
int(T * r) important and the rest diverse), and the views merged ``spatial`` without unpadding or newline tokens
(their code strips ``_unpad`` from ``mm_patch_merge_type``). This file selects per view; the family merges (the
``view_cls_attention`` capability, svdprune/families/).
"""
from __future__ import annotations

import torch

from svdprune.errors import UserError
from svdprune.params import Number
from svdprune.pruning import EncoderPruner, register

from ._encoder_common import (check_budget, check_runtime_budget, cls_patch_attention, gather_tokens,
                              producing_layer, stash, unstash, vision_layers)

NAME = "vispruner"
MAX_DROP_PER_STEP = 8  # the official loop removes at most 8 duplicates per iteration


def split_budget(budget: int, important_ratio: float) -> tuple[int, int]:
    """T -> (T_imp, T_div) = (int(T * r), T - int(T * r)), as the official code computes them."""
    important = int(budget * important_ratio)
    return important, budget - important


def remove_duplicates(normalized: torch.Tensor, residual: torch.Tensor, keep: int) -> torch.Tensor:
    """VisPruner's iterative duplicate removal.

    normalized: (B, N, C) L2-normalised features; residual: (B, R) candidate indices in ranking order;
    keep: T_div. Returns (B, T_div) the surviving indices (order as the loop leaves them).
    """
    batch = normalized.shape[0]
    rows = torch.arange(batch, device=normalized.device)[:, None]
    while residual.shape[1] > keep:
        length = residual.shape[1]
        a_index, b_index = residual[:, ::2], residual[:, 1::2]  # (B, ceil(R/2)), (B, floor(R/2))
        drop = min(MAX_DROP_PER_STEP, length - keep, a_index.shape[1])
        a, b = normalized[rows, a_index], normalized[rows, b_index]  # (B, |a|, C), (B, |b|, C)
        if b.shape[1] == 0:  # one candidate left in a (only when keep = 0, which the callers exclude)
            break
        best = (a @ b.transpose(-1, -2)).max(dim=-1).values  # (B, |a|): closest b for every a
        order = torch.sort(best, dim=-1, descending=True, stable=True).indices  # most duplicated first
        distinct = order[:, drop:]  # (B, |a| - drop), descending score order
        residual = torch.cat([torch.gather(a_index, 1, distinct), b_index], dim=-1)
    return residual


def vispruner_select(features: torch.Tensor, cls_scores: torch.Tensor, important: int, diverse: int) -> torch.Tensor:
    """features: (B, N, C) patch features; cls_scores: (B, N) head-mean CLS attention.

    Returns (B, important + diverse) kept patch indices, ascending (raster order).
    """
    ranking = torch.sort(cls_scores.float(), dim=-1, descending=True, stable=True).indices  # (B, N)
    important_index, residual = ranking[:, :important], ranking[:, important:]
    if diverse > 0:
        x = features.float()
        normalized = x / x.norm(dim=-1, keepdim=True)
        residual = remove_duplicates(normalized, residual, diverse)
        selected = torch.cat([important_index, residual], dim=-1)
    else:
        selected = important_index
    return torch.sort(selected, dim=-1).values


@register
class VisPruner(EncoderPruner):
    """Keeps int(T * r) patches by CLS attention and T - int(T * r) diverse ones; raster order."""

    name, label, in_paper, table_row = "vispruner", "VisPruner", False, 60
    needs = frozenset({"view_cls_attention"})  # [CLS] attention per CLIP view (svdprune/families/)

    kind = "encoder"

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"important_ratio": Number(0, 1, default=0.5)}

    def __init__(self, budget: int, important_ratio: float = 0.5):
        self.budget = check_budget(NAME, budget, high=None)  # the model's own count: check() and encode()
        if isinstance(important_ratio, bool) or not isinstance(important_ratio, (int, float)) \
                or not 0 <= important_ratio <= 1:
            raise UserError(f"{NAME}: method.params.important_ratio={important_ratio!r}; allowed: a number in [0, 1]")
        self.important_ratio = float(important_ratio)
        self.important, self.diverse = split_budget(self.budget, self.important_ratio)

    def with_budget(self, budget: int) -> "VisPruner":
        clone = super().with_budget(budget)
        clone.important, clone.diverse = split_budget(budget, self.important_ratio)
        return clone

    def describe(self) -> dict:
        return {"important": self.important, "diverse": self.diverse}

    def check(self, lm) -> None:
        producing_layer(lm.feature_layer, len(vision_layers(lm.vision_tower)))
        check_runtime_budget(NAME, self.budget, lm.num_patches)

    @torch.no_grad()
    def encode(self, vision_tower, pixel_values, feature_layer, context):
        features = super().encode(vision_tower, pixel_values, feature_layer, context)
        check_runtime_budget(NAME, self.budget, features.shape[1])
        stash(context, vispruner_scores=cls_patch_attention(vision_tower, feature_layer, context))  # (B, N)
        return features

    def reduce(self, features, context):
        scores = unstash(context, "vispruner_scores", NAME)
        keep = vispruner_select(features, scores, self.important, self.diverse)  # (B, T) ascending
        context.record(kept_indices=keep.tolist())
        return gather_tokens(features, keep)

"""FasterVLM: [CLS]-attention-guided visual token pruning before the projector (Zhang et al., 2024).

Reference: Theia-4869/FasterVLM, ``llava/model/multimodal_encoder/clip_encoder.py``
(``CLIPVisionTower.feature_select``: ``attentions[select_layer][:, :, 0, 1:]``) and ``llava/model/llava_arch.py``
(``LlavaMetaForCausalLM.encode_images``: ``image_attentions.mean(dim=1)``, ``topk``, an index mask applied
to the projected features, which keeps raster order). Training-free.

Score of patch j = the CLS query's **post-softmax** attention to j in the layer that produces
``hidden_states[-2]`` (index 22 on CLIP-L/336), **averaged over heads**. Keep the top ``budget`` patches
and feed them to the projector in raster order. The official code projects all 576 tokens and then
masks; the projector acts on each token alone, so pruning first gives the same output (and saves the
projector cost).

The CLS attention row is recomputed from that layer's LayerNorm and q/k projections in float32, so the
vision tower keeps SDPA (the official code runs eager attention with ``output_attentions=True``; tests
check our row against eager). Ties go to the lower index (``torch.topk`` leaves them unspecified).

ModelTC/llmc (LightCompress) at 05eedff, ``llmc/compression/token_reduction/fastervlm.py`` (read, not run): the
same scores (``attentions[select_layer][:, :, 0, 1:]`` head mean, cast to the feature dtype first) and ``topk``;
the budget is a rate (k = ``round(576 * (1 - rate))``). With the original LLaVA code base it shortens the image
features as the official code does (k image positions, contiguous position ids, as here). With llava-hf models it
instead removes the dropped tokens from ``inputs_embeds`` and gathers ``position_ids`` / ``cache_position`` at
the kept slots, so the kept image tokens keep their original, gapped positions: the same kept set, but other LLM
inputs than the authors' code (and ours) give, so llava-hf numbers from llmc are not the FasterVLM of the paper.

An image of several CLIP views (LLaVA-NeXT's AnyRes: a base view and tiles) -- the authors' LLaVA-1.6 code
(Theia-4869/FasterVLM f5d5f12, ``LlavaMetaForCausalLM.encode_images`` and ``prepare_inputs_labels_for_multimodal``):
the same selection on every view, each keeping ``visual_token_num`` tokens by its own [CLS] attention, and the views
merged ``spatial`` without unpadding or newline tokens (their code sets ``mm_patch_merge_type = 'spatial'``). This
file selects per view; the family merges (the ``view_cls_attention`` capability, svdprune/families/).
"""
from __future__ import annotations

import torch

from svdprune.pruning import EncoderPruner, register

from ._encoder_common import (check_budget, check_runtime_budget, cls_patch_attention, gather_tokens,
                              producing_layer, stash, top_k_raster, unstash, vision_layers)

NAME = "fastervlm"


@register
class FasterVLM(EncoderPruner):
    """Keeps the ``budget`` patches the CLS token attends to most (layer -2, head mean), raster order."""

    name, label, in_paper, table_row = "fastervlm", "FasterVLM", False, 40
    needs = frozenset({"view_cls_attention"})  # [CLS] attention per CLIP view (svdprune/families/)

    kind = "encoder"

    def __init__(self, budget: int):
        self.budget = check_budget(NAME, budget, high=None)  # the model's own count: check() and encode()

    def check(self, lm) -> None:
        producing_layer(lm.feature_layer, len(vision_layers(lm.vision_tower)))
        check_runtime_budget(NAME, self.budget, lm.num_patches)

    @torch.no_grad()
    def encode(self, vision_tower, pixel_values, feature_layer, context):
        features = super().encode(vision_tower, pixel_values, feature_layer, context)
        check_runtime_budget(NAME, self.budget, features.shape[1])
        stash(context, fastervlm_scores=cls_patch_attention(vision_tower, feature_layer, context))  # (B, N)
        return features

    def reduce(self, features, context):
        keep = top_k_raster(unstash(context, "fastervlm_scores", NAME), self.budget)  # (B, k) ascending
        context.record(kept_indices=keep.tolist())
        return gather_tokens(features, keep)

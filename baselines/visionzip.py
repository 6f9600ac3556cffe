"""VisionZip: dominant + contextual visual tokens (Yang et al., CVPR 2025).

Reference: dvlab-research/VisionZip, ``visionzip/clip_encoder.py`` (``CLIPVisionTower_VisionZip.forward``),
``visionzip/utils.py`` (``CLIPAttention_forward``: metric = raw key states averaged over heads;
``apply_info``: the metric is taken at layer index 22), ``visionzip/main.py`` (``visionzip(model, dominant,
contextual)`` passes ``dominant - 1`` patches). Training-free.

Everything comes from the layer that produces ``hidden_states[-2]`` (index 22 on CLIP-L/336):

1. **Dominant**: the CLS query's post-softmax attention to the patches, summed over heads; the top ``D - 1``
   patches plus the CLS token itself are the ``D`` dominant tokens, in index order (CLS first). The CLS
   attention row is recomputed from that layer's LayerNorm + q/k projections (SDPA stays on for the tower;
   tests check it against eager attention).
2. **Contextual**: the other ``N = 576 - (D - 1)`` patches, in index order. ``C`` targets at uniform stride
   ``step = max(1, N // C)`` (the first ``C`` of ``range(0, N, step)``); every other remaining token goes to
   its most similar target by cosine of the metric (the layer's ``k_proj`` output averaged over heads,
   unscaled; first target on ties); a contextual token is the target's own feature **plus** the mean of
   its members' features (a target without members stays itself).
3. Output ``[CLS, dominant patches, contextual]`` = ``budget`` tokens of layer -2 (the CLS row goes through
   the projector like the rest, as in the official code).

Splits ``budget -> [D, C]`` (D counts the CLS token) come from ``splits`` in the config: the official ones
192 = 162 + 30, 128 = 108 + 20, 64 = 54 + 10, and (**Decision**) 32 = 27 + 5, 16 = 13 + 3. Any other
budget uses ``C = ceil(budget * contextual_ratio)`` with ``contextual_ratio = 5/32`` (the official splits'
ratio; it also gives 30 / 20 / 10 / 5 / 3 above) and ``D = budget - C``. VisionZip needs ``D >= 1`` and
``C >= 1``: budget >= 2.

Differences on purpose: scores and merging run in float32 (the official code runs fp16 end to end);
dominant ties go to the lower index (``torch.topk`` leaves them unspecified).

ModelTC/llmc (LightCompress) at 05eedff, ``llmc/compression/token_reduction/visionzip.py`` (read, not run): the
same dominant scores (CLS attention summed over heads at layer -2), the same k_proj metric, stride targets and
"target + mean of members" contextual tokens. It differs in the count: ``topk(dominant)`` patches **plus** CLS, so
its shipped config (``dominant: 191``, ``contextual: 30``) gives 191 + 1 + 30 = 222 tokens for what it labels 192,
where the authors' ``visionzip(model, 162, 30)`` gives 192 (their ``main.py`` passes ``dominant - 1``), as here.
"""
from __future__ import annotations

import math

import torch

from svdprune.errors import UserError
from svdprune.params import Number, Table
from svdprune.pruning import EncoderPruner, register

from ._encoder_common import (LLAVA15_PATCHES, check_budget, check_runtime_budget, cls_attention_and_keys,
                              gather_tokens, producing_layer, stash, top_k_raster, unstash, vision_layers)

NAME = "visionzip"
OFFICIAL_SPLITS = {192: (162, 30), 128: (108, 20), 64: (54, 10), 32: (27, 5), 16: (13, 3)}


def split_for(budget: int, splits: dict[int, tuple[int, int]], contextual_ratio: float) -> tuple[int, int]:
    if budget in splits:
        return splits[budget]
    contextual = max(1, math.ceil(budget * contextual_ratio - 1e-9))
    return budget - contextual, contextual


def visionzip_select(hidden: torch.Tensor, cls_attn: torch.Tensor, metric: torch.Tensor, dominant: int,
                     contextual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The VisionZip tokens of a batch.

    hidden: (B, 1 + P, D) layer output incl. CLS; cls_attn: (B, H, 1 + P) CLS attention row per head;
    metric: (B, 1 + P, C) keys averaged over heads; dominant: D (incl. CLS); contextual: C.
    Returns (tokens (B, D + C, D_model) in hidden's dtype, dominant patch indices (B, D - 1) 0-based, ascending).
    """
    batch, tokens, width = hidden.shape
    patches = tokens - 1
    score = cls_attn[:, :, 1:].sum(dim=1)  # (B, P): summed over heads
    dominant_patches = top_k_raster(score, dominant - 1)  # (B, D - 1), ascending
    keep = torch.zeros(batch, patches, dtype=torch.bool, device=hidden.device)
    keep.scatter_(1, dominant_patches, True)
    x = hidden.float()
    dominant_tokens = torch.cat([x[:, :1], gather_tokens(x[:, 1:], dominant_patches)], dim=1)

    rest = (~keep).nonzero()[:, 1].view(batch, patches - (dominant - 1))  # remaining patches, ascending
    rest_hidden = gather_tokens(x[:, 1:], rest)  # (B, N, D)
    rest_metric = gather_tokens(metric[:, 1:].float(), rest)
    rest_metric = rest_metric / rest_metric.norm(dim=-1, keepdim=True)
    n = rest.shape[1]
    step = max(1, n // contextual)
    targets = torch.arange(0, n, step, device=hidden.device)[:contextual]
    if targets.numel() != contextual:
        raise ValueError(f"{n} remaining tokens cannot give {contextual} contextual targets")
    is_target = torch.zeros(n, dtype=torch.bool, device=hidden.device)
    is_target[targets] = True
    members = (~is_target).nonzero()[:, 0]
    similarity = rest_metric[:, members] @ rest_metric[:, targets].transpose(1, 2)  # (B, M, C)
    assign = similarity.argmax(dim=-1)  # (B, M) first maximum on ties
    one_hot = torch.zeros(batch, members.numel(), contextual, device=hidden.device)
    one_hot.scatter_(2, assign[..., None], 1.0)
    counts = one_hot.sum(dim=1).clamp_min(1.0)[..., None]  # (B, C, 1)
    aggregated = one_hot.transpose(1, 2) @ rest_hidden[:, members] / counts
    contextual_tokens = rest_hidden[:, targets] + aggregated
    out = torch.cat([dominant_tokens, contextual_tokens], dim=1).to(hidden.dtype)
    return out, dominant_patches


@register
class VisionZip(EncoderPruner):
    """Keeps D dominant tokens (CLS included) and C contextual tokens; budget = D + C."""

    name, label, in_paper, table_row = "visionzip", "VisionZip", True, 20
    needs = frozenset({"cls_attention"})
    reaches_all = True

    kind = "encoder"

    #: declared parameters (svdprune/params.py): checked at every entry point before the method is built
    PARAMS = {"splits": Table(nullable=True, default={k: list(v) for k, v in OFFICIAL_SPLITS.items()}),
              "contextual_ratio": Number(0, 1, open_low=True, open_high=True, default=0.15625)}

    def __init__(self, budget: int, splits: dict | None = None, contextual_ratio: float = 5 / 32):
        self.budget = check_budget(NAME, budget, low=2)
        table = {}
        for key, value in (OFFICIAL_SPLITS if splits is None else splits).items():
            try:
                k = int(key)
                d, c = (int(v) for v in value)
            except (TypeError, ValueError):
                raise UserError(f"{NAME}: method.params.splits[{key!r}]={value!r}; allowed: "
                                "budget: [dominant, contextual] integers") from None
            if d < 1 or c < 1 or d + c != k:
                raise UserError(f"{NAME}: method.params.splits[{key}]=[{d}, {c}]; allowed: dominant >= 1 "
                                f"(CLS included), contextual >= 1, dominant + contextual = {k}")
            table[k] = (d, c)
        if isinstance(contextual_ratio, bool) or not isinstance(contextual_ratio, (int, float)) \
                or not 0 < contextual_ratio < 1:
            raise UserError(f"{NAME}: method.params.contextual_ratio={contextual_ratio!r}; allowed: a number in (0, 1)")
        self.dominant, self.contextual = split_for(self.budget, table, float(contextual_ratio))
        if self.dominant < 1:
            raise UserError(f"{NAME}: budget={budget} leaves no dominant token (CLS) next to "
                            f"{self.contextual} contextual ones; allowed: budget >= 2 or a splits entry")
        if self.dominant - 1 + self.contextual > LLAVA15_PATCHES:
            raise UserError(f"{NAME}: budget={budget} needs {self.dominant - 1} + {self.contextual} patches; "
                            f"allowed: at most {LLAVA15_PATCHES}")

    def describe(self) -> dict:
        return {"dominant": self.dominant, "contextual": self.contextual}

    def check(self, lm) -> None:
        producing_layer(lm.feature_layer, len(vision_layers(lm.vision_tower)))
        check_runtime_budget(NAME, self.dominant - 1 + self.contextual, lm.num_patches)

    @torch.no_grad()
    def encode(self, vision_tower, pixel_values, feature_layer, context):
        features = super().encode(vision_tower, pixel_values, feature_layer, context)
        check_runtime_budget(NAME, self.dominant - 1 + self.contextual, features.shape[1])
        layers = vision_layers(vision_tower)
        index = producing_layer(feature_layer, len(layers))
        states = context.vision_hidden_states
        cls_attn, metric = cls_attention_and_keys(layers[index], states[index])  # input of that layer
        stash(context, visionzip=(states[index + 1][:, :1], cls_attn, metric))  # CLS row of layer -2
        return features

    def reduce(self, features, context):
        cls_token, cls_attn, metric = unstash(context, "visionzip", NAME)
        hidden = torch.cat([cls_token.to(features.dtype), features], dim=1)  # (B, 1 + N, D)
        out, dominant_patches = visionzip_select(hidden, cls_attn, metric, self.dominant, self.contextual)
        context.record(kept_indices=dominant_patches.tolist())
        return out

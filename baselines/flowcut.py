"""FlowCut: information flow through [CLS] decides, layer by layer inside CLIP, which patches to drop (Tong et
al., 2025), encoder side.

Reference: TungChintao/FlowCut at a2ecd247cb3c605773ec317a0c246425b47abdbe, ``flowcut/modeling_clip_flowcut.py``
(``CLIPAttention_forward`` lines 14-97, ``CLIPEncoderLayer_forward`` lines 100-171, ``CLIPEncoder_forward`` lines
174-247, ``apply_flowcut_config`` lines 296-298), ``flowcut/utils_flowcut.py`` (``compute_score``,
``adaptive_prune_ratio``) and ``flowcut/main.py`` (``flowcut(model, target_num)``: LLaVA-1.5's ``pad`` aspect ratio
and ``patch`` features give ``target = budget + 1``, one slot for CLS). Training-free.

With S = the layer that produces LLaVA's features (``select_layer``: 22 of CLIP-L's 24, i.e. ``len(layers) - 2``)
and target = budget + 1 tokens, after every encoder layer i (attention and MLP) while more than target tokens are
left, on that layer's attention (per image):

1. **Scores**: ``cls`` = the CLS query's post-softmax attention to each patch (head mean);
   ``semantic`` = per head, the softmax over tokens of the **unscaled** dot product of the CLS token's value with
   each token's value (head mean); ``v`` = the value states averaged over heads. score = (cls / sum(cls) +
   semantic / sum(semantic)) * ||v||_1 (patches only; the sums over the patches).
2. **Flow**: the cumulative score is the first layer's score, then ``0.5 * cumulative + 0.5 * score``.
3. **Cut** at the layers with an even number of remaining layers ``rpl = S - i - 1`` (i = 1, 3, ..., 21): with N
   patches left, H the entropy of ``cls / sum(cls)`` over them, ``r = round((N - budget) / sqrt(rpl) *
   (1 - (H / log N)^2))`` patches go (a flat CLS attention prunes little, a peaked one much), at ``rpl = 0`` all but
   ``budget``; never fewer than ``budget`` stay. The kept patches are the top cumulative scores, in their original
   order, and CLS stays; the next layers see only them.
4. LLaVA's features are ``hidden_states[-2]`` (layer S's output), CLS dropped: ``budget`` tokens, raster order.

Decisions where the released code is ambiguous or where ours differs on purpose:

* Per image. The released ``adaptive_prune_ratio`` takes the **maximum** r over the batch (``r.max(0)``), so an
  image's tokens depend on the other images of its batch; the released evaluation runs batch size 1, which is
  what every row here gets (the tower runs one image at a time inside ``encode``).
* The layers run with SDPA; the CLS attention row, the value-value row and the value mean are computed from the
  layer's own q/k/v projection outputs (captured by hooks) in float32 (released: eager attention in the model
  dtype, fp16). The top-k is a stable sort, ties to the lower index (released ``topk``: unspecified).
* Entropy with ``xlogy`` (0 log 0 = 0): a patch whose attention underflows to 0 makes the released entropy NaN
  and ``int(nan)`` raise.
* Layers after S do not change LLaVA's features and are not run (the released tower runs all 24).

The committed fixture ``tests/fixtures/official/flowcut.json`` holds the released encoder's kept patches on a
seeded random CLIP tower of CLIP-L's depth and token count; ``tests/test_methods_2025.py`` requires ours to equal
them.

Not on Qwen2.5-VL: it reads CLIP's [CLS] attention (``needs``); the authors' Qwen version is not ported here yet.
"""
from __future__ import annotations

import torch

from svdprune.errors import UserError
from svdprune.pruning import EncoderPruner, register

from ._encoder_common import (check_budget, check_runtime_budget, embed_patches, producing_layer, split_heads,
                              vision_layers)

NAME = "flowcut"


def flow_scores(cls_attention: torch.Tensor, semantic: torch.Tensor, value_mean: torch.Tensor) -> torch.Tensor:
    """(N,) CLS attention, (N,) CLS-value similarity softmax, (N, head_dim) head-mean values -> (N,) scores."""
    relation = cls_attention / cls_attention.sum()
    semantic = semantic / semantic.sum()
    return (relation + semantic) * torch.norm(value_mean, p=1, dim=-1)


def adaptive_prune_count(cls_attention: torch.Tensor, remaining_layers: int, budget: int) -> int:
    """How many of the N patches to drop at a cut with ``remaining_layers`` (> 0) layers to go: ``round((N -
    budget) / sqrt(remaining_layers) * (1 - (H / log N)^2))``, H the entropy of the normalised CLS attention."""
    n = cls_attention.shape[-1]
    prob = cls_attention / cls_attention.sum()
    entropy = -torch.special.xlogy(prob, prob).sum()
    ratio = entropy / torch.log(torch.tensor(float(n)))
    r = (n - budget) / remaining_layers ** 0.5 * (1 - ratio ** 2)
    return int(r.round())


def layer_signals(layer, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run one CLIPEncoderLayer on (1, T, D) ``hidden`` (CLS first). Returns (the layer output (1, T, D); CLS
    attention to the patches (T - 1,) head mean; CLS-value softmax row over the patches (T - 1,) head mean;
    head-mean value states of the patches (T - 1, head_dim)), the last three in float32."""
    attn = layer.self_attn
    heads = attn.num_heads
    captured = {}
    hooks = [getattr(attn, name).register_forward_hook(
        lambda module, args, output, name=name: captured.setdefault(name, output))
        for name in ("q_proj", "k_proj", "v_proj")]
    try:
        output = layer(hidden, None)
    finally:
        for hook in hooks:
            hook.remove()
    output = output[0] if isinstance(output, tuple) else output
    query = split_heads((captured["q_proj"][:, :1] * attn.scale).float(), heads)  # (1, H, 1, hd), scaled as released
    keys = split_heads(captured["k_proj"].float(), heads)  # (1, H, T, hd)
    values = split_heads(captured["v_proj"].float(), heads)  # (1, H, T, hd)
    cls_attention = torch.softmax(query @ keys.transpose(-1, -2), dim=-1)[0, :, 0, 1:].mean(dim=0)  # (T - 1,)
    semantic = torch.softmax(values[:, :, :1] @ values.transpose(-1, -2), dim=-1)[0, :, 0, 1:].mean(dim=0)
    return output, cls_attention, semantic, values[0].mean(dim=0)[1:]


def check_tower_depth(select: int) -> int:
    """FlowCut's last cut is after layer S - 1: the layer producing LLaVA's features must have one before it."""
    if select < 1:
        raise UserError(f"{NAME}: the vision layer that produces LLaVA's features is layer {select}; FlowCut cuts "
                        "after the layer before it, so it needs a tower with at least 2 layers up to the feature "
                        "layer (CLIP-L: 23)")
    return select


@register
class FlowCut(EncoderPruner):
    """Drops patches inside the vision tower at every other layer by a cumulative CLS-flow score, with an
    entropy-adaptive count, until ``budget`` patches reach LLaVA's feature layer."""

    name, label, in_paper, table_row = "flowcut", "FlowCut", False, 90
    needs = frozenset({"cls_attention", "vision_layers"})

    def __init__(self, budget: int):
        self.budget = check_budget(NAME, budget)

    def check(self, lm) -> None:
        check_tower_depth(producing_layer(lm.feature_layer, len(vision_layers(lm.vision_tower))))
        check_runtime_budget(NAME, self.budget, lm.num_patches)

    @torch.no_grad()
    def encode(self, vision_tower, pixel_values, feature_layer, context):
        layers = vision_layers(vision_tower)
        select = check_tower_depth(producing_layer(feature_layer, len(layers)))  # S: its output is the features
        features, kept, trace = [], [], []
        for image in pixel_values.split(1):  # per image: the released cut counts depend on the whole batch
            hidden = embed_patches(vision_tower, image)  # (1, 1 + N, D)
            check_runtime_budget(NAME, self.budget, hidden.shape[1] - 1)
            patches = torch.arange(hidden.shape[1] - 1, device=hidden.device)  # original index of each patch
            cumulative, counts = None, []
            for index in range(select + 1):
                hidden, cls_attention, semantic, value_mean = layer_signals(layers[index], hidden)
                n = hidden.shape[1] - 1
                if n <= self.budget:
                    continue
                scores = flow_scores(cls_attention, semantic, value_mean)
                cumulative = scores if cumulative is None else 0.5 * cumulative + 0.5 * scores
                remaining = select - index - 1
                if remaining % 2:
                    continue
                drop = adaptive_prune_count(cls_attention, remaining, self.budget) if remaining else n
                keep_count = min(max(n - drop, self.budget), n)
                keep = torch.sort(cumulative, descending=True, stable=True).indices[:keep_count].sort().values
                hidden = torch.cat([hidden[:, :1], hidden[:, 1:].index_select(1, keep)], dim=1)
                cumulative, patches = cumulative[keep], patches[keep]
                counts.append([index, keep_count])
            features.append(hidden[:, 1:])
            kept.append(patches.tolist())
            trace.append(counts)
        context.vision_hidden_states = None  # per image and shrinking: nothing downstream reads them
        context.record(kept_indices=kept, flowcut_cuts=trace)  # trace: (layer, patches kept) at each cut
        return torch.cat(features)  # (B, budget, D)

    def reduce(self, features, context):
        """The pruning already happened in ``encode``: ``features`` are the ``budget`` surviving patches."""
        if features.shape[1] != self.budget:
            raise ValueError(f"FlowCut.reduce expects the {self.budget} tokens of FlowCut.encode, "
                             f"got {features.shape[1]}")
        return features

"""Pure helpers shared by the encoder-side baselines (ToMe, VisionZip, TRIM, FasterVLM, DivPrune, random, pooling).

Everything here is tensors in, tensors out, except :func:`stash` / :func:`unstash`, which pass per-batch
tensors computed in ``encode`` (where the vision tower is at hand) to ``reduce`` through the
:class:`~svdprune.pruning.PruneContext` of that batch (attribute ``encoder_aux``, a dict).
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from svdprune import errors
from svdprune.errors import UserError
from svdprune.svd import top_k_raster  # re-exported: top-k, ties to the lower index, ascending

__all__ = ["LLAVA15_GRID", "LLAVA15_PATCHES", "check_budget", "check_int", "check_runtime_budget",
           "cls_attention_and_keys", "cls_patch_attention", "gather_tokens", "image_seeds", "producing_layer",
           "split_heads", "stash", "top_k_raster", "unstash", "vision_layers", "embed_patches"]

# LLaVA-1.5 geometry (CLIP ViT-L/14-336): used to validate budgets at construction, before a model is loaded.
# Every method checks the real geometry again when it runs.
LLAVA15_PATCHES = 576
LLAVA15_GRID = 24


def check_int(method: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` must be an int in [low, high]; otherwise a one-line UserError naming method and key."""
    return errors.check_int(f"{method}: {key}", value, low, high)


def check_budget(method: str, budget: Any, low: int = 1, high: int = LLAVA15_PATCHES) -> int:
    return check_int(method, "budget", budget, low, high)


def check_runtime_budget(method: str, budget: int, num_patches: int) -> None:
    """The model's real patch count can be smaller than LLaVA-1.5's 576."""
    if budget > num_patches:
        raise UserError(f"{method}: budget={budget} is more than the {num_patches} patch tokens of this vision tower")


# ---------------------------------------------------------------- the ``vision_layers`` capability
#
# A family that declares ``vision_layers`` (and ``cls_attention``) hands the methods a CLIP vision transformer in
# transformers' layout (``CLIPVisionTransformer``: ``embeddings``, ``pre_layrnorm``, ``encoder.layers`` of
# ``CLIPEncoderLayer``, [CLS] first), as its ``LoadedModel.vision_tower``. These two functions are the only places
# that read that layout; the methods that run CLIP's layers themselves go through them.

def vision_layers(vision_tower: nn.Module) -> nn.ModuleList:
    """The tower's encoder layers (``CLIPEncoderLayer``), in order."""
    return vision_tower.encoder.layers


def embed_patches(vision_tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) pixels -> (B, 1 + N, D): patch and position embeddings after the pre-LayerNorm, [CLS] first (what
    enters encoder layer 0, ``hidden_states[0]``)."""
    return vision_tower.pre_layrnorm(vision_tower.embeddings(pixel_values))


def producing_layer(feature_layer: int, num_layers: int) -> int:
    """Index of the encoder layer whose output is ``hidden_states[feature_layer]``.

    ``hidden_states`` has ``num_layers + 1`` entries (entry 0 = embeddings after the pre-LayerNorm), so
    LLaVA-1.5's ``-2`` on CLIP-L (24 layers) is the output of layer index 22.
    """
    index = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 1 <= index <= num_layers:
        raise UserError(f"vision_feature_layer={feature_layer} selects no encoder layer output "
                        f"(the tower has {num_layers} layers)")
    return index - 1


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, H, T, D/H), the head layout of HF's CLIPAttention."""
    b, t, d = x.shape
    return x.view(b, t, num_heads, d // num_heads).transpose(1, 2)


@torch.no_grad()
def cls_attention_and_keys(layer: nn.Module, layer_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute what eager attention of one CLIP encoder layer would expose, without switching SDPA off.

    layer: a ``CLIPEncoderLayer``; layer_input: (B, T, D) the hidden states entering it (CLS at index 0).
    Returns
      cls_attn: (B, H, T) float32, the CLS query's post-softmax attention row of every head
        (softmax(q_cls k^T * head_dim^-0.5), as ``eager_attention_forward`` computes it; no mask: CLIP's
        vision tower attends everywhere);
      key_mean: (B, T, head_dim) float32, the layer's key states (``k_proj`` output, unscaled) averaged over
        heads: the "metric" of ToMe and VisionZip.
    Both are computed from the layer's own LayerNorm and projections, in float32.
    """
    attn = layer.self_attn
    x = layer.layer_norm1(layer_input)
    heads = attn.num_heads
    q_cls = split_heads(attn.q_proj(x[:, :1]).float(), heads)  # (B, H, 1, hd)
    keys = split_heads(attn.k_proj(x).float(), heads)  # (B, H, T, hd)
    logits = torch.matmul(q_cls, keys.transpose(-1, -2)) * attn.scale  # (B, H, 1, T)
    cls_attn = torch.softmax(logits, dim=-1)[:, :, 0]
    return cls_attn, keys.mean(dim=1)


@torch.no_grad()
def cls_patch_attention(vision_tower: nn.Module, feature_layer: int, context) -> torch.Tensor:
    """(B, N) float32: the CLS query's post-softmax attention to the patches, averaged over heads, in the layer
    that produces ``hidden_states[feature_layer]`` (FasterVLM, VisPruner, HoloV: ``attentions[-2][:, :, 0, 1:]``
    head-mean). Needs ``context.vision_hidden_states`` (filled by ``EncoderPruner.encode``)."""
    layers = vision_layers(vision_tower)
    index = producing_layer(feature_layer, len(layers))
    cls_attn, _ = cls_attention_and_keys(layers[index], context.vision_hidden_states[index])  # (B, H, 1 + N)
    return cls_attn[:, :, 1:].mean(dim=1)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: (B, N, D), index: (B, k) -> (B, k, D)."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


def stash(context, **values) -> None:
    """Hand per-batch tensors from ``encode`` to ``reduce`` (same PruneContext)."""
    context.encoder_aux.update(values)


def unstash(context, key: str, method: str):
    aux = context.encoder_aux
    if key not in aux:
        raise RuntimeError(f"{method}.reduce needs {key!r} from its own encode(); call encode first "
                           "with the same PruneContext")
    return aux[key]


def image_seeds(pixel_values: torch.Tensor, seed: int) -> list[int]:
    """One 63-bit seed per image from (run seed, image content), independent of the batch it is in.

    The pixels are hashed as float16 so that a float32 run on CPU and a float16 run on GPU of the same
    preprocessed image get the same seed.
    """
    pixels = pixel_values.detach().to("cpu", torch.float16).contiguous()
    seeds = []
    for image in pixels:
        digest = hashlib.sha256(str(int(seed)).encode() + b":" + image.numpy().tobytes()).digest()
        seeds.append(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return seeds

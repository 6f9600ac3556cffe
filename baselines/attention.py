"""Shared helpers of the decoder-side baselines (FastV, PyramidDrop, SparseVLM).

The engine runs every decoder layer with SDPA, which never materialises attention weights. A method that
scores tokens by post-softmax attention recomputes only the query rows it needs, from the layer's own
input LayerNorm, Q/K projections and RoPE, exactly as the eager attention of that layer would compute
them (:func:`attention_rows`). Everything else here is index bookkeeping on a :class:`TokenState`
(left-padded rows of equal length, the same number of image tokens in every row).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

from svdprune.errors import UserError
from svdprune.pruning import TokenState

SCALES = ("multiply", "divide")


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B, T, D). HF's ``apply_rotary_pos_emb`` for one tensor."""
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


def attention_rows(layer: nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                   attention_mask: torch.Tensor, query_index: torch.Tensor, *, scale: str = "multiply") -> torch.Tensor:
    """Post-softmax attention of the query rows ``query_index`` of decoder ``layer``, all heads.

    layer: a ``LlamaDecoderLayer`` (its ``input_layernorm`` and ``self_attn.q_proj/k_proj`` are used);
    hidden: (B, L, d) the hidden states *entering* that layer (before its input LayerNorm);
    position_embeddings: (cos, sin), each (B, L, head_dim), for the positions of those L tokens;
    attention_mask: (B, 1, L, L) bool, True = attend (the engine's causal + padding mask);
    query_index: (B, Q) long, the rows wanted.

    Returns (B, H, Q, L) in float32: logits q.k (q, k after RoPE, k heads repeated for GQA), scaled by
    ``head_dim ** -0.5`` (``scale="multiply"``, HF's eager attention and SparseVLM) or divided by
    ``sqrt(head_dim)`` (``scale="divide"``, the older HF eager code FastV and PyramidDrop run), masked with
    the dtype's minimum, softmax in float32 over the full row - the eager attention of ``modeling_llama``,
    except that the probabilities stay in float32 where eager casts them back to the model dtype. In
    float16 most image-token probabilities of a long row are subnormal (87% in a synthetic test), so the
    official fp16 head mean has exact ties at the k-th place, which a GPU's ``topk`` breaks arbitrarily; the
    float32 scores rank them (:func:`top_k`). A float32 run is unchanged. Cost: Q query projections and one
    K projection of L tokens.
    """
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; allowed: {', '.join(SCALES)}")
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    heads, head_dim = attn.config.num_attention_heads, attn.head_dim
    normed = layer.input_layernorm(hidden)
    rows = normed.gather(1, query_index[..., None].expand(-1, -1, normed.shape[-1]))  # (B, Q, d)
    query = attn.q_proj(rows).view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, Q, D)
    key = attn.k_proj(normed).view(batch, length, -1, head_dim).transpose(1, 2)  # (B, Hkv, L, D)
    cos, sin = position_embeddings
    pick = query_index[..., None].expand(-1, -1, cos.shape[-1])
    query = _rope(query, cos.gather(1, pick), sin.gather(1, pick))
    key = repeat_kv(_rope(key, cos, sin), attn.num_key_value_groups)
    logits = torch.matmul(query, key.transpose(2, 3))
    logits = logits / math.sqrt(head_dim) if scale == "divide" else logits * attn.scaling
    mask = attention_mask.gather(2, query_index[:, None, :, None].expand(-1, 1, -1, length))  # (B, 1, Q, L)
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=-1, dtype=torch.float32)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) scores -> (B, k) indices of the k largest, highest first, ties to the lower index: the same
    selection on every device (``torch.topk`` leaves ties unspecified, and CUDA's breaks them differently
    from the CPU's). Ranked in float32. Equal to ``topk`` wherever the k-th place has no tie."""
    return torch.sort(scores.float(), dim=1, descending=True, stable=True).indices[:, :k]


def last_token_index(state: TokenState) -> torch.Tensor:
    """(B, 1): the last slot, which holds every row's last prompt token (rows are left-padded)."""
    batch, length = state.is_image.shape
    return torch.full((batch, 1), length - 1, dtype=torch.long, device=state.is_image.device)


def true_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """(B, L) bool with ``count`` True per row -> (B, count) their ascending indices, without a host sync
    (``nonzero`` waits for the device to learn its output size; a stable sort does not)."""
    return mask.to(torch.uint8).sort(dim=1, descending=True, stable=True).indices[:, :count]


def image_positions(is_image: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """(B, L) bool -> (B, n) ascending indices of the image tokens; every row must hold the same n.
    ``count``: n when the caller knows it (then rows are not checked, and the host is not synced)."""
    if count is not None:
        return true_positions(is_image, count)
    counts = is_image.sum(-1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"rows hold different numbers of image tokens: {counts.tolist()}")
    return is_image.nonzero()[:, 1].view(is_image.shape[0], int(counts[0]))


def keep_indices(is_image: torch.Tensor, image_pos: torch.Tensor, keep_local: torch.Tensor) -> torch.Tensor:
    """Indices (B, L - n + k), ascending, of every non-image token plus the image tokens
    ``image_pos.gather(1, keep_local)`` (keep_local: (B, k) indices into the row's image tokens)."""
    keep = ~is_image
    keep = keep.scatter(1, image_pos.gather(1, keep_local), True)
    return true_positions(keep, is_image.shape[1] - image_pos.shape[1] + keep_local.shape[1])


def renumber(padding: torch.Tensor) -> torch.Tensor:
    """Position ids 0, 1, ... over the non-padded slots of each row (padding slots get 0), as
    ``build_inputs`` numbers a fresh prompt: what PyramidDrop and SparseVLM do after dropping."""
    return (torch.cumsum(~padding, dim=1) - 1).clamp_min(0)


def layer_average(start: int, n_layers: int, layers: list[int], counts: list[int]) -> float:
    """Image tokens per LLM layer averaged over ``n_layers`` layers: ``start`` in every layer before ``layers[0]``,
    ``counts[s]`` from layer ``layers[s]`` (strictly increasing) up to the next one. PyramidDrop's schedule average
    (a stage layer is the first that sees the dropped set) and SparseVLM's official one (a pruning layer counted at
    its post-prune size) are both this."""
    bounds = list(layers) + [n_layers]
    total = bounds[0] * start + sum((bounds[s + 1] - bounds[s]) * count for s, count in enumerate(counts))
    return total / n_layers


def check_depth(method: str, name: str, layers, n_layers: int, low: int, high: int, meaning: str) -> None:
    """Schedules are given for LLaVA-1.5-7B (32 layers). On another depth an out-of-range layer is an
    error (never silently rescaled): the user passes a schedule for that model."""
    bad = [layer for layer in layers if not low <= layer <= high]
    if bad:
        raise UserError(f"{method}: {name}={list(layers)} needs layer(s) {bad} but the LLM has {n_layers} layers "
                        f"({meaning}: {low}..{high}); set method.params.{name} for this model")

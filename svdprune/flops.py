"""Compute counts for LLaVA-1.5 prefill (Table 2 of the SVD-Prune paper), as pure functions.

Two conventions, never mixed:

* **Paper convention** (``paper_*``, multiply-accumulates, MACs). The paper's Table 2 (and FastV's formula it
  follows) counts a transformer layer over ``n`` tokens of width ``d`` with MLP width ``m`` as
  ``4 n d^2 + 2 n^2 d + 2 n d m`` (Q, K, V, O projections; QK^T and AV; a 2-matrix MLP). For the LLM
  (Vicuna-7B: d = 4096, m = 11008, 32 layers) n = image tokens + text tokens; the CLIP-L vision tower is the
  same formula at d = 1024, m = 4096 over 577 tokens and 24 layers = 190.6 G; the projector is
  ``1024 * 4096 + 4096 * 4096`` = 20.97 M MACs per image token. SparseVLM's code counts Llama's gated MLP as
  ``3 n d m`` (``mlp="gated"``). The paper's "FLOPs" are these MAC counts.
* **Architecture count** (``exact_*``, FLOPs = 2 x MACs, exactly what ``torch.utils.flop_counter`` counts):
  every matrix product of the real modules: CLIP patch-embedding convolution, Q/K/V/O and MLP of every
  vision layer the engine runs, the projector, Q/K/V/O, attention (``4 * L * S * d`` for a query length L
  over S keys, no causal saving, as the counter's SDPA formula) and the *gated* MLP (3 matrices) of every
  LLM layer, and ``lm_head`` on the last prompt token (the engine computes logits only there). Bias adds,
  norms, activations, RoPE and embedding look-ups are not counted (the counter does not count them either).

Token counts come per layer, so pruning inside the vision tower (ToMe: attention and MLP of one layer see
different counts) or between LLM layers (FastV, PyramidDrop, SparseVLM) is counted as it happens.

SVD cost (``svd_macs``) is the textbook count for a dense SVD (Golub & Van Loan, *Matrix Computations*,
4th ed., Fig. 8.6.1, R-SVD column), not a measurement: LAPACK's iterative algorithms vary around it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

# Table 2 of the paper (tokens -> vision G, projector G, LLM T, total T, reduction %), as printed.
PAPER_TABLE2 = {
    576: (190.6, 12.080, 3.250, 3.450, 0.00),
    192: (190.6, 4.030, 1.230, 1.430, 58.7),
    128: (190.6, 2.680, 0.903, 1.100, 68.2),
    64: (190.6, 1.340, 0.576, 0.770, 77.7),
    32: (190.6, 0.671, 0.413, 0.604, 82.5),
    16: (190.6, 0.336, 0.332, 0.523, 84.8),
}
PAPER_TEXT_TOKENS = 50  # n_text that reproduces the paper's table (its text says 3.45 T -> 0.52 T)


@dataclass(frozen=True)
class Geometry:
    """The shapes that decide LLaVA-1.5's compute. Defaults: llava-hf/llava-1.5-7b-hf."""

    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_intermediate: int = 4096
    image_size: int = 336
    patch_size: int = 14
    channels: int = 3
    text_hidden: int = 4096
    text_layers: int = 32
    text_heads: int = 32
    text_kv_heads: int = 32
    text_intermediate: int = 11008
    vocab_size: int = 32064

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def vision_tokens(self) -> int:
        return self.num_patches + 1  # CLS

    @classmethod
    def from_config(cls, config) -> "Geometry":
        """From a ``LlavaConfig`` (its vision_config / text_config)."""
        v, t = config.vision_config, config.text_config
        return cls(vision_hidden=v.hidden_size, vision_layers=v.num_hidden_layers, vision_heads=v.num_attention_heads,
                   vision_intermediate=v.intermediate_size, image_size=v.image_size, patch_size=v.patch_size,
                   channels=v.num_channels, text_hidden=t.hidden_size, text_layers=t.num_hidden_layers,
                   text_heads=t.num_attention_heads, text_kv_heads=t.num_key_value_heads or t.num_attention_heads,
                   text_intermediate=t.intermediate_size, vocab_size=t.vocab_size)


LLAVA15_7B = Geometry()


def llava15_7b_config():
    """``LlavaConfig`` of llava-hf/llava-1.5-7b-hf (CLIP ViT-L/14-336 + Vicuna-7B), no download."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    g = LLAVA15_7B
    vision = CLIPVisionConfig(hidden_size=g.vision_hidden, intermediate_size=g.vision_intermediate,
                              num_hidden_layers=g.vision_layers, num_attention_heads=g.vision_heads,
                              image_size=g.image_size, patch_size=g.patch_size, projection_dim=768,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(vocab_size=g.vocab_size, hidden_size=g.text_hidden, intermediate_size=g.text_intermediate,
                       num_hidden_layers=g.text_layers, num_attention_heads=g.text_heads,
                       num_key_value_heads=g.text_kv_heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       pad_token_id=32001, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_token_id=32000,
                         projector_hidden_act="gelu")
    config._attn_implementation = "sdpa"
    return config


# ------------------------------------------------------------------------------------ paper convention (MACs)

def paper_layer_macs(n: float, d: int, m: int, mlp: str = "fastv") -> float:
    """One transformer layer over n tokens: 4nd^2 + 2n^2d + 2ndm (``mlp="fastv"``) or + 3ndm (``"gated"``)."""
    mlp_matrices = {"fastv": 2, "gated": 3}[mlp]
    return 4 * n * d * d + 2 * n * n * d + mlp_matrices * n * d * m


def paper_llm_macs(tokens_per_layer: Sequence[float], g: Geometry = LLAVA15_7B, mlp: str = "fastv") -> float:
    """Sum of :func:`paper_layer_macs` over the LLM layers; ``tokens_per_layer[l]`` = image + text tokens."""
    assert len(tokens_per_layer) == g.text_layers, f"{len(tokens_per_layer)} counts for {g.text_layers} layers"
    return float(sum(paper_layer_macs(n, g.text_hidden, g.text_intermediate, mlp) for n in tokens_per_layer))


def paper_vision_macs(attn_tokens: Sequence[int] | None = None, mlp_tokens: Sequence[int] | None = None,
                      g: Geometry = LLAVA15_7B) -> float:
    """The vision tower in the same formula (d = 1024, m = 4096): 190.6 G for 577 tokens x 24 layers.

    attn_tokens / mlp_tokens: tokens entering each layer's attention / MLP (they differ for ToMe, which merges
    in between); layers a method does not run are absent. Default: all layers over all 577 tokens.
    """
    if attn_tokens is None:
        attn_tokens = [g.vision_tokens] * g.vision_layers
    mlp_tokens = attn_tokens if mlp_tokens is None else mlp_tokens
    d, m = g.vision_hidden, g.vision_intermediate
    return float(sum(4 * a * d * d + 2 * a * a * d for a in attn_tokens) + sum(2 * t * d * m for t in mlp_tokens))


def paper_projector_macs(image_tokens: int, g: Geometry = LLAVA15_7B) -> float:
    """LLaVA-1.5's 2-layer MLP projector: image_tokens x (Dv * d + d * d) (20.97 M MACs per token)."""
    return float(image_tokens * (g.vision_hidden * g.text_hidden + g.text_hidden * g.text_hidden))


# The figures the paper's Table 2 prints for the parts pruning after the tower leaves alone: vision tower 190.6 G
# (paper_vision_macs() is 190.61 G), projector 20.97 M MACs per image token (paper_projector_macs(1) 20.97152 M).
# The reports' per-run compute uses them as printed, so its vanilla row is the paper's 3.456 T.
PAPER_VISION_MACS = 190.6e9
PAPER_PROJECTOR_MACS_PER_TOKEN = 20.97e6


def paper_convention_tmacs(image_tokens_per_layer: Sequence[float], n_text: int = PAPER_TEXT_TOKENS) -> float:
    """Total T-MACs of one LLaVA-1.5-7B image + question in the paper's convention: vision + projector (layer
    0's image tokens) + the LLM layer by layer (:func:`paper_layer_macs`, FastV's MLP term) with that layer's
    image-token count plus ``n_text`` (decoder-side methods change the count between layers)."""
    tokens = list(image_tokens_per_layer)
    g = LLAVA15_7B
    llm = sum(paper_layer_macs(k + n_text, g.text_hidden, g.text_intermediate) for k in tokens)
    return (PAPER_VISION_MACS + PAPER_PROJECTOR_MACS_PER_TOKEN * tokens[0] + llm) / 1e12


def svd_macs(n: int, d: int, vectors: str = "u") -> float:
    """Textbook MACs (flops / 2) of the SVD of one (n, d) matrix, R-SVD column of Golub & Van Loan.

    With p = max(n, d), q = min(n, d) (the algorithm works on the tall orientation):
    ``vectors="u"`` (singular values + the n-side singular vectors, what leverage scores need):
    2 p q^2 + 11 q^3 flops; ``"uv"`` (thin U, S and V^T, what ``torch.linalg.svd(full_matrices=False)``
    returns): 6 p q^2 + 20 q^3 flops; ``"none"`` (values only): 2 p q^2 + 2 q^3 flops.
    """
    p, q = max(n, d), min(n, d)
    flops = {"u": 2 * p * q * q + 11 * q ** 3, "uv": 6 * p * q * q + 20 * q ** 3, "none": 2 * p * q * q + 2 * q ** 3}
    return flops[vectors] / 2


def gram_eigh_macs(n: int, d: int) -> float:
    """MACs of the Gram path for the same leverage scores: G = X X^T (n^2 d, symmetric: half with SYRK, counted
    in full here) + symmetric eigendecomposition with eigenvectors (about 9 n^3 flops, Golub & Van Loan)."""
    return n * n * d + 9 * n ** 3 / 2


def svd_prune_overhead_macs(n: int = 576, d: int = 1024, rank: int | None = None, solver: str = "svd") -> float:
    """SVD-Prune's selection cost per image in MACs: ``solver="svd"``: thin SVD with U and V (what
    ``torch.linalg.svd(full_matrices=False)`` computes); ``"gram"``: X X^T + eigh (:func:`gram_eigh_macs`);
    plus the leverage sum over r columns (n r; r = min(n, d) if unknown). Sorting is not a MAC."""
    r = min(n, d) if rank is None else rank
    decomposition = {"svd": lambda: svd_macs(n, d, "uv"), "gram": lambda: gram_eigh_macs(n, d)}[solver]()
    return decomposition + n * r


# ------------------------------------------------------------------ architecture count (FLOPs, as the counter)

def exact_vision_flops(attn_tokens: Sequence[int], mlp_tokens: Sequence[int] | None = None, g: Geometry = LLAVA15_7B,
                       batch: int = 1) -> int:
    """CLIP vision tower as the engine runs it: patch-embedding convolution + per layer Q/K/V/O (attn_tokens),
    SDPA (4 T^2 Dv), MLP fc1 + fc2 (mlp_tokens). HF's vision tower runs all its layers even though LLaVA
    reads layer -2: pass ``[577] * 24`` for that."""
    mlp_tokens = attn_tokens if mlp_tokens is None else mlp_tokens
    d, m = g.vision_hidden, g.vision_intermediate
    conv = 2 * g.num_patches * d * g.channels * g.patch_size ** 2
    attn = sum(2 * 4 * t * d * d + 4 * t * t * d for t in attn_tokens)
    mlp = sum(2 * 2 * t * d * m for t in mlp_tokens)
    return batch * (conv + attn + mlp)


def exact_projector_flops(image_tokens: int, g: Geometry = LLAVA15_7B, batch: int = 1) -> int:
    return batch * 2 * image_tokens * (g.vision_hidden * g.text_hidden + g.text_hidden * g.text_hidden)


def exact_llm_layer_flops(n: int, g: Geometry = LLAVA15_7B, batch: int = 1, kv_len: int | None = None) -> int:
    """One Llama decoder layer, query length n over kv_len keys (prefill: kv_len = n): Q and O (2nd^2 each),
    K and V (2 n d d_kv each), SDPA 4 n kv_len d, gated MLP 3 x 2ndm."""
    s = n if kv_len is None else kv_len
    d, m = g.text_hidden, g.text_intermediate
    d_kv = d // g.text_heads * g.text_kv_heads
    proj = 2 * (2 * n * d * d + 2 * n * d * d_kv)
    attn = 4 * n * s * d
    mlp = 3 * 2 * n * d * m
    return batch * (proj + attn + mlp)


def exact_llm_flops(tokens_per_layer: Sequence[int], g: Geometry = LLAVA15_7B, batch: int = 1) -> int:
    assert len(tokens_per_layer) == g.text_layers, f"{len(tokens_per_layer)} counts for {g.text_layers} layers"
    return sum(exact_llm_layer_flops(n, g, batch) for n in tokens_per_layer)


def exact_lm_head_flops(g: Geometry = LLAVA15_7B, batch: int = 1, tokens: int = 1) -> int:
    return batch * 2 * tokens * g.text_hidden * g.vocab_size


def exact_prefill_flops(vision_attn_tokens: Sequence[int], vision_mlp_tokens: Sequence[int] | None,
                        image_tokens: int, llm_tokens_per_layer: Sequence[int], g: Geometry = LLAVA15_7B,
                        batch: int = 1) -> dict[str, int]:
    """Prefill up to the first generated token's logits, per component and ``total`` (FLOPs)."""
    parts = {
        "vision": exact_vision_flops(vision_attn_tokens, vision_mlp_tokens, g, batch),
        "projector": exact_projector_flops(image_tokens, g, batch),
        "llm": exact_llm_flops(llm_tokens_per_layer, g, batch),
        "lm_head": exact_lm_head_flops(g, batch),
    }
    parts["total"] = sum(parts.values())
    return parts


def exact_decode_step_flops(kv_lengths: Sequence[int], g: Geometry = LLAVA15_7B, batch: int = 1) -> int:
    """One generated token: every layer with query length 1 over its own (pruned) cache of kv_lengths[l]
    tokens (the new token included), plus lm_head."""
    return sum(exact_llm_layer_flops(1, g, batch, kv_len=s) for s in kv_lengths) + exact_lm_head_flops(g, batch)


# ---------------------------------------------------------------------------------- torch's FLOP counter

def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """``aten._scaled_dot_product_flash_attention_for_cpu`` is missing from torch's FLOP registry (the CUDA
    kernels and the math path are counted): count it with torch's own SDPA formula."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter(display: bool = False):
    """``torch.utils.flop_counter.FlopCounterMode`` that also counts CPU flash attention (see above)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        custom[cpu_sdpa] = _sdpa_cpu_flops  # FlopCounterMode turns tensors into shapes
    return FlopCounterMode(display=display, custom_mapping=custom)


@torch.no_grad()
def count_prefill_flops(model, vision_attn_tokens: Sequence[int], vision_mlp_tokens: Sequence[int] | None,
                        image_tokens: int, llm_tokens_per_layer: Sequence[int], batch: int = 1) -> dict[str, int]:
    """Measure prefill FLOPs with torch's counter by running the model's own modules (HF CLIP encoder layers,
    projector, LlamaDecoderLayer with SDPA, norm, lm_head) on tensors of the given per-layer lengths.

    ``model``: a ``LlavaForConditionalGeneration``, typically on the meta device (no weights, no memory). The
    token *values* never matter for the count, only the lengths, which is why a replay with the lengths a
    method produced is exact. Returns FLOPs per component and ``total``.
    """
    vision_tower = model.model.vision_tower
    vision_model = getattr(vision_tower, "vision_model", vision_tower)
    projector, llm, lm_head = model.model.multi_modal_projector, model.model.language_model, model.lm_head
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vision_mlp_tokens = vision_attn_tokens if vision_mlp_tokens is None else vision_mlp_tokens
    vcfg, d = vision_model.config, llm.config.hidden_size
    parts = {}

    counter = flop_counter()
    with counter:
        pixels = torch.zeros(batch, vcfg.num_channels, vcfg.image_size, vcfg.image_size, device=device, dtype=dtype)
        vision_model.embeddings(pixels)
        for layer, t_attn, t_mlp in zip(vision_model.encoder.layers, vision_attn_tokens, vision_mlp_tokens):
            layer.self_attn(hidden_states=torch.zeros(batch, t_attn, vcfg.hidden_size, device=device, dtype=dtype))
            layer.mlp(torch.zeros(batch, t_mlp, vcfg.hidden_size, device=device, dtype=dtype))
    parts["vision"] = counter.get_total_flops()

    counter = flop_counter()
    with counter:
        projector(torch.zeros(batch, image_tokens, vcfg.hidden_size, device=device, dtype=dtype))
    parts["projector"] = counter.get_total_flops()

    counter = flop_counter()
    with counter:
        position_embeddings, previous = None, None
        for layer, n in zip(llm.layers, llm_tokens_per_layer):
            hidden = torch.zeros(batch, n, d, device=device, dtype=dtype)
            positions = torch.arange(n, device=device)[None].expand(batch, -1)
            if n != previous:  # the engine recomputes RoPE and the mask when the token set changes
                position_embeddings = llm.rotary_emb(hidden, positions)
                mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None].expand(batch, 1, n, n)
                previous = n
            layer(hidden, attention_mask=mask, position_embeddings=position_embeddings, position_ids=positions,
                  cache=None, use_cache=False)
    parts["llm"] = counter.get_total_flops()

    counter = flop_counter()
    with counter:
        lm_head(llm.norm(torch.zeros(batch, d, device=device, dtype=dtype)))
    parts["lm_head"] = counter.get_total_flops()
    parts["total"] = sum(parts.values())
    return parts


def build_meta_llava(config=None):
    """``LlavaForConditionalGeneration`` on the meta device (shapes only, no memory, no weights); the 7B one
    (``config=None``) is built once per process."""
    return _meta_llava_7b() if config is None else _meta_llava(config)


def _meta_llava(config):
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        return LlavaForConditionalGeneration(config)


@functools.lru_cache(maxsize=1)
def _meta_llava_7b():
    return _meta_llava(llava15_7b_config())


# ------------------------------------------------------------------ Qwen2.5-VL (architecture count, per image size)

@dataclass(frozen=True)
class QwenGeometry:
    """The shapes that decide Qwen2.5-VL's compute. Defaults: Qwen/Qwen2.5-VL-7B-Instruct."""

    vision_hidden: int = 1280
    vision_layers: int = 32
    vision_intermediate: int = 3420
    full_attention_layers: tuple[int, ...] = (7, 15, 23, 31)
    window_tokens: int = 4  # merged tokens per window side: window_size 112 px / 28 px
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge: int = 2
    channels: int = 3
    text: Geometry = Geometry(text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4,
                              text_intermediate=18944, vocab_size=152064)

    @classmethod
    def from_config(cls, config) -> "QwenGeometry":
        v, t = config.vision_config, config.text_config
        return cls(vision_hidden=v.hidden_size, vision_layers=v.depth, vision_intermediate=v.intermediate_size,
                   full_attention_layers=tuple(v.fullatt_block_indexes),
                   window_tokens=v.window_size // v.spatial_merge_size // v.patch_size, patch_size=v.patch_size,
                   temporal_patch_size=v.temporal_patch_size, merge=v.spatial_merge_size, channels=v.in_channels,
                   text=Geometry(text_hidden=t.hidden_size, text_layers=t.num_hidden_layers,
                                 text_heads=t.num_attention_heads, text_kv_heads=t.num_key_value_heads,
                                 text_intermediate=t.intermediate_size, vocab_size=t.vocab_size))


def qwen_windows(token_grid: tuple[int, int], g: QwenGeometry = QwenGeometry()) -> list[int]:
    """Patches per attention window of a (h, w) merged-token grid: the grid cut into ``window_tokens``-square
    windows from the top left (``get_vision_window_index``), each merged token 2 x 2 patches."""
    h, w = token_grid
    side = g.window_tokens
    rows = [min(side, h - r) for r in range(0, h, side)]
    cols = [min(side, w - c) for c in range(0, w, side)]
    return [r * c * g.merge * g.merge for r in rows for c in cols]


def exact_qwen_vision_flops(token_grid: tuple[int, int], g: QwenGeometry = QwenGeometry()) -> int:
    """Qwen2.5-VL's vision tower on one image of ``token_grid`` merged tokens (P = 4 h w patches): patch-embedding
    Conv3d, per block QKV (one 3d-wide projection) and output projection, SDPA within each window (4 t^2 d per
    window of t patches; over all P patches in the full-attention blocks), gated MLP (3 matrices); then the merger's
    two-layer MLP (4d -> 4d -> d_text) over the h w merged tokens. FLOPs = 2 x MACs, as torch's counter."""
    h, w = token_grid
    patches = h * w * g.merge * g.merge
    d, m = g.vision_hidden, g.vision_intermediate
    conv = 2 * patches * d * g.channels * g.temporal_patch_size * g.patch_size ** 2
    windows = qwen_windows(token_grid, g)
    total = conv
    for layer in range(g.vision_layers):
        groups = [patches] if layer in g.full_attention_layers else windows
        total += 2 * patches * d * 3 * d + 2 * patches * d * d + sum(4 * t * t * d for t in groups)
        total += 3 * 2 * patches * d * m
    merged = d * g.merge * g.merge
    return total + 2 * h * w * (merged * merged + merged * g.text.text_hidden)


def exact_qwen_prefill_flops(token_grid: tuple[int, int], llm_tokens_per_layer: Sequence[int],
                             g: QwenGeometry = QwenGeometry()) -> dict[str, int]:
    """Prefill up to the first generated token's logits, per component and ``total`` (FLOPs): the vision tower with
    its merger (``vision``; the merger is Qwen2.5-VL's projector), the LLM layers over their token counts, lm_head."""
    parts = {"vision": exact_qwen_vision_flops(token_grid, g), "llm": exact_llm_flops(llm_tokens_per_layer, g.text),
             "lm_head": exact_lm_head_flops(g.text)}
    parts["total"] = sum(parts.values())
    return parts


@torch.no_grad()
def count_qwen_vision_flops(model, token_grid: tuple[int, int]) -> int:
    """Measure the vision tower (with its merger) of a ``Qwen2_5_VLForConditionalGeneration`` on one image of
    ``token_grid`` merged tokens with torch's counter: the real forward on zero patches (a tiny model on the CPU)."""
    visual = model.model.visual
    cfg = visual.config
    h, w = token_grid
    param = next(visual.parameters())
    patches = torch.zeros(4 * h * w, cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2,
                          device=param.device, dtype=param.dtype)
    counter = flop_counter()
    with counter:
        visual(patches, grid_thw=torch.tensor([[1, 2 * h, 2 * w]], device=param.device))
    return counter.get_total_flops()

"""An analytic model of a run's peak device memory, and the batch size that fits.

    python -m svdprune.memory model=llava15_7b method=fastv budget=64 batch_size=16
    python -m svdprune.memory model=llava15_7b method=svd budget=16 batch_size=auto model.device=cuda

Hydra-style overrides as for run.py (the same configs/); the last line printed is the estimated peak in GB.
The model is read from its config.json alone (a local folder, the HF cache, or LLaVA-1.5-7B's geometry for
the default hub id when it is not cached): nothing is loaded.

What is counted, in bytes of the model dtype unless said (B questions of one batch, L = prompt tokens + new
tokens, P the image tokens an LLM layer sees; every figure is per batch):

* weights: every parameter (meta-device tensor sizes of the real module tree; exact);
* KV cache: 2 (K, V) x kv_heads x head_dim per token and layer, summed over the layers with their own image
  token counts (decoder-side methods: every image token up to the first cut, at most the method's count
  after it); exact for the tensors the cache holds (tested against a meta-device forward);
* vision tower: its 25 hidden states (B x 577 x 1024 each; the engine drops them after the cut) and one
  layer's transient activations;
* LLM prefill: one layer's transient activations: Q, K, V, attention output and residuals (6 x B x L x d)
  and the gated MLP (3 x B x L x intermediate); SDPA's memory-efficient kernels hold no L x L matrix;
* a decoder-side method's recomputed attention rows (B x heads x rows x L, float32, three copies);
* logits of the last position (B x vocab, float32).

Activations are an estimate (the allocator's fragmentation and the kernels' workspaces are not modelled); a
margin is applied by ``batch_size=auto`` (``AUTO_MARGIN``). On a CPU, ``batch_size=auto`` is
``CPU_AUTO_BATCH`` (memory is rarely the limit there; throughput stops improving beyond it).
"""
from __future__ import annotations

import sys

from omegaconf import OmegaConf
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

GB = 1e9
PROMPT_TEXT_TOKENS = 100  # system prompt + question + instruction + "ASSISTANT:" (GQA's mean is ~63 + 34 prefix)
AUTO_MARGIN = 0.85  # batch_size=auto fills at most this share of the free device memory
CPU_AUTO_BATCH = 8
AUTO_CANDIDATES = (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1)
VISION_STATES_KEPT = True  # the tower's hidden states live until the cut (every layer's output)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a batch's peak; ``peak`` is their sum."""

    weights: int
    kv_cache: int
    vision: int
    llm_activations: int
    method_rows: int
    logits: int

    @property
    def peak(self) -> int:
        return self.weights + self.kv_cache + self.vision + self.llm_activations + self.method_rows + self.logits

    def lines(self) -> list[str]:
        parts = [("weights", self.weights), ("KV cache", self.kv_cache), ("vision tower", self.vision),
                 ("LLM activations", self.llm_activations), ("method's attention rows", self.method_rows),
                 ("logits", self.logits)]
        return [f"{name:<24} {value / GB:8.3f} GB" for name, value in parts]


def meta_model(config):
    """The model's module tree on the meta device (shapes and dtypes, no memory)."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        return LlavaForConditionalGeneration(config)


def weight_bytes(config, dtype: torch.dtype) -> int:
    """Parameters as ``from_pretrained(dtype=...)`` holds them, plus the float32 buffers it keeps."""
    model = meta_model(config)
    params = sum(p.numel() * (torch.finfo(dtype).bits // 8 if p.is_floating_point() else p.element_size())
                 for p in model.parameters())
    return params + sum(b.numel() * b.element_size() for b in model.buffers())


def kv_bytes_per_token_and_layer(config, dtype: torch.dtype) -> int:
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = text.num_key_value_heads or text.num_attention_heads
    return 2 * kv_heads * head_dim * (torch.finfo(dtype).bits // 8)


def image_tokens_per_layer(method, num_patches: int, n_layers: int) -> list[int]:
    """Image tokens each LLM layer holds in its KV cache (an upper bound after a decoder-side cut)."""
    if method.kind == "none":
        return [num_patches] * n_layers
    if method.kind == "encoder":
        return [method.budget] * n_layers
    full = min(method.full_layers(), n_layers)
    return [num_patches] * full + [method.max_image_tokens_after_cut(num_patches)] * (n_layers - full)


def estimate(config, method, batch_size: int, dtype: torch.dtype, max_new_tokens: int,
             text_tokens: int = PROMPT_TEXT_TOKENS) -> MemoryEstimate:
    """The peak of one batch of ``batch_size`` questions (see the module docstring)."""
    size = torch.finfo(dtype).bits // 8
    vision, text = config.vision_config, config.text_config
    grid = vision.image_size // vision.patch_size
    num_patches, vision_tokens = grid * grid, grid * grid + 1
    n_layers = text.num_hidden_layers
    per_layer = image_tokens_per_layer(method, num_patches, n_layers)
    tokens = [p + text_tokens + max_new_tokens for p in per_layer]  # (L per layer)
    kv = batch_size * kv_bytes_per_token_and_layer(config, dtype) * sum(tokens)
    hidden_states = (vision.num_hidden_layers + 1) * batch_size * vision_tokens * vision.hidden_size * size
    vision_layer = batch_size * vision_tokens * (6 * vision.hidden_size + 2 * vision.intermediate_size) * size
    longest = max(tokens)
    llm = batch_size * longest * (6 * text.hidden_size + 3 * text.intermediate_size) * size
    rows = 0
    if method.kind == "decoder":
        rows = 3 * batch_size * text.num_attention_heads * text_tokens * longest * 4  # float32 probabilities
    logits = batch_size * text.vocab_size * 4
    return MemoryEstimate(weights=weight_bytes(config, dtype), kv_cache=kv,
                          vision=hidden_states + vision_layer if VISION_STATES_KEPT else vision_layer,
                          llm_activations=llm, method_rows=rows, logits=logits)


def auto_batch_size(config, method, dtype: torch.dtype, max_new_tokens: int, device: torch.device,
                    free_bytes: int | None = None) -> int:
    """The largest batch (of :data:`AUTO_CANDIDATES`) whose estimated peak fits in ``AUTO_MARGIN`` of the
    device's memory (``free_bytes``: free memory with the weights already loaded; default: CUDA's free
    memory now). On a CPU: :data:`CPU_AUTO_BATCH`."""
    if device.type != "cuda" and free_bytes is None:
        return CPU_AUTO_BATCH
    if getattr(config, "model_type", "llava") != "llava":
        raise UserError(f"batch_size=auto: the memory model covers LLaVA-1.5 only, not {config.model_type!r} "
                        "(whose image-token counts vary per image); give batch_size=N")
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    for batch in AUTO_CANDIDATES:
        needed = estimate(config, method, batch, dtype, max_new_tokens)
        if needed.peak - needed.weights <= AUTO_MARGIN * free_bytes:
            return batch
    return 1


def read_config(model_cfg):
    """The LlavaConfig of a model setting, without loading weights: a local folder's or the HF cache's
    config.json; the tiny model's is built; LLaVA-1.5-7B's geometry stands in for its hub id when not cached. The
    memory model covers LLaVA-1.5's architecture (``model_type`` llava) only: any other is a one-line UserError."""
    from transformers import LlavaConfig

    from .families import family_of, load_model
    from .models import in_project, read_config_json

    family = family_of(model_cfg)
    if family.MODEL_TYPE != "llava":
        raise UserError(f"model.family={family.NAME}: the memory model covers LLaVA-1.5 only (model_type 'llava', "
                        f"not {family.MODEL_TYPE!r})")
    if model_cfg.get("kind") == "tiny":
        config = load_model(OmegaConf.merge(model_cfg, {"device": "cpu", "dtype": "float32"}), progress=False).model.config
    else:
        path = in_project(str(model_cfg.get("path") or ""))
        raw = read_config_json(model_cfg)
        if raw is None and path != "llava-hf/llava-1.5-7b-hf":
            raise UserError(f"model.path={path!r}: no config.json there and not in the HF cache")
        if raw is None:  # not cached: the default hub id's geometry is known
            from .flops import llava15_7b_config

            return llava15_7b_config()
        config = LlavaConfig.from_dict(raw) if raw.get("model_type") == "llava" else None
        if config is None:
            raise UserError(f"model {model_cfg.get('name')}: the memory model covers LLaVA-1.5 (model_type 'llava') "
                            f"only, not {raw.get('model_type')!r}")
    if getattr(config, "model_type", None) != "llava":
        raise UserError(f"model {model_cfg.get('name')}: the memory model covers LLaVA-1.5 (model_type 'llava') only, "
                        f"not {config.model_type!r}")
    return config


def main(argv: list[str] | None = None) -> float:
    """``python -m svdprune.memory <overrides>``: prints the parts and, as the last line, the peak in GB."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from .models import device_type, resolve_dtype
    from .pruning import build_method

    overrides = list(sys.argv[1:] if argv is None else argv)
    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[o for o in overrides if not o.startswith("batch_size=")])
    batch = next((o.split("=", 1)[1] for o in overrides if o.startswith("batch_size=")), str(cfg.batch_size))
    params = OmegaConf.to_container(cfg.method.params, resolve=True) if cfg.method.get("params") is not None else {}
    method = build_method(cfg.method.name, cfg.budget, params)
    config = read_config(cfg.model)
    dtype_name = resolve_dtype(str(cfg.model.dtype), str(cfg.model.device))
    dtype = getattr(torch, dtype_name)
    device = torch.device(device_type(str(cfg.model.device)))
    if batch == "auto":
        batch_size = auto_batch_size(config, method, dtype, cfg.max_new_tokens, device)
        print(f"batch_size=auto -> {batch_size} ({device.type})")
    else:
        try:
            batch_size = int(batch)
        except ValueError:
            raise UserError(f"batch_size={batch!r}; allowed: a positive integer or auto") from None
    result = estimate(config, method, batch_size, dtype, cfg.max_new_tokens)
    print(f"{cfg.model.name} {dtype_name}, method={cfg.method.name} budget={cfg.budget}, batch {batch_size}, "
          f"max_new_tokens={cfg.max_new_tokens}")
    for line in result.lines():
        print(line)
    print(f"{result.peak / GB:.2f}")
    return result.peak / GB


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

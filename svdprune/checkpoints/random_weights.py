"""Seeded random weights written as safetensors shards in a checkpoint's own tensor names, one shard in memory at
a time: every tensor from its own generator seeded by (seed, tensor name), so any shard is reproducible alone;
LayerNorm / RMSNorm weights 1, biases 0 (HF's initialisation), the rest N(0, std^2)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def hub_renamer(prefixes: list[tuple[str, str]]):
    """transformers-5 module names -> a checkpoint's names, by the first matching (new, old) prefix pair."""
    def hub_name(name: str) -> str:
        for new, old in prefixes:
            if name.startswith(new):
                return old + name[len(new):]
        raise ValueError(f"no hub name for {name}")
    return hub_name


def tensor_specs(model_cls, config) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor in the state dict, from a meta-device model (no memory)."""
    with torch.device("meta"):
        model = model_cls(config)
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]



def random_tensor(name: str, shape: tuple[int, ...], seed: int, std: float, dtype: torch.dtype) -> torch.Tensor:
    """One tensor, reproducible on its own: generator seeded from (seed, name)."""
    leaf = name.rsplit(".", 1)[-1]
    is_norm = any(part in name for part in ("norm", "layrnorm", "ln_q"))  # ln_q: Qwen2.5-VL merger's RMSNorm
    if is_norm and leaf == "weight":
        return torch.ones(shape, dtype=dtype)
    if leaf == "bias":
        return torch.zeros(shape, dtype=dtype)
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    out = torch.empty(shape, dtype=dtype)
    rows = max(1, (1 << 24) // max(1, out[0].numel() if out.dim() else 1))  # ~16M values per fp32 chunk
    flat = out.view(shape[0], -1) if out.dim() > 1 else out.view(-1, 1) if out.dim() == 1 else out.view(1, 1)
    for start in range(0, flat.shape[0], rows):
        chunk = flat[start:start + rows]
        chunk.copy_(torch.randn(chunk.shape, generator=gen, dtype=torch.float32) * std)
    return out



def write_sharded(specs, out: Path, seed: int, std: float, dtype: torch.dtype, shard_bytes: int,
                  rename=lambda n: n, prefix: str = "model") -> int:
    """Write safetensors shards of at most ``shard_bytes`` (+ the index when more than one). Returns bytes."""
    from safetensors.torch import save_file

    groups, current, size = [], [], 0
    item = torch.empty((), dtype=dtype).element_size()
    for name, shape in specs:
        nbytes = item * int(torch.Size(shape).numel())
        if current and size + nbytes > shard_bytes:
            groups.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    groups.append(current)
    total, weight_map = 0, {}
    for i, group in enumerate(groups):
        file = f"{prefix}.safetensors" if len(groups) == 1 else f"{prefix}-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {rename(name): random_tensor(name, shape, seed, std, dtype) for name, shape in group}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = file
            total += tensor.numel() * tensor.element_size()
        del tensors
        print(f"  {file}: {len(group)} tensors", flush=True)
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total

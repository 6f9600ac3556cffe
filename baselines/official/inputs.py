"""Seeded inputs of LLaVA-1.5-7B's shapes on which the official implementations were run
(:mod:`baselines.official.record`, through scripts/official_fixtures.py, records their outputs in
tests/fixtures/official/; tests/test_methods_2025.py and tests/test_llava_next.py compare ours). Each fixture stores the sha256 of its inputs, so a change of torch's generator is caught
instead of comparing different inputs.

The inputs are the same bytes on every x86 CPU with AVX2 or AVX-512: ``torch.randn`` and float32 matrix products
of these shapes are (checked with ``ATEN_CPU_CAPABILITY=avx2`` and ``avx512``; torch's scalar fallback draws other
normals, so a CPU without AVX2 fails the digest check with a message saying so). Torch's vectorised ``exp`` is
not (its AVX-512 and AVX2 kernels round a few float32 results differently), so the attention rows are a softmax
computed element by element with Python's ``math.exp`` and ``math.fsum`` in float64, then rounded to float32
(``portable_softmax``)."""
from __future__ import annotations

import hashlib
import math

import torch

PATCHES, VISION_WIDTH, VISION_HEADS = 576, 1024, 16  # CLIP ViT-L/14-336 at layer -2, CLS dropped
LLM_WIDTH, CLIP_PROJECTION = 4096, 768  # LLaVA-1.5-7B's projected tokens; CLIP-L's joint embedding space

FIXTURES = {
    # budgets: the harness's 192..16 and some the official loop runs at (T mod 4 in {0, 1}, T >= 5)
    "vispruner": {"seeds": [0, 2, 3, 4], "budgets": [192, 128, 64, 32, 16, 5, 9, 100, 257, 573],
                  "important_ratio": 0.5},
    # M = number of 77-token text windows (2: an instruction longer than 77 CLIP tokens, e.g. TextVQA with OCR)
    "cdpruner": {"seeds": [0, 1, 2, 3], "windows": {0: 1, 1: 1, 2: 2, 3: 1},
                 "budgets": [192, 128, 64, 32, 16, 1, 7, 300]},
    # a LLaVA-1.5 prompt: 35 tokens before the image, 576 image tokens, 25 after it (question, ASSISTANT:)
    "dart": {"seeds": [0, 1, 2], "prefix": 35, "suffix": 25, "budgets": [192, 128, 64, 32, 16, 8, 300]},
    # LLaVA-NeXT (the authors' own code): an image span of 1,176 tokens (336 x 336, official 2 x 1 tiles: 576 base +
    # 2 x 288 unpadded tile tokens + 24 newlines) and of 2,928 (672 x 672: 576 + 4 x 576 + 48 newlines); 320 is
    # the released retain_token_num_for_llava_next; 1,172 = 1,176 - 4 pivots, the largest budget the code keeps whole
    "dart_llava_next": {"seeds": [0, 1], "prefix": 35, "suffix": 25, "images": [1176, 2928],
                        "budgets": [640, 320, 160, 64, 16, 1172]},
    # DivPrune's LLaVA-NeXT path: a packed image span (base view, tiles unpadded to the image's aspect, one newline
    # token after each row: the same vector each time) of a 336 x 336 image (576 + 24 x (24 + 1) = 1,176 tokens) and
    # of a 672 x 672 one (576 + 48 x (48 + 1) = 2,928)
    "divprune_llava_next": {"seeds": [0, 1], "layouts": [[576, 24, 24], [576, 48, 48]], "budgets": [640, 320, 160, 64]},
    # seed 1 puts attention sinks in one chunk (as CLIP-L has): chunks then overflow and the released code pads
    "holov": {"seeds": [0, 1], "budgets": [192, 128, 64, 32, 16, 1, 100, 400]},
    # the released default weight 0.5 (fused ranks tie often: cases with a tie at a cut are skipped), and others
    "tokencarve": {"seeds": [0, 1, 2, 3, 4, 5], "prefix": 35, "suffix": 25,
                   "budgets": [192, 128, 64, 32, 16, 5, 100, 384], "weights": [0.5, 0.3, 0.0, 1.0]},
    "flowcut": {"seeds": [0, 1], "budgets": [192, 128, 64, 32, 16, 1, 300, 500]},
}


def portable_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of float32 ``logits``, the same bits on every CPU: float64 ``math.exp``
    of each entry minus the row maximum, an exactly rounded row sum (``math.fsum``), one division, float32."""
    rows = logits.to(torch.float64).reshape(-1, logits.shape[-1]).tolist()
    out = []
    for row in rows:
        top = max(row)
        weights = [math.exp(value - top) for value in row]
        total = math.fsum(weights)
        out.append([weight / total for weight in weights])
    return torch.tensor(out, dtype=torch.float64).reshape(logits.shape).to(torch.float32)


def vispruner_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (2, 576, 1024) float32, CLS attention to the patches (2, 16, 576): a softmax over CLS + 576)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, PATCHES, VISION_WIDTH, generator=generator)
    logits = 3.0 * torch.randn(2, VISION_HEADS, 1 + PATCHES, generator=generator)
    return features, portable_softmax(logits)[:, :, 1:]


def input_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cdpruner_inputs(seed: int, windows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(projected tokens (1, 576, 4096), CLIP image embeddings (1, 576, 768), text embeddings (M, 768)), float32.

    The tokens share a rank-16 component (image tokens are far from orthogonal) so that the diversity term
    matters; the image embeddings share one with the text so that the relevance has a spread."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(1, PATCHES, 16, generator=generator) @ torch.randn(16, LLM_WIDTH, generator=generator)
    tokens = torch.randn(1, PATCHES, LLM_WIDTH, generator=generator) + 0.5 * common
    text = torch.randn(windows, CLIP_PROJECTION, generator=generator)
    weights = torch.randn(1, PATCHES, 1, generator=generator)
    image = torch.randn(1, PATCHES, CLIP_PROJECTION, generator=generator) + weights * text.mean(dim=0)
    return tokens, image, text


def dart_inputs(seed: int, prefix: int = 35, suffix: int = 25, image: int = PATCHES) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys of layer 1 after RoPE (1, 32, L, 128), final-norm states of layer 1's output (1, L, 4096)), float32,
    L = prefix + image + suffix (``image``: LLaVA-1.5's 576, or a LLaVA-NeXT image's whole span: base view, tiles
    and newline tokens). Token states share a rank-16 component (as real hidden states do)."""
    generator = torch.Generator().manual_seed(seed)
    length = prefix + image + suffix
    keys = torch.randn(1, 32, length, 128, generator=generator) * (1 + torch.rand(1, 1, length, 1, generator=generator))
    common = torch.randn(1, length, 16, generator=generator) @ torch.randn(16, LLM_WIDTH, generator=generator)
    states = torch.randn(1, length, LLM_WIDTH, generator=generator) + 0.5 * common
    return keys, states


def divprune_next_inputs(seed: int, base: int, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a LLaVA-NeXT image's packed LLM-input tokens (base + rows * (cols + 1), 4096), the newline mask), float32: the
    base view's and the tiles' tokens share a rank-16 component (as projected CLIP features do), and the learned
    ``image_newline`` is one vector repeated after each row."""
    generator = torch.Generator().manual_seed(seed)
    patches = base + rows * cols
    common = torch.randn(patches, 16, generator=generator) @ torch.randn(16, LLM_WIDTH, generator=generator)
    features = torch.randn(patches, LLM_WIDTH, generator=generator) + 0.5 * common
    newline = torch.randn(LLM_WIDTH, generator=generator)
    grid = features[base:].view(rows, cols, LLM_WIDTH)
    grid = torch.cat([grid, newline.expand(rows, 1, LLM_WIDTH)], dim=1).reshape(rows * (cols + 1), LLM_WIDTH)
    mask = torch.zeros(rows, cols + 1, dtype=torch.bool)
    mask[:, -1] = True
    return torch.cat([features[:base], grid]), torch.cat([torch.zeros(base, dtype=torch.bool), mask.flatten()])


def holov_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(projected tokens (2, 576, 4096), head-mean CLS attention (2, 576)), float32. Odd seeds add 6 attention
    sinks in the patches 80..85 (the third chunk of 36)."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(2, PATCHES, 16, generator=generator) @ torch.randn(16, LLM_WIDTH, generator=generator)
    tokens = torch.randn(2, PATCHES, LLM_WIDTH, generator=generator) + 0.5 * common
    logits = 2.0 * torch.randn(2, 1 + PATCHES, generator=generator)
    if seed % 2:
        logits[:, 81:87] += 8.0  # patches 80..85
    return tokens, portable_softmax(logits)[:, 1:]


def tokencarve_inputs(seed: int, prefix: int = 35, suffix: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer 1's output hidden states (1, L, 4096), its head-wise attention of the last token (1, 32, L)), float32,
    L = prefix + 576 + suffix. States share a rank-16 component (as real hidden states do)."""
    generator = torch.Generator().manual_seed(seed)
    length = prefix + PATCHES + suffix
    common = torch.randn(1, length, 16, generator=generator) @ torch.randn(16, LLM_WIDTH, generator=generator)
    states = torch.randn(1, length, LLM_WIDTH, generator=generator) + 0.5 * common
    logits = 2.0 * torch.randn(1, 32, length, generator=generator)
    return states, portable_softmax(logits)


def flowcut_tower(seed: int):
    """A seeded random CLIP vision tower with CLIP-L/14-336's depth and token count (24 layers, 1 + 576 tokens) and
    a small width (64, 4 heads). Its q/k weights are scaled by 10 so that the CLS attention is peaked (as a trained
    CLIP's is) and FlowCut's entropy-adaptive cuts drop patches before the last one."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=24, num_attention_heads=4,
                              image_size=336, patch_size=14)
    tower = CLIPVisionModel(config).eval()
    with torch.no_grad():
        for layer in tower.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(10.0)
            layer.self_attn.k_proj.weight.mul_(10.0)
    return tower


def flowcut_inputs(seed: int) -> tuple[torch.Tensor, ...]:
    """(pixel values (1, 3, 336, 336), then every weight of ``flowcut_tower(seed)`` in state-dict order): what the
    digest covers."""
    generator = torch.Generator().manual_seed(1000 + seed)
    pixels = torch.randn(1, 3, 336, 336, generator=generator)
    return (pixels, *flowcut_tower(seed).state_dict().values())


# ---------------------------------------------------------------------------------------------- LLaVA-NeXT AnyRes

#: images (width, height) at the tiny LLaVA-NeXT's geometry (112 px views, pinpoints of 1 x 2, 2 x 1, 2 x 2 tiles, the
#: official (width, height) reading of ``[[112, 224], [224, 112], [224, 224]]``): two at most one tile on each side,
#: where official LLaVA-NeXT and transformers pick different tilings of equal merit, and three that tile alike
ANYRES = {"tile": 112, "pinpoints": [[112, 224], [224, 112], [224, 224]],
          "cases": [{"size": [90, 90], "seed": 0}, {"size": [100, 60], "seed": 1}, {"size": [250, 100], "seed": 2},
                    {"size": [120, 300], "seed": 3}, {"size": [200, 200], "seed": 4}]}


def anyres_image(size: list[int], seed: int):
    """A seeded random RGB image of ``size`` (width, height)."""
    import numpy as np
    from PIL import Image

    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))

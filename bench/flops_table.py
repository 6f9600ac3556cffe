"""Table 2 of the SVD-Prune paper (prefill compute) for every registered method and budget. ``scripts/flops.py`` is its command line.

What it does
1. Runs each method through the engine (``svdprune.families.generate``, one image, a GQA-style question) on a
   random tiny LLaVA with LLaVA-1.5's token geometry and depth (577 vision tokens, 24 vision layers, 32 LLM
   layers; widths are tiny), and records the tokens each vision layer's attention and MLP saw (forward
   pre-hooks, :class:`svdprune.probing.TokenProbe`) and the tokens each LLM layer saw in prefill (``Generation.image_tokens_per_layer`` plus the
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

import csv
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from svdprune import flops as F
from svdprune.probing import (GQA_SAMPLE_QUESTIONS, QWEN_IMAGE_SIZES, QWEN_RECORDED_LENGTHS, QWEN_RECORDED_SOURCE,
                              TokenProbe, load_tokenizer, method_order, offline_params, probe_method, prompt_lengths,
                              qwen_probe_image)

# Methods whose token counts depend on the image (listed under the table with what the row shows).
DATA_DEPENDENT = {
    "flowcut": "flowcut: the cuts inside CLIP drop more patches the more peaked an image's CLS attention is (entropy-"
               "adaptive); the random tiny tower's attention is flat, so its rows cut only at layer 21 (all but k) and "
               "their vision cost is the method's upper bound",
}

BUDGETS = [192, 128, 64, 32, 16]


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


def qwen_rows(budgets: list[int], n_text: list[int]) -> list[dict]:
    """Prefill compute of Qwen2.5-VL-7B per image size and method (architecture count, MACs = FLOPs / 2): the per-layer
    image-token counts come from running each method through the engine on the random tiny Qwen2.5-VL (the 7B's LLM
    depth and the model card's image processor, so the same N per image and the same schedule), the compute from
    ``svdprune.flops.exact_qwen_prefill_flops`` in the 7B's geometry (checked against torch's counter on the tiny
    model's real modules in tests/test_qwen25vl.py), averaged over the sample prompts' text lengths."""
    from svdprune.families import family, generate, supported_methods
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.pruning import build_method, default_params

    qwen25vl = family("qwen25vl")
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


def write_csv(path: Path, rows: list[dict]) -> None:
    """The rows with every column any row has, in first-seen order; floats to 6 significant digits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def qwen_main(args) -> list[dict]:
    if args.tokenizer:
        from transformers import AutoTokenizer

        from svdprune.prompts import ANSWER_INSTRUCTION
        from svdprune.families import family

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        chat_prompt = family("qwen25vl").chat_prompt
        n_text = [len(tokenizer(chat_prompt(q, ANSWER_INSTRUCTION), add_special_tokens=False).input_ids) - 1
                  for q in GQA_SAMPLE_QUESTIONS]
        source = f"tokenizer {args.tokenizer}"
    else:
        n_text, source = QWEN_RECORDED_LENGTHS, QWEN_RECORDED_SOURCE
    rows = qwen_rows(args.budgets, n_text)
    out = Path(args.output_dir)
    write_csv(out / "flops_qwen25vl.csv", rows)
    write_qwen_markdown(out / "flops_qwen25vl.md", rows, n_text, source)
    print(f"wrote {out / 'flops_qwen25vl.csv'} and {out / 'flops_qwen25vl.md'}")
    return rows


def run(args) -> list[dict]:
    """Table 2 for the family, methods and budgets scripts/flops.py's arguments ask for; the rows."""
    torch.set_num_threads(args.threads)
    if args.family == "qwen25vl":
        return qwen_main(args)

    from svdprune.families import family
    from svdprune.pruning import METHODS

    torch.manual_seed(0)
    lengths, source = prompt_lengths(load_tokenizer(args.tokenizer) if args.tokenizer else None)
    n_text = {k: statistics.fmean(v) for k, v in lengths.items()}
    names = args.methods if args.methods is not None else method_order(METHODS)
    lm = family("llava15").build_tiny(seed=0, vision_layers=24, text_layers=32)
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
    write_csv(out / "flops.csv", rows)
    write_markdown(out / "flops.md", rows, notes, n_text, source)
    print(f"wrote {out / 'flops.csv'} and {out / 'flops.md'}")
    return rows

"""Qwen2.5-VL prefill latency, vanilla vs SVD-Prune (k = 16), side by side in one process.

    python scripts/bench_qwen25vl.py --model /work/qwen25vl7b-random --output-dir results/efficiency

Loads the model once, then for each image (448 x 448: 256 tokens; 1000 x 700: 900 tokens at the model card's
max_pixels) times ``--repeats`` rounds of [vanilla, svd] in alternating order (the machines are shared: the two
variants see the same load, and their ratio is the figure to read), each the engine's path to the first answer
token: the vision tower with its merger (``qwen25vl.vision_tokens``), the method's cut (``qwen25vl.select``) and the
LLM prefill to the first token's logits (``surgery.prefill`` + ``lm_head``). Writes
``latency_qwen25vl_<tag>.{csv,md}`` (medians per component and the svd / vanilla ratio). Without ``--output-dir``
the table goes to a scratch folder.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import cpu_model  # noqa: E402
from flops import qwen_probe_image  # noqa: E402

IMAGES = [(448, 448), (1000, 700)]
QUESTION = "What color is the largest circle?"


@torch.inference_mode()
def first_token(lm, method, image) -> dict[str, float]:
    """Seconds of each stage up to the first answer token's logits, for one question on one image."""
    from svdprune import qwen25vl
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.pruning import PruneContext
    from svdprune.surgery import _new_cache, prefill

    start = time.perf_counter()
    tokens = qwen25vl.vision_tokens(lm, [image])[0]
    vision = time.perf_counter()
    embeds, kept, _ = qwen25vl.select(lm, method, tokens, image, 0, ANSWER_INSTRUCTION)
    cut = time.perf_counter()
    ids = qwen25vl.prompt_ids(lm, QUESTION, ANSWER_INSTRUCTION, len(kept))
    before = ids.index(lm.image_token_id)
    row = qwen25vl._Row(ids, qwen25vl.mrope_positions(before, image.token_grid, kept, len(ids) - before - len(kept)),
                        embeds, {})
    last, _, _ = prefill(lm, qwen25vl._state(lm, [row]), method, PruneContext([QUESTION]), _new_cache(lm))
    lm.model.lm_head(last).argmax(-1).item()
    end = time.perf_counter()
    return {"vision_s": vision - start, "cut_s": cut - vision, "llm_s": end - cut, "total_s": end - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a Qwen2.5-VL folder, or 'tiny' (the random tiny model)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default=None, help="default: cpu-7b for a folder, cpu-tiny for tiny")
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)

    from svdprune import qwen25vl
    from svdprune.pruning import Vanilla, build_method

    if args.model == "tiny":
        lm = qwen25vl.build_tiny(max_pixels=qwen25vl.DEFAULT_MAX_PIXELS, dtype=args.dtype)
    else:
        lm = qwen25vl.load_pretrained(args.model, None, args.dtype, "cpu", min_pixels=qwen25vl.DEFAULT_MIN_PIXELS,
                                      max_pixels=qwen25vl.DEFAULT_MAX_PIXELS, progress=False)
    tag = args.tag or ("cpu-tiny" if args.model == "tiny" else "cpu-7b")
    variants = {"vanilla": Vanilla(), f"svd k={args.budget}": build_method("svd", args.budget, {})}
    rows = []
    for width, height in IMAGES:
        image = qwen25vl.preprocess(lm, qwen_probe_image(width, height))
        for method in variants.values():  # warm-up, not timed
            first_token(lm, method, image)
        times = {name: [] for name in variants}
        for repeat in range(args.repeats):
            order = list(variants.items()) if repeat % 2 == 0 else list(reversed(variants.items()))
            for name, method in order:
                times[name].append(first_token(lm, method, image))
        for name, samples in times.items():
            row = {"image": f"{width}x{height}", "image_tokens": image.num_tokens, "variant": name,
                   **{key: statistics.median(s[key] for s in samples) for key in samples[0]}}
            rows.append(row)
        vanilla, svd = rows[-2], rows[-1]
        svd["ratio_to_vanilla"] = svd["total_s"] / vanilla["total_s"]
        print(f"{width}x{height} ({image.num_tokens} tokens): vanilla {vanilla['total_s']:.2f} s, "
              f"svd k={args.budget} {svd['total_s']:.2f} s (x{svd['ratio_to_vanilla']:.2f})", flush=True)

    out = Path(args.output_dir) if args.output_dir else Path(tempfile.gettempdir()) / "svdprune-bench"
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    with (out / f"latency_qwen25vl_{tag}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
    lines = [f"# Qwen2.5-VL prefill latency on CPU {cpu_model()} ({tag}, {args.dtype})", "",
             f"Generated by `scripts/bench_qwen25vl.py --model {args.model}`: one question per image, time to the first "
             f"answer token's logits, median of {args.repeats} alternating rounds after a warm-up, both variants in one "
             "process. Vision = vision tower + patch merger; cut = SVD-Prune's selection; LLM = prefill + lm_head. "
             "Read the ratio, not the absolute seconds (a shared machine).", "",
             "| image | tokens | variant | vision s | cut s | LLM s | total s | total / vanilla |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio_to_vanilla']:.2f}" if "ratio_to_vanilla" in r else "1.00"
        lines.append(f"| {r['image']} | {r['image_tokens']} | {r['variant']} | {r['vision_s']:.2f} | {r['cut_s']:.3f} | "
                     f"{r['llm_s']:.2f} | {r['total_s']:.2f} | {ratio} |")
    (out / f"latency_qwen25vl_{tag}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / f'latency_qwen25vl_{tag}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

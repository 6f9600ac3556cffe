"""Qwen2.5-VL prefill latency, vanilla vs SVD-Prune (k = 16), side by side in one process.
(``scripts/bench_qwen25vl.py`` is its command line.)

Loads the model once, then for each image (448 x 448: 256 tokens; 1000 x 700: 900 tokens at the model card's
max_pixels) times ``--repeats`` rounds of [vanilla, svd] in alternating order (the machines are shared: the two
variants see the same load, and their ratio is the figure to read), each the engine's path to the first answer
token: the vision tower with its merger (``qwen25vl.vision_tokens``), the method's cut (``qwen25vl.select``) and the
LLM prefill to the first token's logits (``surgery.prefill`` + ``lm_head``). Writes
``latency_qwen25vl_<tag>.{csv,md}`` (medians per component and the svd / vanilla ratio). Without ``--output-dir``
the table goes to a scratch folder.
"""
from __future__ import annotations

import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch

from svdprune.probing import qwen_probe_image
from svdprune.timing import cpu_model

IMAGES = [(448, 448), (1000, 700)]
QUESTION = "What color is the largest circle?"


@torch.inference_mode()
def first_token(lm, method, image) -> dict[str, float]:
    """Seconds of each stage up to the first answer token's logits, for one question on one image."""
    from svdprune.families import family

    qwen25vl = family("qwen25vl")
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.pruning import PruneContext
    from svdprune.surgery import new_cache, prefill

    start = time.perf_counter()
    tokens = qwen25vl.vision_tokens(lm, [image])[0]
    vision = time.perf_counter()
    embeds, kept, _ = qwen25vl.select(lm, method, tokens, image, 0, ANSWER_INSTRUCTION)
    cut = time.perf_counter()
    ids = qwen25vl.prompt_ids(lm, QUESTION, ANSWER_INSTRUCTION, len(kept))
    before = ids.index(lm.image_token_id)
    row = qwen25vl._Row(ids, qwen25vl.mrope_positions(before, image.token_grid, kept, len(ids) - before - len(kept)),
                        embeds, {})
    last, _, _ = prefill(lm, qwen25vl._state(lm, [row]), method, PruneContext([QUESTION]), new_cache(lm))
    lm.model.lm_head(last).argmax(-1).item()
    end = time.perf_counter()
    return {"vision_s": vision - start, "cut_s": cut - vision, "llm_s": end - cut, "total_s": end - start}


QUESTIONS = ["What color is the largest circle?", "How many shapes are there?", "Is there a red square?",
             "What is on the left?", "What shape is in the middle?", "Are the shapes the same size?",
             "What color is the background?", "Is anything blue?"]


def shared_prefix_rows(lm, args) -> list[dict]:
    """Several questions on one image (448 x 448), answered to their first token, vanilla and SVD-Prune: every prompt
    prefilled whole vs the image's prefix once and the question suffixes after it (``generate_by_image``), side by
    side in alternating rounds; the answers must be the same."""
    from svdprune.families import family

    qwen25vl = family("qwen25vl")
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.pruning import Vanilla, build_method

    image = qwen25vl.preprocess(lm, qwen_probe_image(448, 448))
    questions = (QUESTIONS * args.questions)[:args.questions]
    keys = [0] * len(questions)
    rows = []
    for label, method in (("vanilla", Vanilla()), (f"svd k={args.budget}", build_method("svd", args.budget, {}))):
        def whole():
            return qwen25vl._generate_whole(lm, method, questions, keys, {0: image}, instruction=ANSWER_INSTRUCTION,
                                            max_new_tokens=1, seed=0)

        def shared():
            return qwen25vl.generate_by_image(lm, method, questions, keys, {0: image}, instruction=ANSWER_INSTRUCTION,
                                              max_new_tokens=1, prefixes={})

        variants = {"whole prompts": whole, "shared prefix": shared}
        answers = {name: run().token_ids for name, run in variants.items()}  # warm-up, not timed
        same = sum(a == b for a, b in zip(answers["whole prompts"], answers["shared prefix"]))
        times = {name: [] for name in variants}
        for repeat in range(args.repeats):
            order = list(variants.items()) if repeat % 2 == 0 else list(reversed(variants.items()))
            for name, run in order:
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        whole_s, shared_s = (statistics.median(times[name]) for name in variants)
        rows.append({"image": "448x448", "image_tokens": image.num_tokens, "method": label,
                     "questions": len(questions), "whole_s": whole_s, "shared_s": shared_s,
                     "ratio": shared_s / whole_s, "same_first_token": same})
        print(f"{label}: {len(questions)} questions, whole prompts {whole_s:.2f} s, shared prefix {shared_s:.2f} s "
              f"(x{shared_s / whole_s:.2f}), same first token {same}/{len(questions)}", flush=True)
    return rows


def write_shared_prefix(out: Path, tag: str, rows: list[dict], args) -> None:
    with (out / f"shared_prefix_qwen25vl_{tag}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
    lines = [f"# Qwen2.5-VL: one prefix per image vs whole prompts, CPU {cpu_model()} ({tag}, {args.dtype})", "",
             f"Generated by `scripts/bench_qwen25vl.py --model {args.model} --questions {args.questions}`: "
             f"{args.questions} questions on one 448 x 448 image in one batch, answered to their first token, median of "
             f"{args.repeats} alternating rounds after a warm-up; `same` = questions whose first answer token is the "
             "same on both paths (the two prefill the same tokens in differently shaped products, so in bfloat16 a "
             "near-tie of a random model's logits can flip; in float32 the tests find them equal). Whole "
             "prompts: the vision tower once, every prompt prefilled in full; shared prefix: the prompt up to and "
             "including the image tokens prefilled once, then only the question suffixes (run.py's by-image schedule).",
             "", "| image | tokens | method | questions | whole prompts s | shared prefix s | shared / whole | same |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['image']} | {r['image_tokens']} | {r['method']} | {r['questions']} | {r['whole_s']:.2f} | "
                     f"{r['shared_s']:.2f} | {r['ratio']:.2f} | {r['same_first_token']}/{r['questions']} |")
    (out / f"shared_prefix_qwen25vl_{tag}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / f'shared_prefix_qwen25vl_{tag}.md'}")


def run(args) -> int:
    """What scripts/bench_qwen25vl.py's arguments ask for; 0."""
    from svdprune.families import family

    qwen25vl = family("qwen25vl")
    from svdprune.pruning import Vanilla, build_method

    if args.model == "tiny":
        lm = qwen25vl.build_tiny(max_pixels=qwen25vl.DEFAULT_MAX_PIXELS, dtype=args.dtype)
    else:
        lm = qwen25vl.load_pretrained(args.model, None, args.dtype, "cpu", min_pixels=qwen25vl.DEFAULT_MIN_PIXELS,
                                      max_pixels=qwen25vl.DEFAULT_MAX_PIXELS, progress=False)
    tag = args.tag or ("cpu-tiny" if args.model == "tiny" else "cpu-7b")
    out = Path(args.output_dir) if args.output_dir else Path(tempfile.gettempdir()) / "svdprune-bench"
    out.mkdir(parents=True, exist_ok=True)
    if args.questions:
        write_shared_prefix(out, tag, shared_prefix_rows(lm, args), args)
        return 0
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

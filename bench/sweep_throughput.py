"""What scheduling questions by image buys a sweep: measured questions/s of the old per-question path and the
by-image path in one invocation, and the analytic compute of the whole Table 1 sweep before and after.
(``scripts/bench_sweep_throughput.py`` is its command line.)

**Throughput** (``sweep_throughput_<device>.{csv,md}``): a GQA-shaped local fixture written to a temporary folder
(``--images`` 640 x 480 JPEGs with photo-like texture, so that decoding one costs what a photo costs, and
``--questions-per-image`` GQA-style questions each, in a seeded shuffled order as a dataset has them), run on the
mini model (``checkpoints/mini``) through the runner's own loop (:func:`harness.schedule.answer_batches`):
``per_question`` (each question decodes its image on the main thread, runs the vision tower, the cut and the
whole prompt) against ``by_image`` (images decoded ahead by a thread pool, vision tower, cut and prompt prefix
once per image, only question suffixes per question). The timed span is the whole loop: image decoding
included, model loading and scoring not. One warm-up batch per configuration; old and new alternate
configuration by configuration; the answers of the two paths are compared question by question.

**Compute** (``sweep_compute.{csv,md}``): multiply-accumulates of the prefill of every run of Table 1 for
LLaVA-1.5-7B (GQA testdev-balanced: 12,578 questions on 398 images; TextVQA val: 5,000 on 3,166), per method,
with the per-layer token counts and component costs of ``results/efficiency/flops.csv`` (``scripts/flops.py``)
and :func:`svdprune.flops.exact_llm_layer_flops` (the architecture count, FLOPs / 2; attention counted dense,
no causal saving, in both columns). Before: every question pays vision tower, selection, projector and its whole
prompt. After: vision tower (+ selection, projector) once per image; vanilla and encoder-side methods also prefill
the prompt prefix (34 tokens + k image tokens) once per image and per question only the suffix (attending to the
prefix); decoder-side methods prefill the whole prompt per question; TRIM (question-dependent) runs its cut,
projector and whole prompt per question. Decoding is the same before and after and is not counted.
"""
from __future__ import annotations

import csv
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch
from PIL import Image

from svdprune import flops as F
from svdprune.probing import GQA_SAMPLE_QUESTIONS, RECORDED_LENGTHS  # sample questions, 7B prompt lengths
from svdprune.timing import cpu_model

OUT = ROOT / "results" / "efficiency"
# Table 1's datasets: (questions, distinct images) of the evaluated split
DATASETS = {"gqa": (12578, 398), "textvqa": (5000, 3166)}
TEXT_BEFORE_IMAGE = 34  # BOS + system prompt + " USER: " with the Llama-2 tokenizer (scripts/flops.py)
TABLE1_BUDGETS = (192, 128, 64, 32, 16)


# ------------------------------------------------------------------------------------------------ fixture

def photo_like(seed: int, size=(640, 480)) -> Image.Image:
    """A 640 x 480 image with smooth gradients, a few shapes and fine-grained noise: its JPEG carries about as
    much detail as a photo (150-250 KB at quality 90), so decoding it costs what decoding a photo costs."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width] / max(size)
    base = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)),
                     np.sin(4 * (xx + yy) + rng.uniform(0, 6))], -1) * 0.25 + 0.5
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width / max(size)), rng.uniform(0, height / max(size)), rng.uniform(0.02, 0.15)
        base[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    noise = rng.normal(0, 0.08, (height, width, 3))
    return Image.fromarray((np.clip(base + noise, 0, 1) * 255).astype(np.uint8))


def write_fixture(folder: Path, images: int, per_image: int, seed: int = 0) -> dict:
    """questions.jsonl + images/ in the local format; questions of all images shuffled (seeded)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    sizes = []
    for i in range(images):
        path = folder / "images" / f"img{i:04d}.jpg"
        photo_like(seed * 1000 + i).save(path, quality=90)
        sizes.append(path.stat().st_size)
    lines = [{"question_id": f"q{i}-{j}", "image": f"img{i:04d}.jpg",
              "question": GQA_SAMPLE_QUESTIONS[(i + j) % len(GQA_SAMPLE_QUESTIONS)], "answer": "yes"}
             for i in range(images) for j in range(per_image)]
    random.Random(seed).shuffle(lines)
    (folder / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"images": images, "questions": len(lines), "jpeg_kb_mean": statistics.fmean(sizes) / 1024}


def jpeg_decode_ms(folder: Path, repeat: int = 3) -> float:
    """Mean time to open + decode + convert one fixture JPEG (the per-question cost of the old path's loading)."""
    paths = sorted((folder / "images").glob("*.jpg"))
    started = time.perf_counter()
    for _ in range(repeat):
        for p in paths:
            with Image.open(p) as image:
                image.convert("RGB").load()
    return 1000 * (time.perf_counter() - started) / (repeat * len(paths))


# --------------------------------------------------------------------------------------------- throughput

def timed_pass(lm, method, records, schedule: str, batch: int, args) -> tuple[float, dict]:
    """Seconds to answer all ``records`` through the runner's loop, and the answers by question id."""
    from harness.schedule import answer_batches
    from svdprune.prompts import ANSWER_INSTRUCTION

    warm = records[:batch]
    for _ in answer_batches(lm, method, warm, batch_size=batch, instruction=ANSWER_INSTRUCTION,
                            max_new_tokens=args.max_new_tokens, seed=0, schedule=schedule, workers=args.workers):
        pass
    answers = {}
    started = time.perf_counter()
    for done, out, _ in answer_batches(lm, method, records, batch_size=batch, instruction=ANSWER_INSTRUCTION,
                                       max_new_tokens=args.max_new_tokens, seed=0, schedule=schedule,
                                       workers=args.workers):
        answers.update({r.question_id: ids for r, ids in zip(done, out.token_ids)})
    return time.perf_counter() - started, answers


@torch.inference_mode()
def first_token_logit_gap(lm, method, records, batch: int = 16) -> tuple[float, float]:
    """Whole-prompt prefill vs prefix + suffix prefill, float32: (max |logit difference| of the first answer
    token over ``records``, smallest top-1 minus top-2 logit margin). Rows batched in dataset order."""
    from svdprune.prompts import ANSWER_INSTRUCTION, vicuna_prompt
    from svdprune.pruning import PruneContext
    from svdprune.surgery import new_cache, prefill
    from svdprune.families import family
    from svdprune.surgery import prefill_suffixes
    from eval.datasets import load_image
    from svdprune.prompts import preprocess_image

    llava15 = family("llava15")

    gap, margin = 0.0, float("inf")
    for start in range(0, len(records), batch):
        rows = records[start:start + batch]
        pixels = torch.stack([preprocess_image(load_image(r), lm.image_size, lm.image_mean, lm.image_std)
                              for r in rows])
        prompts = [vicuna_prompt(r.question, ANSWER_INSTRUCTION) for r in rows]
        context = PruneContext(None, model=lm.model)
        embeds = llava15.encode_images(lm, method, llava15.to_model(lm, pixels, context), context)
        full, _, _ = prefill(lm, llava15.build_inputs(lm, prompts, embeds), method, PruneContext(None), new_cache(lm))
        prefix, _ = llava15.split_prompt(lm, prompts[0], embeds.shape[1])
        kv = llava15.prefill_prefixes(lm, prefix, embeds)  # one prefix per row (same numbers as one per image)
        shared, _ = prefill_suffixes(lm, kv, len(prefix), [llava15.split_prompt(lm, p, embeds.shape[1])[1] for p in prompts],
                                     new_cache(lm))
        a, b = lm.model.lm_head(full), lm.model.lm_head(shared)
        gap = max(gap, float((a - b).abs().max()))
        top = a.topk(2, dim=-1).values
        margin = min(margin, float((top[:, 0] - top[:, 1]).min()))
    return gap, margin


def throughput(args) -> list[dict]:
    from omegaconf import OmegaConf

    from eval.datasets import load_local
    from svdprune.families import family
    from svdprune.pruning import build_method

    load_pretrained = family("llava15").load_pretrained

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_pretrained(str(args.model), None, "float32", "cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="svdprune_sweep_") as tmp:
        info = write_fixture(Path(tmp), args.images, args.questions_per_image)
        decode_ms = jpeg_decode_ms(Path(tmp))
        records = load_local(OmegaConf.create({"name": "local", "path": tmp})).records
        print(f"fixture: {info['questions']} questions on {info['images']} images "
              f"({info['jpeg_kb_mean']:.0f} KB JPEGs, {decode_ms:.1f} ms to decode one)", flush=True)
        for name, budget in args.configs:
            method = build_method(name, budget, {})
            if method.kind == "none":
                budget = method.budget = lm.num_patches
            for batch in args.batch_sizes:
                seconds, answers = {}, {}
                for schedule in ("per_question", "by_image"):
                    seconds[schedule], answers[schedule] = timed_pass(lm, method, records, schedule, batch, args)
                n = len(records)
                same = sum(answers["per_question"][q] == answers["by_image"][q] for q in answers["per_question"])
                row = dict(cpu=cpu_model(), torch_threads=torch.get_num_threads(), image_workers=args.workers,
                           model="mini", method=name, budget=budget, batch_size=batch, questions=n,
                           images=info["images"], old_questions_per_s=n / seconds["per_question"],
                           new_questions_per_s=n / seconds["by_image"],
                           speedup=seconds["per_question"] / seconds["by_image"], identical_answers=same,
                           jpeg_decode_ms=decode_ms, max_new_tokens=args.max_new_tokens)
                if batch == args.batch_sizes[0]:
                    row["max_abs_logit_diff"], row["min_top1_margin"] = first_token_logit_gap(lm, method, records)
                rows.append(row)
                print(f"{name:8s} k={budget:3d} batch {batch:2d}: old {row['old_questions_per_s']:7.1f} q/s, "
                      f"new {row['new_questions_per_s']:7.1f} q/s, x{row['speedup']:.2f}, "
                      f"{same}/{n} identical answers", flush=True)
    return rows


def write_throughput(rows: list[dict], args) -> None:
    path = OUT / "sweep_throughput_cpu"
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    first = rows[0]
    lines = [f"# Sweep throughput: per-question path vs by-image schedule (CPU: {first['cpu']})", "",
             f"Generated by `scripts/bench_sweep_throughput.py`: mini model (`checkpoints/mini`, float32), "
             f"{first['questions']} GQA-style questions on {first['images']} photo-like 640 x 480 JPEGs "
             f"({first['jpeg_decode_ms']:.1f} ms to decode one), greedy, max_new_tokens {first['max_new_tokens']}, "
             f"torch threads {first['torch_threads']}, image threads {first['image_workers']}. Questions/s of the "
             "runner's whole loop (image decoding included), old and new measured in the same invocation.", "",
             "| method | k | batch | old q/s | new q/s | speed-up | identical answers |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['budget']} | {r['batch_size']} | {r['old_questions_per_s']:.1f} | "
                     f"{r['new_questions_per_s']:.1f} | {r['speedup']:.2f}x | {r['identical_answers']}/{r['questions']} |")
    lines += ["", "Floating point (float32): largest |difference| between the first answer token's logits of the "
              "whole-prompt prefill and of the prefix + suffix prefill, and the smallest top-1 - top-2 margin:", ""]
    lines += [f"- {r['method']} k={r['budget']}: max |d logit| {r['max_abs_logit_diff']:.2e}, min margin "
              f"{r['min_top1_margin']:.2f}" for r in rows if r.get("max_abs_logit_diff") is not None]
    lines += ["", "CPU figures on a 2-layer, 64-wide model: the LLM is nearly free, so the old path's cost is mostly "
              "image decoding, preprocessing and the vision tower, which the new path pays once per image. Shared "
              "machine: figures move with the load; the ratio of the two paths, measured back to back, is the result."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {path.with_suffix('.csv')} and .md")


# ------------------------------------------------------------------------------------------------ compute

def llm_macs(tokens_per_layer: list[float], kv_len: list[float] | None = None) -> float:
    """MACs of the LLM layers, query lengths ``tokens_per_layer`` over ``kv_len`` keys (default: themselves)."""
    kv_len = kv_len or tokens_per_layer
    return sum(F.exact_llm_layer_flops(n, F.LLAVA15_7B, kv_len=s) for n, s in zip(tokens_per_layer, kv_len)) / 2


def sweep_rows(flops_csv: Path) -> list[dict]:
    """Per (dataset, method, budget) of Table 1: prefill MACs of the run before and after, from flops.csv."""
    table = {(r["method"], int(r["budget"])): r for r in csv.DictReader(flops_csv.open())}
    lm_head = F.exact_lm_head_flops(F.LLAVA15_7B) / 2
    rows = []
    for dataset, (questions, images) in DATASETS.items():
        text = statistics.fmean(RECORDED_LENGTHS[dataset])  # prompt text tokens (image excluded)
        suffix = text - TEXT_BEFORE_IMAGE
        runs = [("vanilla", 576)] + [(m, b) for m, b in table if m != "vanilla" and b in TABLE1_BUDGETS]
        for method, budget in runs:
            r = table[(method, budget)]
            image_per_layer = [float(k) for k in r["llm_tokens_per_layer"].split()]
            vision = float(r["true_vision_G"]) * 1e9
            overhead = float(r["paper_overhead_G"] or 0) * 1e9
            projector = float(r["true_projector_G"]) * 1e9
            whole_prompt = llm_macs([k + text for k in image_per_layer]) + lm_head
            before = questions * (vision + overhead + projector + whole_prompt)
            if r["kind"] == "decoder":
                after, how = images * (vision + projector) + questions * whole_prompt, "vision once per image"
            elif method == "trim":
                after = images * vision + questions * (projector + whole_prompt)
                how = "vision once per image; cut and whole prompt per question"
            else:
                prefix = [k + TEXT_BEFORE_IMAGE for k in image_per_layer]
                per_image = vision + overhead + projector + llm_macs(prefix)
                per_question = llm_macs([suffix] * len(prefix), [p + suffix for p in prefix]) + lm_head
                after, how = images * per_image + questions * per_question, "vision and prompt prefix once per image"
            rows.append(dict(dataset=dataset, method=method, kind=r["kind"], budget=budget, questions=questions,
                             images=images, before_PMAC=before / 1e15, after_PMAC=after / 1e15,
                             reduction_pct=100 * (1 - after / before), after_over_before=after / before, shared=how))
    return rows


def write_compute(rows: list[dict]) -> None:
    path = OUT / "sweep_compute"
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    total_before = sum(r["before_PMAC"] for r in rows)
    total_after = sum(r["after_PMAC"] for r in rows)
    lines = ["# Compute of the whole Table 1 sweep, LLaVA-1.5-7B: per-question path vs by-image schedule", "",
             "Generated by `scripts/bench_sweep_throughput.py --compute-only` from `results/efficiency/flops.csv`: "
             "prefill multiply-accumulates (architecture count, FLOPs / 2, dense attention; decoding is the same "
             "before and after and is not counted) of every Table 1 run: budgets 192..16 per method, vanilla once "
             f"per dataset. GQA testdev-balanced {DATASETS['gqa'][0]:,} questions on {DATASETS['gqa'][1]} images, "
             f"TextVQA val {DATASETS['textvqa'][0]:,} on {DATASETS['textvqa'][1]:,}.", "",
             "| method | how it is shared | GQA before (PMAC) | GQA after | TextVQA before | TextVQA after | "
             "sweep before | sweep after | reduction |", "|---|---|---|---|---|---|---|---|---|"]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        by = {d: [r for r in mine if r["dataset"] == d] for d in DATASETS}
        before, after = sum(r["before_PMAC"] for r in mine), sum(r["after_PMAC"] for r in mine)
        lines.append(f"| {method} | {mine[0]['shared']} | {sum(r['before_PMAC'] for r in by['gqa']):.2f} | "
                     f"{sum(r['after_PMAC'] for r in by['gqa']):.2f} | {sum(r['before_PMAC'] for r in by['textvqa']):.2f} | "
                     f"{sum(r['after_PMAC'] for r in by['textvqa']):.2f} | {before:.2f} | {after:.2f} | "
                     f"{100 * (1 - after / before):.1f}% |")
    lines.append(f"| **all** | | | | | | **{total_before:.2f}** | **{total_after:.2f}** | "
                 f"**{100 * (1 - total_after / total_before):.1f}%** |")
    lines += ["", "Per run (budget) in `sweep_compute.csv`. Assumes each image's questions are answered while its "
              "prefix is held (the by-image schedule keeps it across batches; TRIM re-runs the vision tower once per "
              "batch an image appears in, counted here once per image)."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {path.with_suffix('.csv')} and .md")


def run(args):
    """What scripts/bench_sweep_throughput.py's arguments ask for: the compute table, and the throughput unless ``--compute-only``."""
    args.configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs]
    OUT.mkdir(parents=True, exist_ok=True)
    write_compute(sweep_rows(OUT / "flops.csv"))
    if not args.compute_only:
        write_throughput(throughput(args), args)

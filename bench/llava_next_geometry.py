"""LLaVA-NeXT-7B geometry on the CPU: every supported method through run.py on a 336 x 336 and a 672 x 672 image,
time to first token side by side, and Table 2-style compute per image size.
(``scripts/llava_next_geometry.py`` is its command line.)

1. ``--model`` (written when absent): ``LlavaNextForConditionalGeneration`` in bfloat16 with HF's random
   initialisation in llava-v1.6-vicuna-7b's geometry as reconstructed here (:func:`svdprune.checkpoints.llava_next.next_7b_config`: LLaVA-1.5-7B's CLIP
   ViT-L/14-336 and Vicuna-7B, the v1.6 pinpoints 336 x 672 .. 672 x 672, 336 x 1008, an ``image_newline``; not read
   from the hub, which this machine cannot reach), the project's tiny byte-level tokenizer (prompt lengths a few tokens
   off Llama-2's) and the llava-hf image processor. Answers are noise; shapes, dtypes and costs are the 7B's.
2. Runs: one ``python run.py model=llava_next_7b model.path=... model.dtype=bfloat16 max_new_tokens=1 ...`` process
   per (method, budget) under ``/usr/bin/time -v`` (wall time and peak RSS include loading the weights), on one
   question per image; per image: its tokens, the tokens after the first cut, the mean over the 32 LLM layers.
3. Compute per (image, method, budget): FLOPs of the prefill (torch's counter convention, :mod:`svdprune.flops`):
   the vision tower once per view (base view + tiles, 577 tokens and 24 layers each), the projector over every
   view's 576 tokens (before unpadding), the LLM over the per-layer token counts the run recorded, lm_head once.
4. Time to first token in one process (the weights loaded once): vanilla, SVD-Prune at 640 and at 160, each image,
   alternating, the median of ``--repeats``.
Writes ``llava_next_runs_cpu-7b.{csv,md}`` and ``llava_next_ttft_cpu-7b.md`` to ``--output-dir`` (a scratch folder
by default).
"""
from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from svdprune.checkpoints.llava_next import write_model

ROOT = Path(__file__).resolve().parents[1]
IMAGES = [(336, 336), (672, 672)]  # width x height
BUDGETS = {"svd": [640, 320, 160]}  # every other method at 640


def write_fixture(folder: Path) -> Path:
    from eval.fixtures import write_local_fixture

    write_local_fixture(folder, questions=len(IMAGES), images=len(IMAGES), seed=0)
    lines = [json.loads(line) for line in (folder / "questions.jsonl").read_text().splitlines()]
    from PIL import Image

    for i, (line, (width, height)) in enumerate(zip(lines, IMAGES)):  # the fixture's shapes, at the sizes wanted
        path = folder / "images" / line["image"]
        Image.open(path).convert("RGB").resize((width, height)).save(path)
    return folder


def time_v(stderr: str) -> tuple[float | None, float | None]:
    wall = rss = None
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr)
    if match:
        wall = sum(float(p) * 60 ** i for i, p in enumerate(reversed(match.group(1).split(":"))))
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if match:
        rss = int(match.group(1)) * 1024 / 1e9
    return wall, rss


def run_one(model: Path, fixture: Path, runs: Path, method: str, budget: int) -> list[dict]:
    command = [sys.executable, "run.py", "model=llava_next_7b", f"model.path={model}", "model.dtype=bfloat16",
               "model.device=cpu", "dataset=local", f"dataset.path={fixture}", "max_new_tokens=1", f"method={method}",
               f"budget={budget}", f"output_dir={runs}", "progress=false", "batch_size=1"]
    done = subprocess.run(["/usr/bin/time", "-v", *command], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    wall, rss = time_v(done.stderr)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()
        print(f"{method} k={budget}: FAILED {tail[-1] if tail else ''}", flush=True)
        return [{"method": method, "budget": budget, "exit": done.returncode, "wall_s": wall, "peak_rss_gb": rss}]
    [folder] = [p.parent for p in (runs / "local" / method).glob("*/metrics.json")
                if json.loads(p.read_text())["budget"] == budget or method == "vanilla"]
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = []
    for line in (folder / "predictions.jsonl").read_text().splitlines():
        pred = json.loads(line)
        per_layer = pred["image_tokens_per_layer"]
        width, height = IMAGES[int(pred["question_id"][1:])]
        rows.append({"image": f"{width}x{height}", "method": method, "budget": budget, "exit": 0,
                     "image_tokens": pred["image_tokens_unpruned"], "kept": pred["kept_tokens"],
                     "mean_over_layers": round(sum(per_layer) / len(per_layer), 2),
                     "prompt_tokens": pred.get("prompt_tokens"), "per_layer": per_layer,
                     "wall_s": round(wall or 0, 1), "peak_rss_gb": round(rss or 0, 2),
                     "generation_s": round(metrics["generation_time_s"], 2)})
    print(f"{method} k={budget}: " + "; ".join(f"{r['image']} {r['image_tokens']} -> {r['kept']} "
                                              f"(mean {r['mean_over_layers']})" for r in rows)
          + f"; wall {wall:.0f} s, RSS {rss:.1f} GB", flush=True)
    return rows


def prefill_flops(row: dict, config) -> dict:
    """Prefill FLOPs of one image's run (torch's counter convention): vision per view, projector over every view's
    tokens, the LLM over the recorded per-layer counts (text = prompt tokens - image tokens entering layer 0)."""
    from svdprune import flops as F
    from svdprune.families import family

    official_tiles = family("llava_next").official_tiles
    g = F.Geometry.from_config(config)
    width, height = (int(v) for v in row["image"].split("x"))
    tiles = official_tiles(config, (height, width))
    views = 1 + tiles[0] * tiles[1]
    text = row["prompt_tokens"] - row["per_layer"][0]
    vision = views * F.exact_vision_flops([g.vision_tokens] * g.vision_layers, None, g)
    projector = F.exact_projector_flops(views * g.num_patches, g)
    llm = F.exact_llm_flops([text + n for n in row["per_layer"]], g)
    total = vision + projector + llm + F.exact_lm_head_flops(g)
    return {"views": views, "vision_T": round(vision / 1e12, 3), "projector_T": round(projector / 1e12, 3),
            "llm_T": round(llm / 1e12, 3), "total_T": round(total / 1e12, 3),
            "vision_share_pct": round(100 * vision / total, 1)}


def time_to_first_token(model: Path, fixture: Path, repeats: int) -> list[dict]:
    """Vanilla, SVD-Prune at 640 and 160, per image, alternating in one process: median seconds to the first
    token (image preprocessing, vision, cut, prefill, first logits; one generated token)."""
    from PIL import Image

    from svdprune.families import family, generate
    from svdprune.pruning import build_method, default_params

    lm = family("llava_next").load_pretrained(str(model), None, "bfloat16", "cpu", progress=False)
    lines = [json.loads(line) for line in (fixture / "questions.jsonl").read_text().splitlines()]
    images = [Image.open(fixture / "images" / line["image"]).convert("RGB") for line in lines]
    variants = [("vanilla", 2928), ("svd", 640), ("svd", 160)]
    times: dict = {}
    for _ in range(repeats):
        for image, line in zip(images, lines):
            for name, budget in variants:
                method = build_method(name, budget, default_params(name))
                if name == "vanilla":
                    method.budget = lm.num_patches
                started = time.perf_counter()
                generate(lm, method, [line["question"]], [image], instruction=None, max_new_tokens=1)
                times.setdefault((image.size, name, budget), []).append(time.perf_counter() - started)
    rows = []
    for (size, name, budget), values in times.items():
        base = statistics.median(times[(size, "vanilla", 2928)])
        rows.append({"image": f"{size[0]}x{size[1]}", "method": name, "budget": budget,
                     "ttft_s": round(statistics.median(values), 2), "speedup_vs_vanilla": round(base / statistics.median(values), 2)})
    return rows


def run(args) -> int:
    """The runs, TTFT and compute scripts/llava_next_geometry.py's arguments ask for; 0 when every run passed."""
    from svdprune.families import supported_methods

    if not (args.model / "config.json").is_file():
        args.model.mkdir(parents=True, exist_ok=True)
        write_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="svdprune_next7b_"))
    fixture = write_fixture(work / "fixture")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    if not args.skip_runs:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model)
        plan = [("vanilla", 2928)] + [(m, b) for m in supported_methods("llava_next") if m not in ("vanilla", "pooling")
                                      for b in BUDGETS.get(m, [640])]
        for method, budget in plan:
            for row in run_one(args.model, fixture, work / "runs", method, budget):
                if row.get("exit") == 0:
                    row.update(prefill_flops(row, config))
                rows.append(row)
        with (args.output_dir / "llava_next_runs_cpu-7b.csv").open("w", newline="") as f:
            columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "per_layer"]
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        header = ["image", "method", "budget", "image_tokens", "kept", "mean_over_layers", "views", "vision_T",
                  "projector_T", "llm_T", "total_T", "vision_share_pct", "wall_s", "peak_rss_gb"]
        lines = ["# LLaVA-NeXT-7B geometry through run.py on the CPU", "",
                 "Generated by `scripts/llava_next_geometry.py` (random bf16 weights in llava-v1.6-vicuna-7b's geometry as "
                 "reconstructed there, one question per image, max_new_tokens=1, batch 1); each method one `python run.py` "
                 "process under `/usr/bin/time -v` (wall and peak RSS include loading 14 GB of weights). `kept`: image tokens "
                 "after the first cut; compute: prefill FLOPs in T (10^12), vision = one CLIP pass per view.", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in header) + " |" for r in rows]
        (args.output_dir / "llava_next_runs_cpu-7b.md").write_text("\n".join(lines) + "\n")
    ttft = time_to_first_token(args.model, fixture, args.repeats)
    lines = ["# LLaVA-NeXT-7B geometry: time to first token on the CPU (one process, alternating)", "",
             f"Generated by `scripts/llava_next_geometry.py`; bf16, 2 threads of this CPU, median of {args.repeats}.", "",
             "| image | method | budget | TTFT s | speed-up vs vanilla |", "|---|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['method']} | {r['budget']} | {r['ttft_s']} | {r['speedup_vs_vanilla']}x |" for r in ttft]
    (args.output_dir / "llava_next_ttft_cpu-7b.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0

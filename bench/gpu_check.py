"""GPU day one in one prepared script (issue 22, item 5): what only a GPU can show, checked and written down.

``scripts/gpu_check.py`` is its command line.

No network and no pip: everything is built from configs and random weights (LLaVA-1.5-7B's geometry on the GPU
itself), or read from the committed checkpoints. Sections, each a CSV + Markdown file named
``<section>_cuda-<gpu>`` (``_cpu-dryrun`` for the dry run) in ``--output-dir`` (default ``results/efficiency``
on a GPU, a scratch folder for the dry run):

1. ``gpu_methods``: every method in float16 through both engine paths (``per_question`` and ``by_image``) on
   ``tiny`` (LLaVA depth) and ``mini``: no NaN/inf in the projector output or the logits, the share of answers
   the two paths agree on (half precision can flip near-ties, see the README), and the rotary ``inv_freq``
   buffers still float32.
2. ``gpu_memory``: at LLaVA-1.5-7B geometry, fp16: peak allocated / reserved memory of one batch per method,
   schedule and batch size 1..16, next to :mod:`svdprune.memory`'s estimate.
3. ``gpu_oom``: the out-of-memory path under an emulated 16 GB card (``set_per_process_memory_fraction``):
   vanilla at batch 32 must halve until it fits and answer every question.
4. ``gpu_svd``: SVD-Prune's selection on the device vs the CPU (same kept sets?) and its time per solver.
5. Table 3 at 7B geometry (vanilla, SVD-Prune k=16, FastV, SparseVLM, ToMe) through ``scripts/bench_latency.py``
   (``latency_cuda-<gpu>-7b``).

Exit status 0 when every check passed (NaN-free, rotary float32, OOM path answered everything, selections
agree), 1 otherwise; the files are written either way.
"""
from __future__ import annotations

import csv
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

METHODS_7B = ["vanilla", "svd", "fastv", "sparsevlm", "tome", "pyramiddrop", "visionzip"]
TABLE3 = ["vanilla", "svd", "fastv", "sparsevlm", "tome"]
QUESTIONS = ["What color is the shape?", "Is there a circle?", "How many objects are there?",
             "What is on the left side?"]


# ------------------------------------------------------------------------------------------------ helpers


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (240 + 16 * i, 320, 3), dtype=np.uint8)) for i in range(n)]


def records(n_questions: int, per_image: int = 4, seed: int = 0):
    """``n_questions`` records over ceil(n / per_image) in-memory images (GQA-like sharing)."""
    from eval.datasets import Record

    pictures = images(math.ceil(n_questions / per_image), seed)
    return [Record(question_id=f"q{i}", question=QUESTIONS[i % len(QUESTIONS)], answers=["x"],
                   image=(lambda img=pictures[i // per_image]: img), image_id=f"img{i // per_image}")
            for i in range(n_questions)]


def method_params(model: str, method: str, budget: int) -> dict:
    """The method's parameters as a run on ``model`` composes them (mini: the scaled schedules)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from harness.mini_protocol import mini_overrides

    extra = mini_overrides(method, budget) if model == "mini" else []
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", f"method={method}", f"budget={budget}", *extra])
    return OmegaConf.to_container(cfg.method.params, resolve=True) if cfg.method.get("params") is not None else {}


def answer(lm, method, recs, schedule: str, batch_size: int, max_new_tokens: int) -> list[str]:
    from harness.schedule import answer_batches

    out = []
    for batch, generation, _ in answer_batches(lm, method, recs, batch_size=batch_size, instruction=None,
                                               max_new_tokens=max_new_tokens, seed=0, schedule=schedule):
        out += [f"{r.question_id}={t}" for r, t in zip(batch, generation.texts)]
    return sorted(out)


class FiniteWatch:
    """Forward hooks on the projector and lm_head: did any output hold NaN or inf?"""

    def __init__(self, lm):
        self.bad: list[str] = []
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in
                         (("projector", lm.projector), ("lm_head", lm.model.lm_head))]

    def _hook(self, name):
        def hook(module, inputs, output):
            if not bool(torch.isfinite(output).all()):
                self.bad.append(name)
        return hook

    def remove(self):
        for handle in self._handles:
            handle.remove()


def rotary_fp32(lm) -> bool:
    return all(b.dtype == torch.float32 for n, b in lm.model.named_buffers() if n.endswith("inv_freq"))


def gpu_tag(device: torch.device, dry_run: bool) -> str:
    if dry_run:
        return "cpu-dryrun"
    name = torch.cuda.get_device_name(device).lower()
    for word in ("h200", "h100", "a100", "l40s", "l4", "a10g", "4090", "3090", "3080", "v100", "t4"):
        if word in name:
            return f"cuda-{word}"
    return "cuda-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")


def write(rows: list[dict], out: Path, name: str, title: str, notes: list[str]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with (out / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# {title}", "", "Written by `scripts/gpu_check.py`.", *[f"- {n}" for n in notes], "",
             "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(_cell(row.get(f)) for f in fields) + " |" for row in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


# ------------------------------------------------------------------------------------------------ sections


def check_methods(models: dict, budgets, n_questions: int, max_new_tokens: int) -> list[dict]:
    from svdprune.errors import UserError
    from svdprune.pruning import METHODS, build_method

    rows = []
    recs = records(n_questions)
    for model_name, lm in models.items():
        for method_name in sorted(METHODS):
            for budget in budgets if method_name != "vanilla" else [lm.num_patches]:
                row = {"model": model_name, "dtype": str(lm.dtype)[6:], "method": method_name, "budget": budget}
                try:
                    if model_name == "mini" and method_name == "trim":
                        raise UserError("no CLIP for mini (checkpoints/mini has no text tower)")
                    method = build_method(method_name, budget, method_params(model_name, method_name, budget))
                    method.check(lm)
                except UserError as exc:
                    rows.append({**row, "status": f"n/a: {str(exc)[:90]}"})
                    continue
                watch = FiniteWatch(lm)
                try:
                    per_question = answer(lm, method, recs, "per_question", 4, max_new_tokens)
                    by_image = answer(lm, method, recs, "by_image", 4, max_new_tokens)
                finally:
                    watch.remove()
                same = sum(a == b for a, b in zip(per_question, by_image)) / len(per_question)
                ok = not watch.bad and rotary_fp32(lm)
                rows.append({**row, "status": "ok" if ok else "FAIL", "non_finite": ",".join(sorted(set(watch.bad))),
                             "rotary_float32": rotary_fp32(lm), "paths_agree": round(same, 3)})
    return rows


def check_memory(lm, device: torch.device, methods, schedules, batches, max_new_tokens: int) -> list[dict]:
    from svdprune import memory
    from svdprune.pruning import build_method

    rows = []
    cuda = device.type == "cuda"
    for method_name in methods:
        params = method_params("llava15_7b", method_name, 16) if method_name != "vanilla" else {}
        for schedule in schedules:
            for batch in batches:
                method = build_method(method_name, 16, params)
                estimate = memory.estimate(lm.model.config, method, batch, lm.dtype, max_new_tokens)
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                started = time.perf_counter()
                answer(lm, method, records(batch), schedule, batch, max_new_tokens)
                seconds = time.perf_counter() - started
                allocated = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
                reserved = torch.cuda.max_memory_reserved(device) / 1e9 if cuda else None
                rows.append({"method": method_name, "schedule": schedule, "batch": batch,
                             "estimate_gb": round(estimate.peak / 1e9, 3), "peak_allocated_gb": allocated,
                             "peak_reserved_gb": reserved,
                             "estimate_over_allocated": round(estimate.peak / 1e9 / allocated, 3) if allocated else None,
                             "seconds": round(seconds, 2)})
    return rows


def check_oom(lm, device: torch.device, cap_gb: float, batch: int, max_new_tokens: int) -> list[dict]:
    from svdprune.pruning import build_method

    if device.type != "cuda":
        return [{"cap_gb": cap_gb, "status": "skipped: needs CUDA (set_per_process_memory_fraction)"}]
    total = torch.cuda.get_device_properties(device).total_memory
    halvings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            halvings.append(record.getMessage())

    handler = Collect()
    logging.getLogger("harness.schedule").addHandler(handler)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 1e9 / total), device)
    try:
        answered = answer(lm, build_method("vanilla", lm.num_patches, {}), records(batch), "by_image", batch,
                          max_new_tokens)
        status = "ok" if len(answered) == batch else "FAIL"
    except Exception as exc:  # noqa: BLE001 - the row says what happened
        answered, status = [], f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        logging.getLogger("harness.schedule").removeHandler(handler)
    return [{"cap_gb": cap_gb, "batch": batch, "answered": len(answered), "halvings": " | ".join(halvings),
             "status": status}]


def check_svd(device: torch.device, batches, iters: int) -> list[dict]:
    from svdprune import svd

    rows = []
    for batch in batches:
        x = torch.randn(batch, 576, 1024, generator=torch.Generator().manual_seed(batch))
        for solver in svd.SOLVERS:
            reference = svd.select_tokens(x, 16, 0.9, solver=solver)
            on_device = x.to(device)
            svd.select_tokens(on_device, 16, 0.9, solver=solver)  # warm-up
            times = []
            for _ in range(iters):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                kept = svd.select_tokens(on_device, 16, 0.9, solver=solver)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - started)
            same = float((kept.cpu() == reference).all(dim=1).float().mean())
            rows.append({"batch": batch, "solver": solver, "device": device.type, "ms": round(1000 * sorted(times)[len(times) // 2], 3),
                         "same_kept_set_as_cpu": round(same, 3)})
    return rows


# ------------------------------------------------------------------------------------------------ main


def run(args) -> int:
    """The five steps scripts/gpu_check.py's arguments ask for; 0 when every check passed, 1 when one failed, 2
    without a GPU."""
    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("error: no CUDA device; run with --cpu-dry-run to check the script itself", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry else args.device)
    out = Path(args.output_dir or (Path(tempfile.gettempdir()) / "svdprune-gpu-check" if dry else ROOT / "results/efficiency"))
    out.mkdir(parents=True, exist_ok=True)
    tag = gpu_tag(device, dry)
    started = time.perf_counter()
    failed = step_methods(device, dry, out, tag, started)
    failed |= step_memory(device, dry, out, tag, started)
    failed |= step_svd(device, dry, out, tag, started)
    if not args.skip_table3:
        step_table3(device, dry, out, tag, started)
    print(f"gpu_check: {'FAILED' if failed else 'all checks passed'} in {time.perf_counter() - started:.0f} s -> {out}")
    return 1 if failed else 0


def _half(dry: bool) -> torch.dtype:
    return torch.float32 if dry else torch.float16  # CPU float16 kernels are slow; the dry run checks the code


def step_methods(device: torch.device, dry: bool, out: Path, tag: str, started: float) -> bool:
    """1. Every method, both engine paths, on the tiny model (and the mini one on a GPU); True when one failed."""
    from omegaconf import OmegaConf

    from svdprune.families import family, load_model

    dtype_name = str(_half(dry))[6:]
    tiny_depth = (2, 3) if dry else (24, 32)
    models = {"tiny": family("llava15").build_tiny(seed=0, vision_layers=tiny_depth[0], text_layers=tiny_depth[1],
                                                   dtype=dtype_name, device=str(device))}
    if not dry:  # the dry run keeps to the shallow tiny model (its deeper schedules show as n/a rows)
        models["mini"] = load_model(OmegaConf.create({"kind": "pretrained", "path": "checkpoints/mini", "revision": None,
                                                      "dtype": dtype_name, "device": str(device)}), progress=False)
    budgets = [64, 16] if not dry else [16]
    rows = check_methods(models, budgets, 4 if dry else 8, 2 if dry else 4)
    write(rows, out, f"gpu_methods_{tag}", f"Every method in {dtype_name}, both engine paths ({tag})",
          ["`paths_agree`: share of questions answered the same by `per_question` and `by_image` (1.0 expected in "
           "float32; half precision can flip near-ties)", "mini: TRIM has no CLIP; n/a rows say why"])
    print(f"1/5 methods: {len(rows)} rows -> {out}/gpu_methods_{tag}.md ({time.perf_counter() - started:.0f} s)", flush=True)
    return any(r["status"] == "FAIL" for r in rows)


def step_memory(device: torch.device, dry: bool, out: Path, tag: str, started: float) -> bool:
    """2-3. 7B geometry: memory per method / schedule / batch, the OOM path under a 16 GB cap; True when one failed."""
    from bench.models import build_geometry7b
    from svdprune.families import family

    if dry:
        lm7 = family("llava15").build_tiny(seed=0, vision_layers=2, text_layers=3, device="cpu")
        lm7.name = "tiny"
    else:
        lm7 = build_geometry7b(device, _half(dry))
    rows = check_memory(lm7, device, METHODS_7B if not dry else ["vanilla", "fastv"],
                        ["by_image", "per_question"], [1, 4, 8, 16] if not dry else [1, 2], 8 if not dry else 2)
    write(rows, out, f"gpu_memory_{tag}", f"Peak memory of one batch vs svdprune.memory ({lm7.name}, {tag})",
          ["budget 16; 8 new tokens; GQA-like batches (4 questions per image)"])
    print(f"2/5 memory: {len(rows)} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    rows = check_oom(lm7, device, 16.0, 32, 8)
    write(rows, out, f"gpu_oom_{tag}", f"Out-of-memory halving under an emulated 16 GB card ({tag})", [])
    print(f"3/5 oom: {rows[0]['status']} ({time.perf_counter() - started:.0f} s)", flush=True)
    del lm7
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return any(str(r.get("status", "")).startswith("FAIL") for r in rows)


def step_svd(device: torch.device, dry: bool, out: Path, tag: str, started: float) -> bool:
    """4. SVD-Prune's selection on the device against the CPU's; True when a kept set differs."""
    rows = check_svd(device, [1, 8] if not dry else [1], 10 if not dry else 1)
    write(rows, out, f"gpu_svd_{tag}", f"SVD-Prune selection on {device.type} vs the CPU ({tag})",
          ["(B, 576, 1024) float32 random features, k = 16, tau 0.9"])
    print(f"4/5 svd: {len(rows)} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    return any(r["same_kept_set_as_cpu"] < 1.0 for r in rows)


def step_table3(device: torch.device, dry: bool, out: Path, tag: str, started: float) -> None:
    """5. Table 3 at 7B geometry through bench.latency (the tiny model in the dry run)."""
    from bench.latency import run_argv

    if dry:
        run_argv(["--model", "tiny", "--tiny-layers", "2", "3", "--device", "cpu", "--methods",
                  *TABLE3, "--budgets", "16", "--iters", "1", "--warmup", "0", "--new-tokens", "2",
                  "--svd-vision", "none", "--output-dir", str(out), "--tag", tag])
    else:
        run_argv(["--model", "geometry7b", "--device", str(device), "--dtype", "float16", "--methods",
                  *TABLE3, "--budgets", "16", "--iters", "5", "--warmup", "2", "--new-tokens", "8",
                  "--output-dir", str(out), "--tag", f"{tag}-7b"])
    print(f"5/5 table 3 ({time.perf_counter() - started:.0f} s)", flush=True)

"""What keeping the loaded model between sweep jobs buys (issue 22, item 7): one 10-run mini sweep through
``python run.py -m`` (Hydra's basic launcher: every job in one process) with ``reuse_model=false`` (each job
loads the model and fingerprints the weights, as before) and ``reuse_model=true`` (the default: jobs with the
same model share it), run side by side in one invocation, alternating, each into a fresh output folder.
(``scripts/bench_sweep_reuse.py`` is its command line.)

The sweep: model=mini, dataset=easyvqa, method=svd,random x budget=192,128,64,32,16 (10 runs), ``--limit``
questions each, batch size 32, 4 new tokens. Wall time of the whole command (Python start-up, imports, Hydra,
every job) and the answers of the two variants are compared run by run (they must be identical).
"""
from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = Path(tempfile.gettempdir()) / "svdprune-bench"
SWEEP = ["-m", "model=mini", "model.device=cpu", "dataset=easyvqa", "method=svd,random",
         "budget=192,128,64,32,16", "batch_size=32", "max_new_tokens=4", "progress=false"]


def run_sweep(reuse: bool, limit: int, threads: int | None) -> tuple[float, dict[str, list[str]]]:
    """(wall seconds, {run folder name: answers in file order}) of one sweep into a fresh folder."""
    with tempfile.TemporaryDirectory() as out:
        args = [sys.executable, "run.py", *SWEEP, f"limit={limit}", f"output_dir={out}",
                f"reuse_model={str(reuse).lower()}"] + ([f"threads={threads}"] if threads else [])
        started = time.perf_counter()
        subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        answers = {str(p.parent.relative_to(out)): [json.loads(line)["prediction"] for line in p.read_text().splitlines()]
                   for p in Path(out).glob("easyvqa/*/*/predictions.jsonl")}
    return seconds, answers


def run(args) -> int:
    """The side-by-side sweeps scripts/bench_sweep_reuse.py's arguments ask for; 0."""
    times: dict[bool, list[float]] = {False: [], True: []}
    answers: dict[bool, dict] = {}
    for _ in range(args.repeats):
        for reuse in (False, True):
            seconds, answers[reuse] = run_sweep(reuse, args.limit, args.threads)
            times[reuse].append(seconds)
            print(f"reuse_model={str(reuse).lower()}: {seconds:.1f} s", flush=True)
    if answers[False] != answers[True] or len(answers[True]) != 10:
        print("error: the two variants answered differently", file=sys.stderr)
        return 1
    before, after = statistics.median(times[False]), statistics.median(times[True])
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"variant": f"reuse_model={str(r).lower()}", "runs": 10, "questions_per_run": args.limit,
             "median_s": round(statistics.median(times[r]), 2), "times_s": " ".join(f"{t:.2f}" for t in times[r])}
            for r in (False, True)]
    with (out / "sweep_reuse_cpu.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# One 10-run mini sweep in one process: loading per job vs one shared model",
             "", f"`python scripts/bench_sweep_reuse.py --limit {args.limit} --repeats {args.repeats}`; "
             "the two variants alternate in one invocation; answers identical run by run.", "",
             "| variant | runs | questions per run | median wall time (s) | each (s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | 10 | {args.limit} | {r['median_s']:.1f} | {r['times_s']} |" for r in rows]
    lines += ["", f"Speed-up of the whole sweep: **{before / after:.2f}x** ({before:.1f} s -> {after:.1f} s)."]
    (out / "sweep_reuse_cpu.md").write_text("\n".join(lines) + "\n")
    print(f"sweep of 10 runs: {before:.1f} s -> {after:.1f} s ({before / after:.2f}x); answers identical -> "
          f"{out}/sweep_reuse_cpu.{{csv,md}}")
    return 0

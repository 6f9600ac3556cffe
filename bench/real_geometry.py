"""Every method end to end through run.py on a LLaVA-1.5-7B-geometry folder, one process per run.
(``scripts/real_geometry_runs.py`` is its command line.)

For each method (LLaVA defaults from configs/method) and budget it runs

    python run.py model.path=FOLDER model.dtype=bfloat16 model.device=cpu dataset=local dataset.path=FIXTURE \
        limit=2 max_new_tokens=4 method=M budget=B output_dir=RUNS [method.params.clip_path=CLIP for trim]

under ``/usr/bin/time -v`` (wall time and peak RSS of the whole process: loading the 7B weights included),
checks that it exited 0 and that metrics.json has the expected kept tokens (encoder side: exactly the
budget; decoder side: the budget after the first cut), and writes ``runs_<tag>.csv`` / ``.md``. The fixture is
``eval.fixtures``' synthetic shapes (written into RUNS). Runs are sequential: one 7B model in memory at a time.
Without ``--output-dir`` the table goes to a scratch folder (never over the committed results).
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from svdprune.probing import qwen_probe_image
from svdprune.timing import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def time_v(stderr: str) -> tuple[float | None, float | None]:
    """(wall seconds, peak RSS GB) from GNU time -v's report."""
    wall = rss = None
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr)
    if match:
        parts = [float(p) for p in match.group(1).split(":")]
        wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if match:
        rss = int(match.group(1)) * 1024 / 1e9
    return wall, rss


def expected_kept(method: str, budget: int, patches: int = 576) -> int | None:
    """Image tokens after the first cut that metrics.json must show: the budget, except vanilla (all) and the
    methods whose first stage keeps more (PyramidDrop's lambda schedule, SparseVLM's keep + recycled tokens:
    their counts are checked against the tiny model's, see README's schedule table)."""
    if method == "vanilla":
        return patches
    if method == "dart":  # the released max_num_trunction = budget: 4 image pivots + 8 pivots x budget // 8
        from baselines.dart import Dart

        return Dart(budget).kept_image_tokens(patches)
    return None if method in ("pyramiddrop", "sparsevlm") else budget


QWEN_IMAGES = [(448, 448), (1000, 700)]  # width x height: 256 and 900 tokens at the model card's max_pixels


def write_qwen_fixture(folder: Path) -> Path:
    """One question on each of a 448 x 448 and a 1000 x 700 image (the flops script's probe images)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with (folder / "questions.jsonl").open("w") as f:
        for i, (width, height) in enumerate(QWEN_IMAGES):
            qwen_probe_image(width, height, seed=i).save(folder / "images" / f"img{i}.png")
            f.write(json.dumps({"question_id": f"q{i}", "image": f"img{i}.png", "answer": "red",
                                "question": "What color is the largest circle?"}) + "\n")
    return folder


def qwen_first_stage(method: str, budget: int, pred: dict) -> int:
    """Image tokens after the first cut of PyramidDrop / SparseVLM on Qwen2.5-VL (count budgets): those of the fit
    rule for this image's own tokens and the 28 layers (baselines/pyramiddrop.py, baselines/sparsevlm.py); -1 when
    the recorded keep counts are not the rule's."""
    from svdprune.pruning import build_method, default_params

    n, keeps = pred["image_tokens_unpruned"], pred.get("stage_keep_counts")
    if keeps is None:  # an image at or under its budget keeps every token
        return n
    params = default_params(method)
    if method == "pyramiddrop":
        from baselines.pyramiddrop import fit_keep_counts

        fit_layers = build_method(method, budget, params).fit_layers
        return keeps[0] if keeps == fit_keep_counts(n, 28, fit_layers, budget) else -1
    from baselines.sparsevlm import fit_keep, stage_counts

    table = {int(k): v for k, v in params["keep_counts"].items()}
    if keeps != fit_keep(n, 28, params["layers"], budget, table):
        return -1
    # kept_tokens is the first per-layer count that differs from n (a stage that keeps n - 1 plus a cluster: none)
    return next((count for count in stage_counts(n, keeps) if count != n), n)


def qwen_image_rows(row: dict, folder: Path) -> list[dict]:
    """Per question (= per image) of a Qwen2.5-VL run: its tokens before the cut, kept and averaged over layers."""
    out = []
    for line in (folder / "predictions.jsonl").read_text().splitlines():
        pred = json.loads(line)
        per_layer = pred["image_tokens_per_layer"]
        width, height = QWEN_IMAGES[int(pred["question_id"][1:])]
        want = pred["image_tokens_unpruned"] if row["method"] == "vanilla" else expected_kept(
            row["method"], row["budget"], pred["image_tokens_unpruned"])
        if want is None:  # schedules fitted to the image's own tokens: the first stage of the recorded fit
            want = qwen_first_stage(row["method"], row["budget"], pred)
        out.append({**{k: row[k] for k in ("method", "budget", "exit", "wall_s", "peak_rss_gb") if k in row},
                    "generation_s": row.get("generation_s"), "image": f"{width}x{height}",
                    "image_tokens": pred["image_tokens_unpruned"], "kept_tokens_mean": pred["kept_tokens"],
                    "image_tokens_mean_over_layers": round(sum(per_layer) / len(per_layer), 2),
                    "kept_ok": pred["kept_tokens"] == min(want, pred["image_tokens_unpruned"]), "dtype": row.get("dtype"),
                    **({"stage_keep_counts": " / ".join(map(str, pred["stage_keep_counts"])) + (
                        f" (official-rule mean {pred['image_tokens_mean_official']:.2f})"
                        if "image_tokens_mean_official" in pred else "")} if pred.get("stage_keep_counts") else {})})
    return out


def run_one(args, method: str, budget: int, fixture: Path, runs: Path) -> dict:
    qwen = args.family == "qwen25vl"
    model = ["model=qwen25vl_7b"] if qwen else []
    command = [sys.executable, "run.py", *model, f"model.path={args.model}", f"model.dtype={args.dtype}", "model.device=cpu",
               "dataset=local", f"dataset.path={fixture}", f"limit={args.limit}",
               f"max_new_tokens={args.max_new_tokens}", f"method={method}", f"budget={budget}",
               f"output_dir={runs}", "progress=false"]
    if method in ("trim", "cdpruner") and args.clip:
        command.append(f"method.params.clip_path={args.clip}")
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], cwd=ROOT, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    wall, rss = time_v(done.stderr)
    row = dict(method=method, budget=budget, exit=done.returncode, wall_s=wall or seconds, peak_rss_gb=rss)
    folder_budget = (16384 if qwen else 576) if method == "vanilla" else budget
    metrics_files = sorted((runs / "local" / method).glob(f"k{folder_budget}-*/metrics.json"))
    if done.returncode == 0 and metrics_files:
        metrics = json.loads(metrics_files[-1].read_text())
        row.update(n=metrics["n"], kept_tokens_mean=metrics["kept_tokens_mean"],
                   image_tokens_mean_over_layers=round(metrics["image_tokens_mean_over_layers"], 2),
                   generation_s=round(metrics["generation_time_s"], 2), run_wall_s=round(metrics["wall_time_s"], 2), dtype=metrics["dtype"])
        want = expected_kept(method, budget)
        row["kept_ok"] = metrics["kept_tokens_mean"] == want if want is not None else None
        if qwen:  # per image: the budget applies to each image's own tokens
            row["per_image"] = qwen_image_rows(row, metrics_files[-1].parent)
            row["kept_ok"] = all(image["kept_ok"] for image in row["per_image"])
    else:
        tail = (done.stdout + done.stderr).strip().splitlines()
        row["error"] = next((l for l in reversed(tail) if l.startswith(("error:", "Traceback")) or "Error" in l),
                            tail[-1] if tail else "")[:300]
    print(f"{method:12s} k={budget:3d} exit {done.returncode} wall {row['wall_s']:.0f} s rss {rss or 0:.1f} GB "
          f"kept {row.get('kept_tokens_mean')} avg {row.get('image_tokens_mean_over_layers')} "
          f"{row.get('error', '')}", flush=True)
    return row


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier runs_<tag>.csv (``--append``), with their numbers parsed back."""
    if not path.is_file():
        return []
    rows = []
    for raw in csv.DictReader(path.open()):
        row = {}
        for key, value in raw.items():
            if value in ("", None):
                continue
            if key == "kept_ok":
                row[key] = {"True": True, "False": False}.get(value)
            elif key in ("method", "error", "dtype", "image", "stage_keep_counts"):
                row[key] = value
            else:
                row[key] = float(value) if "." in value else int(value)
        rows.append(row)
    return rows


def ok_text(row: dict) -> str:
    if row["exit"] != 0:
        return "FAILED: " + row.get("error", "")
    return {True: "yes", False: "NO (kept != budget)", None: "ran (schedule: see README)"}[row.get("kept_ok")]


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as CSV, the columns every row has between them in first-seen order."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(c for r in rows for c in r)))
        writer.writeheader()
        writer.writerows(rows)


def write_qwen(out: Path, tag: str, rows: list[dict], args) -> None:
    """runs_<tag>.csv / .md of a Qwen2.5-VL sweep: one line per (run, image)."""
    lines_rows = [image_row for r in rows for image_row in (r.get("per_image") or [  # a line read back: as it is
        r if "image" in r else {**{k: v for k, v in r.items() if k != "per_image"}, "image": "-"}])]
    write_csv(out / f"runs_{tag}.csv", lines_rows)
    lines = [f"# Qwen2.5-VL methods through run.py at Qwen2.5-VL-7B geometry on CPU {cpu_model()}", "",
             f"Generated by `scripts/real_geometry_runs.py --family qwen25vl` on `{args.model}` ({args.dtype}, CPU, "
             f"one question on a 448 x 448 and one on a 1000 x 700 image, max_new_tokens={args.max_new_tokens}); each "
             "run is one `python run.py model=qwen25vl_7b ...` process under `/usr/bin/time -v` (wall time and peak "
             "RSS of the whole process, loading the 7B weights included; `generation s` covers both images). "
             "`tokens` = the image's LLM tokens before any cut, `kept` = after the first cut, `avg` = image tokens "
             "averaged over the 28 LLM layers (predictions.jsonl); `stages` = PyramidDrop's / SparseVLM's keep counts "
             "as fitted to the image's tokens and the 28 layers (`ok` checks them against the fit rule).", "",
             "| method | k | image | tokens | exit | wall s | generation s | peak RSS GB | kept | avg over layers | stages "
             "| ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in lines_rows:
        ok = ok_text(r) if r.get("image") == "-" else ("yes" if r.get("kept_ok") else "NO (kept != budget)")
        budget = "all" if r["method"] == "vanilla" else r["budget"]
        lines.append(f"| {r['method']} | {budget} | {r['image']} | {r.get('image_tokens', '-')} | {r['exit']} | "
                     f"{r['wall_s']:.0f} | {r.get('generation_s', '-')} | {(r.get('peak_rss_gb') or 0):.1f} | "
                     f"{r.get('kept_tokens_mean', '-')} | {r.get('image_tokens_mean_over_layers', '-')} | "
                     f"{r.get('stage_keep_counts') or '-'} | {ok} |")
    (out / f"runs_{tag}.md").write_text("\n".join(lines) + "\n")


def write(out: Path, tag: str, rows: list[dict], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if args.family == "qwen25vl":
        return write_qwen(out, tag, rows, args)
    write_csv(out / f"runs_{tag}.csv", rows)
    lines = [f"# Every method through run.py at LLaVA-1.5-7B geometry on CPU {cpu_model()}", "",
             f"Generated by `scripts/real_geometry_runs.py` on `{args.model}` ({args.dtype}, CPU, "
             f"{args.limit} questions of the synthetic shapes fixture, max_new_tokens={args.max_new_tokens}); each "
             "row is one `python run.py ...` process under `/usr/bin/time -v`: wall time and peak RSS include "
             "loading the 7B weights. `kept` = metrics.json kept_tokens_mean (image tokens after the first cut), "
             "`avg` = image tokens averaged over the 32 LLM layers.", "",
             "| method | k | exit | wall s | generation s | peak RSS GB | kept | avg over layers | ok |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['budget']} | {r['exit']} | {r['wall_s']:.0f} | {r.get('generation_s', '-')} | "
                     f"{(r['peak_rss_gb'] or 0):.1f} | {r.get('kept_tokens_mean', '-')} | "
                     f"{r.get('image_tokens_mean_over_layers', '-')} | "
                     f"{ok_text(r)} |")
    (out / f"runs_{tag}.md").write_text("\n".join(lines) + "\n")


def run(args) -> int:
    """Every method through run.py as scripts/real_geometry_runs.py's arguments ask; 0 when every run passed."""
    from eval.fixtures import write_local_fixture

    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="svdprune_7b_runs_"))
    if args.family == "qwen25vl":
        from svdprune.families import supported_methods

        args.methods = args.methods or supported_methods("qwen25vl")
        args.limit = len(QWEN_IMAGES)
        fixture = write_qwen_fixture(runs / "fixture")
    else:
        from svdprune.pruning import METHODS

        args.methods = args.methods or list(METHODS)  # every registered method, in Table 1's row order
        fixture = write_local_fixture(runs / "fixture", questions=max(args.limit, 2), images=2, seed=0)
    out = Path(args.output_dir) if args.output_dir else Path(tempfile.gettempdir()) / "svdprune-bench"
    planned = {(m, b) for m in args.methods for b in ([192] if m == "vanilla" else args.budgets)}
    rows = [r for r in read_rows(out / f"runs_{args.tag}.csv")  # a rerun replaces its (method, budget) rows
            if (r["method"], r["budget"]) not in planned] if args.append else []
    for method in args.methods:
        for budget in ([192] if method == "vanilla" else args.budgets):
            rows.append(run_one(args, method, budget, fixture, runs))
            write(out, args.tag, rows, args)  # after every run: a stopped sweep keeps its rows
    print(f"wrote {out / f'runs_{args.tag}.csv'} and .md")
    image_rows = [i for r in rows for i in r.get("per_image", [])]
    return 0 if all(r["exit"] == 0 and r.get("kept_ok") is not False for r in rows + image_rows) else 1

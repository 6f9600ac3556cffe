"""Do the methods keep the same tokens in half precision as in float32? (issue 22, item 2)
(``scripts/precision_agreement.py`` is its command line.)

Every method runs on the scenes model (one new token per question) (``checkpoints/scenes``) over the test
questions of the first 200 images (929 questions), at one budget, through the runner, in float32 and in a half
precision on the CPU; per question the selection (``kept_indices``, plus ``recycled_indices`` for SparseVLM,
``merge_groups`` for ToMe and ``merged_indices`` for TokenCarve) is compared with the float32 one. The share of
questions with an identical selection is written, one row per (method, dtype, code label), to
``<out>/kept_agreement_cpu.csv`` (appended; a rerun with the same label replaces its rows) and rendered to
``kept_agreement_cpu.md``.

The float32 selections are computed once per label (they are the reference), so a "before" row compares the old
code's half precision with the old code's float32.
"""
from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIRST_200_IMAGES = 929  # the scenes test questions of the first 200 images, in dataset order
FIELDS = ("kept_indices", "recycled_indices", "merge_groups", "merged_indices")


def selections(method: str, budget: int, dtype: str, threads: int | None) -> dict[str, str]:
    """question id -> the selection, as canonical JSON."""
    from harness.mini_protocol import run_and_read
    from harness.scenes_protocol import scenes_config

    extra = [f"model.dtype={dtype}", "max_new_tokens=1"] + ([f"threads={threads}"] if threads else [])
    with tempfile.TemporaryDirectory() as out:
        _, rows = run_and_read(scenes_config(method, budget, FIRST_200_IMAGES, out, tuple(extra)))
    return {r["question_id"]: json.dumps([r.get(f) for f in FIELDS]) for r in rows}




def write(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "budget", "dtype", "label", "questions", "identical",
                                               "identical_share"])
        writer.writeheader()
        writer.writerows(rows)
    labels = sorted({r["label"] for r in rows}, key=lambda l: (l != "before", l))
    cells = {(r["method"], r["dtype"], r["label"]): r for r in rows}
    columns = sorted({(r["dtype"], l) for r in rows for l in labels if (r["method"], r["dtype"], l) in cells},
                     key=lambda c: (c[0], labels.index(c[1])))
    lines = ["# Same kept tokens in half precision as in float32 (scenes model, CPU)", "",
             f"Questions of the first 200 test images ({FIRST_200_IMAGES}); per question, the selection (kept indices, "
             "SparseVLM's recycled set, ToMe's merge groups, TokenCarve's merged set) compared with the same code's "
             "float32 run. "
             "`python scripts/precision_agreement.py` (see its docstring).", "",
             "| method | budget | " + " | ".join(f"{d} {l}" for d, l in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for method in dict.fromkeys(r["method"] for r in rows):
        budget = next(r["budget"] for r in rows if r["method"] == method)
        values = []
        for dtype, label in columns:
            r = cells.get((method, dtype, label))
            values.append(f"{100 * float(r['identical_share']):.1f}% ({r['identical']}/{r['questions']})" if r else "")
        lines.append(f"| {method} | {budget} | " + " | ".join(values) + " |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def run(args) -> int:
    """The agreement table scripts/precision_agreement.py's arguments ask for; 0."""
    if args.methods is None:
        from svdprune.pruning import METHODS

        args.methods = [name for name, cls in METHODS.items() if cls.kind != "none"]  # Table 1's row order
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "kept_agreement_cpu.csv"
    rows = [r for r in (list(csv.DictReader(path.open())) if path.is_file() else [])
            if not (r["label"] == args.label and r["method"] in args.methods and r["dtype"] in args.dtypes)]
    for method in args.methods:
        reference = selections(method, args.budget, "float32", args.threads)
        for dtype in args.dtypes:
            half = selections(method, args.budget, dtype, args.threads)
            same = sum(half[q] == reference[q] for q in reference)
            rows.append({"method": method, "budget": args.budget, "dtype": dtype, "label": args.label,
                         "questions": len(reference), "identical": same,
                         "identical_share": f"{same / len(reference):.4f}"})
            print(f"{args.label} {method} k={args.budget} {dtype}: {same}/{len(reference)} identical", flush=True)
            write(rows, path)
    return 0

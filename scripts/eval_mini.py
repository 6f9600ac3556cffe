"""Every registered method at every budget on easy-VQA test with the trained ``mini`` model, through run.py's
runner; writes results/mini/accuracy.csv, accuracy.md and accuracy_vs_budget.png/pdf.

    python scripts/eval_mini.py --limit 1000            # the committed table (first 1000 test questions)
    python scripts/eval_mini.py --limit 240 --budgets 64 16 --regression   # refresh the CI reference

``--regression`` writes results/mini/regression.json, the reference the CI regression test compares with.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (192, 128, 64, 32, 16)
# methods that cannot run on the mini model, with the reason (shown in the table)
NOT_ON_MINI = {"trim": "needs a CLIP text tower aligned with the vision tower; the mini model has none"}


def mini_config(method: str, budget: int, limit: int, output_dir: str, batch_size: int = 16):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model=mini", "dataset=easyvqa", f"method={method}", f"budget={budget}", f"limit={limit}",
            f"output_dir={output_dir}", f"batch_size={batch_size}", "max_new_tokens=4", "progress=false"])


def methods() -> list[str]:
    from svdprune.pruning import METHODS

    return ["vanilla", "svd"] + sorted(m for m in METHODS if m not in ("vanilla", "svd"))


def evaluate(method: str, budgets, limit: int, output_dir: str) -> dict[int, float]:
    from svdprune.runner import run

    if method == "vanilla":
        accuracy = run(mini_config("vanilla", 576, limit, output_dir))["accuracy"]
        return {b: accuracy for b in budgets}
    return {b: run(mini_config(method, b, limit, output_dir))["accuracy"] for b in budgets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--out", default=str(ROOT / "results" / "mini"))
    parser.add_argument("--regression", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    table = {}
    for method in args.methods or methods():
        if method in NOT_ON_MINI:
            print(f"{method}: skipped ({NOT_ON_MINI[method]})")
            continue
        table[method] = evaluate(method, args.budgets, args.limit, str(out / "runs"))
    if args.regression:
        reference = {"limit": args.limit, "dataset": "easyvqa test", "accuracy": table}
        (out / "regression.json").write_text(json.dumps(reference, indent=2, sort_keys=True) + "\n")
        return
    write_table(table, args.budgets, args.limit, out)


def write_table(table: dict[str, dict[int, float]], budgets, limit: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    header = ["method"] + [str(b) for b in budgets]
    lines = [",".join(header)] + [",".join([m] + [f"{acc[b]:.2f}" for b in budgets]) for m, acc in table.items()]
    (out / "accuracy.csv").write_text("\n".join(lines) + "\n")
    md = [f"Accuracy (%) of the mini model on the first {limit} easy-VQA test questions, by vision-token budget.",
          "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, acc in table.items():
        best = {b: max(a[b] for a in table.values() if method != "vanilla") for b in budgets}
        cells = [f"**{acc[b]:.2f}**" if method != "vanilla" and acc[b] == best[b] else f"{acc[b]:.2f}" for b in budgets]
        md.append(f"| {method} | " + " | ".join(cells) + " |")
    md += ["", "Not run on the mini model: " + "; ".join(f"{m} ({why})" for m, why in NOT_ON_MINI.items())]
    (out / "accuracy.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, acc in table.items():
        style = dict(linestyle="--", color="black") if method == "vanilla" else {}
        ax.plot(list(budgets), [acc[b] for b in budgets], marker="o", label=method, **style)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(budgets), [str(b) for b in budgets])
    ax.set_xlabel("vision tokens kept")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"mini model, easy-VQA test (first {limit} questions)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"accuracy_vs_budget.{suffix}")


if __name__ == "__main__":
    main()

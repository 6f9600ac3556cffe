"""Every registered method at every budget on easy-VQA test with the trained ``mini`` model, through run.py's
runner; writes results/mini/accuracy.csv, accuracy.md and accuracy_vs_budget.png/pdf.
(``scripts/eval_mini.py`` is its command line.)

``--regression`` writes results/mini/regression.json, the reference the CI regression test compares with.
Only the committed protocol (--limit 1000, every budget, every method) writes results/mini/accuracy.* by
default; any smaller or partial run goes to results/mini/_scratch/<limit, budgets, methods>/ (not tracked)
unless --out names a folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.mini_protocol import BUDGETS, NOT_ON_MINI, ROOT, checkpoint_sha256, mini_run


def methods() -> list[str]:
    from svdprune.pruning import METHODS

    return ["vanilla", "svd"] + sorted(m for m in METHODS if m not in ("vanilla", "svd"))


def evaluate(method: str, budgets, limit: int, output_dir: str, reasons: dict) -> dict[int, tuple | None]:
    """(accuracy, answers) per budget; a budget the method cannot do on mini is None, its one-line reason kept."""
    from svdprune.errors import UserError

    if method == "vanilla":
        result = mini_run("vanilla", 576, limit, output_dir)
        return {b: result for b in budgets}
    results = {}
    for budget in budgets:
        try:
            results[budget] = mini_run(method, budget, limit, output_dir)
        except UserError as exc:
            results[budget] = None
            reasons[f"{method} k={budget}"] = str(exc)
    return results


COMMITTED = ROOT / "results" / "mini"
COMMITTED_LIMIT = 1000


def output_folder(limit: int, budgets, chosen_methods, regression: bool) -> Path:
    """results/mini for the committed table (--limit 1000, every budget and method) and for --regression;
    a scratch folder named after the run otherwise, so a small or partial run never overwrites the committed
    files."""
    if regression or (limit == COMMITTED_LIMIT and tuple(budgets) == tuple(BUDGETS) and not chosen_methods):
        return COMMITTED
    tag = f"limit{limit}-k{'_'.join(map(str, budgets))}" + (f"-{'_'.join(chosen_methods)}" if chosen_methods else "")
    return COMMITTED / "_scratch" / tag




def write_table(table: dict[str, dict[int, float | None]], budgets, limit: int, out: Path, reasons: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    cell = lambda a: "" if a is None else f"{a:.2f}"  # noqa: E731
    header = ["method"] + [str(b) for b in budgets]
    lines = [",".join(header)] + [",".join([m] + [cell(acc[b]) for b in budgets]) for m, acc in table.items()]
    (out / "accuracy.csv").write_text("\n".join(lines) + "\n")
    pruned = {m: acc for m, acc in table.items() if m != "vanilla"}
    best = {b: max((a[b] for a in pruned.values() if a[b] is not None), default=None) for b in budgets}
    md = [f"Accuracy (%) of the mini model (checkpoints/mini) on the first {limit} easy-VQA test questions, by "
          "vision-token budget (`python scripts/eval_mini.py`). Best pruned method per column in bold; empty = "
          "the method cannot do that budget on mini (reasons below).", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, acc in table.items():
        cells = [f"**{cell(acc[b])}**" if method != "vanilla" and acc[b] is not None and acc[b] == best[b]
                 else cell(acc[b]) for b in budgets]
        md.append(f"| {method} | " + " | ".join(cells) + " |")
    md += ["", "Decoder-side methods use the mini schedules of eval/mini_protocol.py (one cut after LLM layer 0).",
           "Not run on the mini model: " + "; ".join(f"{m} ({why})" for m, why in NOT_ON_MINI.items())]
    md += [f"- {key}: {why}" for key, why in sorted(reasons.items())]
    (out / "accuracy.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, acc in table.items():
        points = [(b, acc[b]) for b in budgets if acc[b] is not None]
        style = dict(linestyle="--", color="black") if method == "vanilla" else dict(marker="o")
        ax.plot([b for b, _ in points], [a for _, a in points], label=method, **style)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(budgets), [str(b) for b in budgets])
    ax.set_xlabel("vision tokens kept")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"mini model, easy-VQA test (first {limit} questions)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"accuracy_vs_budget.{suffix}")


def run(args) -> None:
    """Every method at every budget as scripts/eval_mini.py's arguments ask; the table, or the regression reference."""
    out = Path(args.out) if args.out else output_folder(args.limit, args.budgets, args.methods, args.regression)
    # one runs folder (not tracked) for every invocation: a run's identity includes the weights' and the
    # questions' fingerprints, and each invocation scores only the questions it selects
    weights = checkpoint_sha256()
    runs = COMMITTED / "runs"
    table, reasons = {}, {}
    for method in args.methods or methods():
        if method in NOT_ON_MINI:
            print(f"{method}: skipped ({NOT_ON_MINI[method]})")
            continue
        table[method] = evaluate(method, args.budgets, args.limit, str(runs), reasons)
    if args.regression:
        done = {m: {b: r for b, r in by_budget.items() if r is not None} for m, by_budget in table.items()}
        reference = {"limit": args.limit, "dataset": "easyvqa test", "checkpoint_sha256": weights,
                     "accuracy": {m: {b: r[0] for b, r in d.items()} for m, d in done.items()},
                     "answers": {m: {b: r[1] for b, r in d.items()} for m, d in done.items()}}
        out.mkdir(parents=True, exist_ok=True)
        (out / "regression.json").write_text(json.dumps(reference, indent=2, sort_keys=True) + "\n")
        print(f"regression reference -> {out / 'regression.json'}")
        return
    accuracy = {m: {b: None if r is None else r[0] for b, r in by_budget.items()} for m, by_budget in table.items()}
    write_table(accuracy, args.budgets, args.limit, out, reasons)
    print(f"mini accuracy table -> {out}/accuracy.{{csv,md}}, accuracy_vs_budget.{{png,pdf}}")

"""Every method at every budget on the scenes benchmark with the trained ``scenes`` model, through run.py's
runner: accuracy and evidence recall side by side (results/scenes/accuracy.{csv,md},
accuracy_recall_vs_budget.{png,pdf}), the tau ablation (tau.{csv,md,png}) and the CI regression reference.
(``scripts/eval_scenes.py`` is its command line.)

The defaults (the first 460 test questions, ~100 scenes) are what the benchmark is meant for; on 2 CPU cores
one run of 230 questions takes ~10 s, so the committed files use 230.
Run folders are kept in results/scenes/runs/<weights sha>/ (not committed); reruns resume there.
"""
from __future__ import annotations

import json
from pathlib import Path

from eval.evidence import evidence_recall
from eval.scoring import score
from harness.scenes_protocol import checkpoint_sha256, scenes_run

TAUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TAU_BUDGETS = (16, 32, 192)


def methods() -> list[str]:
    from svdprune.pruning import METHODS

    return ["vanilla", "svd"] + sorted(m for m in METHODS if m not in ("vanilla", "svd"))


def summarise(method: str, accuracy: float, rows: list[dict]) -> dict:
    """Accuracy, evidence recall and per-type accuracy of one run."""
    by_type: dict[str, list[float]] = {}
    for row in rows:
        by_type.setdefault(row["question_type"], []).append(score("gqa", row["prediction"], row["answers"]))
    recall = evidence_recall(method, rows)
    return {"accuracy": accuracy, "recall": recall["recall"], "own_recall": recall["own_recall"],
            "by_type": {t: 100.0 * sum(v) / len(v) for t, v in sorted(by_type.items())},
            "answers": [r["prediction"] for r in rows]}


def evaluate(method: str, budgets, limit: int, runs: Path, reasons: dict, extra=()) -> dict[int, dict | None]:
    from svdprune.errors import UserError

    if method == "vanilla":
        result = summarise(method, *scenes_run("vanilla", 576, limit, runs))
        return {b: result for b in budgets}
    results = {}
    for budget in budgets:
        try:
            results[budget] = summarise(method, *scenes_run(method, budget, limit, runs, tuple(extra)))
        except UserError as exc:
            results[budget] = None
            reasons[f"{method} k={budget}"] = str(exc)
    return results




def regression_variant(out: Path, runs: Path, args) -> None:
    """Run the reference's cases under this process's CPU kernels in their own run folders; record under
    ``kernel_variants[<capability>]`` those whose answers differ from the main record (harness/regression.py)."""
    import torch

    from harness.regression import case_key, cases, recorded

    capability = torch.backends.cpu.get_cpu_capability()
    path = out / "regression.json"
    reference = json.loads(path.read_text())
    variants = {}
    for method, budget in cases(reference):
        result = evaluate(method, [budget], reference["limit"], runs / f"kernels-{capability}", {})[budget]
        if result["answers"] != recorded(reference, method, budget)[1]:
            variants.setdefault(method, {})[case_key(reference, method, budget)] = {
                "accuracy": result["accuracy"], "answers": result["answers"]}
    reference.setdefault("kernel_variants", {})[capability] = variants
    path.write_text(json.dumps(reference, indent=2, sort_keys=True) + "\n")
    print(f"{capability}: {sum(len(v) for v in variants.values())} cases answer differently: "
          + ", ".join(f"{m} k={k}" for m, d in variants.items() for k in d))


def tau_ablation(limit: int, runs: Path, out: Path, taus=TAUS, budgets=TAU_BUDGETS) -> None:
    rows = []
    for center in (False, True):
        for budget in budgets:
            for tau in taus:
                extra = (f"method.params.tau={tau}", f"method.params.center={str(center).lower()}")
                accuracy, preds = scenes_run("svd", budget, limit, runs, extra)
                recall = evidence_recall("svd", preds)["recall"]
                ranks = [r for row in preds for r in ([row["rank"]] if isinstance(row["rank"], int) else row["rank"])]
                rows.append((center, budget, tau, accuracy, recall, sum(ranks) / len(ranks)))
    lines = ["center,budget,tau,accuracy,recall,rank_mean"] + [
        f"{str(c).lower()},{b},{t},{a:.2f},{r:.2f},{k:.2f}" for c, b, t, a, r, k in rows]
    (out / "tau.csv").write_text("\n".join(lines) + "\n")
    md = [f"SVD-Prune tau ablation on the scenes model (first {limit} test questions; `python scripts/eval_scenes.py "
          "--tau`): accuracy % / evidence recall % / mean rank r.", "",
          "| centring | k | " + " | ".join(str(t) for t in taus) + " |", "|---|---|" + "---|" * len(taus)]
    for center in (False, True):
        for budget in budgets:
            cells = [f"{a:.1f} / {r:.1f} / {k:.1f}" for c, b, t, a, r, k in rows if c == center and b == budget]
            md.append(f"| {'on' if center else 'off'} | {budget} | " + " | ".join(cells) + " |")
    (out / "tau.md").write_text("\n".join(md) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for center, style in ((False, "-"), (True, "--")):
        for budget in budgets:
            pts = [(t, a, r) for c, b, t, a, r, _ in rows if c == center and b == budget]
            label = f"k={budget}, centring {'on' if center else 'off'}"
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
            axes[1].plot([p[0] for p in pts], [p[2] for p in pts], style, marker="o", label=label)
    for ax, name in zip(axes, ("accuracy (%)", "evidence recall (%)")):
        ax.set_xlabel("tau")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"SVD-Prune tau ablation, scenes model (first {limit} test questions)")
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"tau.{suffix}")


def write_table(table: dict[str, dict[int, dict | None]], budgets, limit: int, out: Path, reasons: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def cell(r, key):
        return "" if r is None or r[key] is None else f"{r[key]:.1f}"

    header = ["method"] + [f"{key}@{b}" for b in budgets for key in ("accuracy", "recall", "own_recall")]
    lines = [",".join(header)] + [",".join([m] + [cell(d[b], key) for b in budgets
                                                  for key in ("accuracy", "recall", "own_recall")])
                                  for m, d in table.items()]
    (out / "accuracy.csv").write_text("\n".join(lines) + "\n")
    md = [f"Scenes model (checkpoints/scenes) on the first {limit} scenes test questions "
          "(`python scripts/eval_scenes.py`). Each cell: accuracy % / evidence recall % / own-token recall % "
          "(eval/evidence.py: the share of each question's evidence patches whose information reaches the LLM, "
          "and the share that reaches it as its own, unmerged token). Empty: the method cannot do that budget.",
          "", "| method | " + " | ".join(f"k={b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for method, d in table.items():
        md.append(f"| {method} | " + " | ".join(
            "" if d[b] is None else f"{cell(d[b], 'accuracy')} / {cell(d[b], 'recall')} / {cell(d[b], 'own_recall')}"
            for b in budgets) + " |")
    types = sorted({t for d in table.values() for r in d.values() if r for t in r["by_type"]})
    md += ["", f"Accuracy % per question type at k={budgets[-1]} (vanilla: all tokens):", "",
           "| method | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    for method, d in table.items():
        r = d[budgets[-1]]
        md.append(f"| {method} | " + " | ".join("" if r is None else f"{r['by_type'].get(t, 0):.1f}" for t in types)
                  + " |")
    md += ["", "Decoder-side methods use the schedules of harness/scenes_protocol.py (4-layer LLM); TRIM the CLIP "
           "saved with the model (checkpoints/scenes/clip), official sign."]
    md += [f"- {key}: {why}" for key, why in sorted(reasons.items())]
    (out / "accuracy.md").write_text("\n".join(md) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = "osD^v<>ph*XP"
    for i, (method, d) in enumerate(table.items()):  # 12 methods: tab20 colours and a marker each, none repeated
        style = (dict(linestyle="--", color="black") if method == "vanilla"
                 else dict(marker=markers[i % len(markers)], color=plt.cm.tab20(i % 20)))
        for ax, key in zip(axes, ("accuracy", "recall")):
            pts = [(b, d[b][key]) for b in budgets if d[b] is not None and d[b][key] is not None]
            ax.plot([b for b, _ in pts], [v for _, v in pts], label=method, **style)
    for ax, name in zip(axes, ("accuracy (%)", "evidence recall (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(budgets), [str(b) for b in budgets])
        ax.set_xlabel("vision tokens kept")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"scenes model, first {limit} test questions")
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"accuracy_recall_vs_budget.{suffix}")


def run(args) -> None:
    """The method table, the tau ablation, the regression reference or its kernel variant, as scripts/eval_scenes.py's arguments ask."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = checkpoint_sha256()
    runs = out / "runs" / weights[:12]  # keyed by the weights: a retrained checkpoint never resumes old runs
    if args.regression_variant:
        return regression_variant(out, runs, args)
    if args.tau:
        return tau_ablation(args.limit, runs, out, args.taus, args.tau_budgets)
    table, reasons = {}, {}
    for method in args.methods or methods():
        table[method] = evaluate(method, args.budgets, args.limit, runs, reasons)
    if args.regression:
        done = {m: {b: r for b, r in d.items() if r is not None} for m, d in table.items()}
        import torch

        reference = {"limit": args.limit, "dataset": "scenes test", "checkpoint_sha256": weights,
                     "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
                     "accuracy": {m: {b: r["accuracy"] for b, r in d.items()} for m, d in done.items()},
                     "answers": {m: {b: r["answers"] for b, r in d.items()} for m, d in done.items()}}
        (out / "regression.json").write_text(json.dumps(reference, indent=2, sort_keys=True) + "\n")
        return
    write_table(table, args.budgets, args.limit, out, reasons)

"""Table 1 of SVD-Prune from results/: accuracy per method x budget x dataset, drop vs vanilla, the paper's
reported numbers side by side and the difference (``scripts/make_table1.py`` is its command line).

Layout (the paper's): a vanilla row (576 tokens), then encoder-side and decoder-side methods, budgets
192 .. 16 as columns, GQA and TextVQA under each budget. Per method three lines: ours "acc (drop vs our
vanilla, n)", the paper's "acc (drop vs the paper's vanilla)", and ours - paper. The best of ours per
column (vanilla aside) is bold. A run that does not exist is an empty cell; a paper cell that exists in the
paper but whose value our text copy lost is "n/a" (eval/paper_numbers.csv says which and why).
Which run fills a cell when there are several: see :mod:`eval.reports.runs` (default params only; largest n,
then lowest seed, then run_name).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from eval.reports.runs import (
    BUDGETS, CONFIGS, DATASET_LABELS, DATASETS, METHODS, PAPER_NUMBERS, VANILLA, Cell, PaperNumber, ReportError, Run,
    fmt, load_runs, method_info, paper_table1, read_paper_numbers, single_model, table_cells,
)

VANILLA_BUDGET = 576
SIDES = (("none", None), ("encoder", "Encoder-side"), ("decoder", "Decoder-side"))


@dataclass
class Entry:
    """One cell of the long table (also one row of table1.csv)."""

    dataset: str
    budget: int
    method: str
    label: str
    side: str
    in_paper: bool
    accuracy: float | None = None
    drop: float | None = None
    n: int | None = None
    best: bool = False
    paper_accuracy: float | None = None
    paper_drop: float | None = None
    paper_status: str = "not in paper"  # table | text | lost | not in paper
    paper_source: str = ""
    diff_vs_paper: float | None = None
    run: str = ""
    model: str = ""
    config_hash: str = ""
    candidates: int = 0
    excluded_non_default: int = 0
    kept_tokens_mean: float | None = None
    image_tokens_mean_over_layers: float | None = None
    vanilla_n: int | None = None


def build_entries(results: Path, paper_csv: Path = PAPER_NUMBERS, model: str | None = None,
                  configs: Path = CONFIGS, budgets=BUDGETS, datasets=DATASETS) -> tuple[list[str], list[Entry]]:
    """(method order, entries for every method x (576 for vanilla | budgets) x dataset)."""
    runs = single_model(load_runs(results), model)
    cells = table_cells(runs, configs)
    paper = paper_table1(read_paper_numbers(paper_csv))
    methods = list(METHODS)
    kinds = {r.method: r.metrics.get("method_kind") for r in runs}
    methods += sorted(m for m in kinds if m not in METHODS)  # methods this script does not know yet

    entries = []
    for dataset in datasets:
        vanilla_cell = cells.get((dataset, VANILLA, VANILLA_BUDGET))
        vanilla_run = vanilla_cell.run if vanilla_cell else None
        paper_vanilla = paper.get((dataset, VANILLA, VANILLA_BUDGET))
        for method in methods:
            info = method_info(method, kinds.get(method))
            for budget in ([VANILLA_BUDGET] if method == VANILLA else budgets):
                e = Entry(dataset, budget, method, info.label, info.side, info.in_paper)
                fill_ours(e, cells.get((dataset, method, budget)), vanilla_run)
                fill_paper(e, paper.get((dataset, method, budget)), paper_vanilla)
                entries.append(e)
        mark_best(entries, dataset, budgets)
    return methods, entries


def fill_ours(e: Entry, cell: Cell | None, vanilla_run: Run | None) -> None:
    """The cell's chosen run: accuracy, n, where it is, its token counts, and the drop vs our vanilla run."""
    if cell is not None:
        e.candidates, e.excluded_non_default = cell.candidates, cell.excluded
    if cell is None or cell.run is None:
        return
    run = cell.run
    run.predictions()  # read as every report reads them: a damaged file is an error, not a cell
    e.accuracy, e.n = run.accuracy, run.n
    e.run, e.config_hash, e.model = str(run.path), run.config_hash, str(run.model)
    e.kept_tokens_mean = run.metrics.get("kept_tokens_mean")
    e.image_tokens_mean_over_layers = run.metrics.get("image_tokens_mean_over_layers")
    if vanilla_run is not None and e.method != VANILLA:
        e.drop, e.vanilla_n = run.accuracy - vanilla_run.accuracy, vanilla_run.n


def fill_paper(e: Entry, p: PaperNumber | None, paper_vanilla: PaperNumber | None) -> None:
    """The paper's number for the cell, its drop vs the paper's vanilla, and ours minus the paper's."""
    if p is None:
        return
    e.paper_status, e.paper_source, e.paper_accuracy = p.status, p.source, p.accuracy
    if p.accuracy is not None and e.method != VANILLA and paper_vanilla is not None \
            and paper_vanilla.accuracy is not None:
        e.paper_drop = p.accuracy - paper_vanilla.accuracy
    if p.accuracy is not None and e.accuracy is not None:
        e.diff_vs_paper = e.accuracy - p.accuracy


def mark_best(entries: list[Entry], dataset: str, budgets) -> None:
    """Best of ours per column, as displayed (2 decimals); ties all marked; vanilla aside."""
    for budget in budgets:
        column = [e for e in entries if e.dataset == dataset and e.budget == budget and e.accuracy is not None
                  and e.method != VANILLA]
        if column:
            top = max(round(e.accuracy, 2) for e in column)
            for e in column:
                e.best = round(e.accuracy, 2) == top


# ------------------------------------------------------------------------------------------ output


CSV_FIELDS = list(Entry.__dataclass_fields__)


def write_csv(entries: list[Entry], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for e in entries:
            row = {}
            for key in CSV_FIELDS:
                value = getattr(e, key)
                row[key] = (f"{value:.4f}" if isinstance(value, float) else "" if value is None else value)
            writer.writerow(row)


def _columns(budgets, datasets) -> list[tuple[int, str]]:
    return [(VANILLA_BUDGET, d) for d in datasets] + [(b, d) for b in budgets for d in datasets]


def _lookup(entries: list[Entry]) -> dict[tuple[str, int, str], Entry]:
    return {(e.method, e.budget, e.dataset): e for e in entries}


def _ours(e: Entry | None, bold, small) -> str:
    if e is None or e.accuracy is None:
        return ""
    value = bold(fmt(e.accuracy)) if e.best else fmt(e.accuracy)
    extra = f"n={e.n}" if e.drop is None else f"{fmt(e.drop, signed=True)}, n={e.n}"
    return f"{value} {small(f'({extra})')}"


def _paper(e: Entry | None, small) -> str:
    if e is None or e.paper_status == "not in paper":
        return ""
    if e.paper_accuracy is None:
        return "n/a"
    return fmt(e.paper_accuracy) + ("" if e.paper_drop is None else f" {small(f'({fmt(e.paper_drop, signed=True)})')}")


def _diff(e: Entry | None) -> str:
    return "" if e is None or e.diff_vs_paper is None else fmt(e.diff_vs_paper, signed=True)


def _grouped(methods: list[str], entries: list[Entry]) -> list[tuple[str | None, list[str]]]:
    sides = {e.method: e.side for e in entries}
    return [(title, [m for m in methods if sides.get(m) == side]) for side, title in SIDES]


def _has_paper(method: str, entries: list[Entry]) -> bool:
    return any(e.method == method and e.paper_status != "not in paper" for e in entries)


def render_markdown(methods: list[str], entries: list[Entry], budgets=BUDGETS, datasets=DATASETS,
                    model: str | None = None) -> str:
    cols = _columns(budgets, datasets)
    table = _lookup(entries)
    ident = lambda s: s  # noqa: E731
    lines = [
        "| Method | | " + " | ".join(f"{b} {DATASET_LABELS.get(d, d)}" for b, d in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for title, group in _grouped(methods, entries):
        if title:
            lines.append(f"| *{title}* | |" + " |" * len(cols))
        for m in group:
            label = method_info(m).label if m in METHODS else m
            label += "" if METHODS.get(m, None) is None or METHODS[m].in_paper else " †"
            lines.append(f"| {label} | ours | " + " | ".join(
                _ours(table.get((m, b, d)), lambda s: f"**{s}**", ident) for b, d in cols) + " |")
            if _has_paper(m, entries):
                lines.append("| | paper | " + " | ".join(_paper(table.get((m, b, d)), ident) for b, d in cols) + " |")
                lines.append("| | ours − paper | " + " | ".join(_diff(table.get((m, b, d))) for b, d in cols) + " |")
    notes = [
        "",
        f"Accuracy in %. ours: model {model or 'none'}, accuracy (difference to our vanilla run, questions n); "
        "paper: LLaVA-1.5-7B, the paper's Table 1 / text (difference to its vanilla); bold: best of ours per column (vanilla aside). "
        "Empty: no run / not reported; n/a: the paper has the cell but our copy of its text lost the value "
        "(eval/paper_numbers.csv). † not in the paper's Table 1. Decoder-side budgets are image tokens after "
        "the first pruning stage (32-layer averages in table1.csv).",
    ]
    return "\n".join(lines + notes) + "\n"


def _tex_escape(text: str) -> str:
    return text.replace("†", r"$^\dagger$").replace("−", "$-$")


def render_latex(methods: list[str], entries: list[Entry], budgets=BUDGETS, datasets=DATASETS) -> str:
    cols = _columns(budgets, datasets)
    table = _lookup(entries)
    small = lambda s: f"{{\\scriptsize {s}}}"  # noqa: E731
    bold = lambda s: f"\\textbf{{{s}}}"  # noqa: E731
    nd = len(datasets)
    out = [
        "% Generated by scripts/make_table1.py from results/ and eval/paper_numbers.csv. Needs booktabs.",
        "\\begin{tabular}{ll" + "r" * len(cols) + "}",
        "\\toprule",
        " & & " + " & ".join(f"\\multicolumn{{{nd}}}{{c}}{{{b}}}" for b in [VANILLA_BUDGET, *budgets]) + " \\\\",
        " & ".join(["Method", ""] + [DATASET_LABELS.get(d, d) for _, d in cols]) + " \\\\",
        "\\midrule",
    ]
    for title, group in _grouped(methods, entries):
        if not group:
            continue
        if title:
            out.append(f"\\multicolumn{{{2 + len(cols)}}}{{l}}{{\\textit{{{title}}}}} \\\\")
        for m in group:
            label = method_info(m).label if m in METHODS else m.replace("_", r"\_")
            label += "" if METHODS.get(m, None) is None or METHODS[m].in_paper else "$^\\dagger$"
            out.append(" & ".join([label, "ours"] + [_ours(table.get((m, b, d)), bold, small) for b, d in cols])
                       + " \\\\")
            if _has_paper(m, entries):
                out.append(" & ".join(["", "paper"] + [_paper(table.get((m, b, d)), small) for b, d in cols])
                           + " \\\\")
                out.append(" & ".join(["", "$\\Delta$"] + [_diff(table.get((m, b, d))) for b, d in cols]) + " \\\\")
        out.append("\\midrule")
    out[-1] = "\\bottomrule"
    out.append("\\end{tabular}")
    return _tex_escape("\n".join(out)) + "\n"


def write_table1(results: Path, out: Path, paper_csv: Path = PAPER_NUMBERS, model: str | None = None,
                 configs: Path = CONFIGS, budgets=BUDGETS, datasets=DATASETS) -> str:
    """``out/table1.{csv,md,tex}``; returns the line to print. :class:`ReportError` when there is nothing to
    write (then nothing is written)."""
    methods, entries = build_entries(results, paper_csv, model, configs, budgets, datasets)
    if not any(e.accuracy is not None for e in entries):
        raise ReportError(f"no runs in {results} for datasets {', '.join(datasets)} at budgets "
                          f"{', '.join(map(str, budgets))} (or 576 for vanilla)"
                          + (f" of model {model}" if model else "") + "; nothing written")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(entries, out / "table1.csv")
    model = model or next((e.model for e in entries if e.model), None)
    (out / "table1.md").write_text(render_markdown(methods, entries, budgets, datasets, model))
    (out / "table1.tex").write_text(render_latex(methods, entries, budgets, datasets))
    filled = sum(e.accuracy is not None for e in entries)
    return f"table 1: {filled} of {len(entries)} cells have a run -> {out}/table1.{{md,csv,tex}}"

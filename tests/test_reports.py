"""Report scripts on a fixture results/ tree written here (cells missing on purpose): exact table values
(hand-computed in the comments), statistics against hand-computed values, plots rendered headless."""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval import reports
from eval.reports import extras, tau
from eval.fixtures import write_local_fixture
from tests.script_modules import load_script

REPO = Path(__file__).resolve().parents[1]
MODEL = "llava-hf/llava-1.5-7b-hf"


make_table1 = load_script("make_table1")
plot_tau = load_script("plot_tau")

# Method defaults of the fixture's own configs/ (independent of the project's method files). The int keys
# of pyramiddrop's schedules become strings in metrics.json, as in real runs.
METHOD_DEFAULTS = {
    "vanilla": {},
    "svd": {"tau": 0.9, "center": False, "weighting": "uniform", "energy": "s2"},
    "tome": {"inflect": -0.4},
    "fastv": {"agg_layer": 2},
    "pyramiddrop": {"schedules": {192: [0.5, 0.25]}},
    "random": {"per_image": True},
}

GQA_ANSWERS = {"g1": ["yes"], "g2": ["no"], "g3": ["red"], "g4": ["cat"]}
TVQA_ANSWERS = {"t1": ["sign"] * 3 + ["stop"] * 7, "t2": ["42"] + ["x"] * 9}


def write_configs(root: Path) -> Path:
    import yaml

    for method, params in METHOD_DEFAULTS.items():
        (root / "method").mkdir(parents=True, exist_ok=True)
        (root / "method" / f"{method}.yaml").write_text(yaml.safe_dump({"name": method, "params": params}))
    return root


def write_run(results: Path, dataset: str, method: str, budget: int, predictions: dict[str, str],
              answers: dict[str, list[str]], params: dict | None = None, seed: int = 0, model: str = MODEL,
              per_layer: list[float] | None = None, extra: dict[str, dict] | None = None, name: str | None = None,
              dataset_info: dict | None = None) -> Path:
    """One run folder as harness.runner writes it; accuracy from the real scorer."""
    from eval.scoring import score

    scorer = "vqa" if dataset == "textvqa" else "gqa"
    params = json.loads(json.dumps(METHOD_DEFAULTS[method] if params is None else params))
    digest = f"{dataset}{method}{budget}{seed}{json.dumps(params, sort_keys=True)}{model}{len(predictions)}"
    digest = hashlib.sha256(digest.encode()).hexdigest()
    run_name = name or f"k{budget}-x-{digest[:10]}"
    folder = results / dataset / method / run_name
    folder.mkdir(parents=True)
    rows = []
    for qid, prediction in predictions.items():
        row = {"question_id": qid, "prediction": prediction, "answers": answers[qid], "question_type": None,
               "kept_tokens": budget, "config_hash": digest}
        row.update((extra or {}).get(qid, {}))
        rows.append(row)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    correct = [score(scorer, r["prediction"], r["answers"]) for r in rows]
    metrics = {"accuracy": 100 * sum(correct) / len(correct), "n": len(rows), "scorer": scorer, "dataset": dataset,
               "method": method, "method_kind": "none" if method == "vanilla" else "encoder",
               "method_params": params, "budget": budget, "seed": seed, "model": model, "config_hash": digest,
               "run_name": run_name, "kept_tokens_mean": float(budget), "limit": None, "subset": None,
               "dataset_info": dataset_info or {}}
    if per_layer is not None:
        metrics["image_tokens_per_layer_mean"] = per_layer
        metrics["image_tokens_mean_over_layers"] = sum(per_layer) / len(per_layer)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def gqa(preds: str) -> dict[str, str]:
    return dict(zip(GQA_ANSWERS, preds.split(",")))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """results/ with these cells (accuracy = correct / 4 on GQA):
    GQA vanilla 75 | svd@192 50 (+ a tau=0.5 run at 100 that Table 1 must ignore) | svd@64 25 |
    tome@192 100 (n=4; a second run with n=2 at 50 loses) | pyramiddrop@192: seed 0 at 75 wins over seed 1 at 25 |
    fastv@64 25 (ties svd@64). TextVQA: vanilla (0.9 + 0) / 2 = 45, svd@192 (1.0 + 0.3) / 2 = 65.
    Everything else is missing. One run of another model (tiny)."""
    root = tmp_path_factory.mktemp("reports")
    results, configs = root / "results", write_configs(root / "configs")
    full = [576.0] * 32
    write_run(results, "gqa", "vanilla", 576, gqa("yes,no,red,dog"), GQA_ANSWERS, per_layer=full)
    write_run(results, "gqa", "svd", 192, gqa("yes,no,blue,dog"), GQA_ANSWERS, per_layer=[192.0] * 32,
              extra={q: {"rank": r} for q, r in zip(GQA_ANSWERS, (10, 12, 14, 16))})
    write_run(results, "gqa", "svd", 192, gqa("yes,no,red,cat"), GQA_ANSWERS,
              params={**METHOD_DEFAULTS["svd"], "tau": 0.5}, extra={q: {"rank": 1} for q in GQA_ANSWERS})
    write_run(results, "gqa", "svd", 64, gqa("yes,yes,blue,dog"), GQA_ANSWERS, per_layer=[64.0] * 32,
              extra={"g1": {"rank": 20, "kept_indices": list(range(64))}})
    write_run(results, "gqa", "tome", 192, gqa("yes,no,red,cat"), GQA_ANSWERS, per_layer=[192.0] * 32)
    write_run(results, "gqa", "tome", 192, gqa("yes,yes"), GQA_ANSWERS, name="k192-limit2")
    write_run(results, "gqa", "pyramiddrop", 192, gqa("yes,no,red,dog"), GQA_ANSWERS, seed=0)
    write_run(results, "gqa", "pyramiddrop", 192, gqa("yes,yes,blue,dog"), GQA_ANSWERS, seed=1)
    write_run(results, "gqa", "fastv", 64, gqa("yes,yes,blue,dog"), GQA_ANSWERS, per_layer=[576.0] * 2 + [64.0] * 30)
    write_run(results, "textvqa", "vanilla", 576, {"t1": "sign", "t2": "no"}, TVQA_ANSWERS)
    write_run(results, "textvqa", "svd", 192, {"t1": "Stop.", "t2": "42"}, TVQA_ANSWERS)
    write_run(results, "gqa", "svd", 32, gqa("no,no,no,no"), GQA_ANSWERS, model="tiny")
    return results, configs


def needs_matplotlib():
    pytest.importorskip("matplotlib", reason="figures need the report extra: pip install -e '.[report]'")


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- Table 1


def test_table1_values(tree, tmp_path):
    results, configs = tree
    assert make_table1.main(["--results", str(results), "--out", str(tmp_path), "--configs", str(configs),
                             "--model", MODEL]) == 0
    rows = {(r["dataset"], r["method"], int(r["budget"])): r for r in read_csv(tmp_path / "table1.csv")}
    # the known methods (eval/reports.py): vanilla 1 cell + the others x 5 budgets, per dataset
    assert len(rows) == 2 * (1 + (len(reports.METHODS) - 1) * 5)

    def cell(d, m, b):
        r = rows[(d, m, b)]
        return {k: r[k] for k in ("accuracy", "drop", "n", "best", "paper_accuracy", "paper_drop", "paper_status",
                                  "diff_vs_paper")}

    assert cell("gqa", "vanilla", 576) == {"accuracy": "75.0000", "drop": "", "n": "4", "best": "False",
                                           "paper_accuracy": "61.9000", "paper_drop": "", "paper_status": "text",
                                           "diff_vs_paper": "13.1000"}
    assert cell("gqa", "svd", 192) == {"accuracy": "50.0000", "drop": "-25.0000", "n": "4", "best": "False",
                                       "paper_accuracy": "59.8800", "paper_drop": "-2.0200", "paper_status": "table",
                                       "diff_vs_paper": "-9.8800"}
    assert cell("gqa", "tome", 192) == {"accuracy": "100.0000", "drop": "25.0000", "n": "4", "best": "True",
                                        "paper_accuracy": "", "paper_drop": "", "paper_status": "lost",
                                        "diff_vs_paper": ""}
    # seed 0 beats seed 1 at equal n; paper 56.50 -> drop 56.50 - 61.90 = -5.40, diff 75 - 56.5 = 18.5
    assert cell("gqa", "pyramiddrop", 192) == {"accuracy": "75.0000", "drop": "0.0000", "n": "4", "best": "False",
                                               "paper_accuracy": "56.5000", "paper_drop": "-5.4000",
                                               "paper_status": "table", "diff_vs_paper": "18.5000"}
    assert cell("gqa", "svd", 64)["best"] == cell("gqa", "fastv", 64)["best"] == "True"  # tie at 25.00
    assert cell("gqa", "svd", 64)["diff_vs_paper"] == "-28.7700"  # 25 - 53.77
    assert cell("gqa", "svd", 16) == {"accuracy": "", "drop": "", "n": "", "best": "False", "paper_accuracy": "53.0400",
                                      "paper_drop": "-8.8600", "paper_status": "text", "diff_vs_paper": ""}
    assert cell("gqa", "random", 32)["accuracy"] == "" and cell("gqa", "random", 32)["paper_status"] == "not in paper"
    assert cell("textvqa", "vanilla", 576)["accuracy"] == "45.0000"
    assert cell("textvqa", "svd", 192) == {"accuracy": "65.0000", "drop": "20.0000", "n": "2", "best": "True",
                                           "paper_accuracy": "57.2400", "paper_drop": "-0.9600",
                                           "paper_status": "table", "diff_vs_paper": "7.7600"}
    assert rows[("gqa", "tome", 192)]["candidates"] == "2"
    assert rows[("gqa", "svd", 192)]["excluded_non_default"] == "1"  # the tau = 0.5 run

    md = (tmp_path / "table1.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith("| Method | | 576 GQA | 576 TextVQA | 192 GQA | 192 TextVQA | 128 GQA")
    svd = lines.index(next(line for line in lines if line.startswith("| SVD-Prune | ours |")))
    ours = [c.strip() for c in lines[svd].split("|")[3:-1]]
    paper = [c.strip() for c in lines[svd + 1].split("|")[3:-1]]
    diff = [c.strip() for c in lines[svd + 2].split("|")[3:-1]]
    # columns: 576 G, 576 T, 192 G, 192 T, 128 G, 128 T, 64 G, 64 T, 32 G, 32 T, 16 G, 16 T
    assert ours == ["", "", "50.00 (-25.00, n=4)", "**65.00** (+20.00, n=2)", "", "", "**25.00** (-50.00, n=4)",
                    "", "", "", "", ""]
    assert paper == ["", "", "59.88 (-2.02)", "57.24 (-0.96)", "58.70 (-3.20)", "56.14 (-2.06)", "53.77 (-8.13)",
                     "55.14 (-3.06)", "53.52 (-8.38)", "54.81 (-3.39)", "53.04 (-8.86)", "54.03 (-4.17)"]
    assert diff == ["", "", "-9.88", "+7.76", "", "", "-28.77", "", "", "", "", ""]
    tome = next(line for line in lines if line.startswith("| ToMe | ours |"))
    assert "**100.00** (+25.00, n=4)" in tome
    assert lines[lines.index(tome) + 1].split("|")[5].strip() == "n/a"  # ToMe 192 GQA: in the paper, value lost
    assert any(line.startswith("| Random-k † | ours |") for line in lines)  # extra methods are marked
    assert md.index("*Encoder-side*") < md.index("| SVD-Prune |") < md.index("*Decoder-side*") < md.index("| FastV |")
    vanilla = next(line for line in lines if line.startswith("| Vanilla | ours |"))
    assert [c.strip() for c in vanilla.split("|")[3:5]] == ["75.00 (n=4)", "45.00 (n=2)"]

    tex = (tmp_path / "table1.tex").read_text()
    assert "\\textbf{100.00} {\\scriptsize (+25.00, n=4)}" in tex
    assert tex.count("\\begin{tabular}") == 1 and tex.rstrip().endswith("\\end{tabular}")
    assert "\\multicolumn{2}{c}{192}" in tex


def test_table1_needs_a_model_choice_and_refuses_an_empty_tree(tree, tmp_path, capsys):
    results, configs = tree
    assert make_table1.main(["--results", str(results), "--out", str(tmp_path), "--configs", str(configs)]) == 2
    err = capsys.readouterr().err
    assert "several models" in err and "tiny" in err and MODEL in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_table1.main(["--results", str(empty), "--out", str(tmp_path / "t"), "--configs", str(configs)]) == 2
    assert capsys.readouterr().err == (f"error: no runs in {empty} for datasets gqa, textvqa at budgets 192, 128, 64, "
                                       "32, 16 (or 576 for vanilla); nothing written\n")
    assert not (tmp_path / "t").exists()


def test_tau_plot_refuses_an_empty_tree(tree, tmp_path, capsys):
    results, configs = tree
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot_tau.main(["--results", str(empty), "--configs", str(configs)]) == 2
    assert capsys.readouterr().err == (f"error: no SVD-Prune runs with default parameters except tau for dataset gqa "
                                       f"in {empty}; nothing written (python run.py -m experiment=tau_ablation)\n")
    assert list(empty.iterdir()) == []


def test_table1_cli(tree, tmp_path):
    results, configs = tree
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table1.py"), "--results", str(results),
                           "--out", str(tmp_path), "--configs", str(configs), "--model", MODEL],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {"table1.md", "table1.csv", "table1.tex"}


# ------------------------------------------------------------------------------------------ tau plot


def test_tau_plot(tree, tmp_path):
    needs_matplotlib()
    results, configs = tree
    assert plot_tau.main(["--results", str(results), "--figures", str(tmp_path / "fig"), "--tables",
                          str(tmp_path / "tab"), "--configs", str(configs), "--model", MODEL]) == 0
    rows = read_csv(tmp_path / "tab" / "tau_ablation.csv")
    got = [(r["budget"], r["tau"], r["accuracy"], r["n"], r["rank_mean"], r["rank_median"]) for r in rows]
    # svd@64 tau .9: one rank value (20); svd@192 tau .5: ranks all 1; svd@192 tau .9: 10,12,14,16
    assert got == [("64", "0.9000", "25.0000", "4", "20.0000", "20.0000"),
                   ("192", "0.5000", "100.0000", "4", "1.0000", "1.0000"),
                   ("192", "0.9000", "50.0000", "4", "13.0000", "13.0000")]
    for name in ("fig3_tau", "tau_rank"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "fig" / f"{name}.{ext}").stat().st_size > 1000
    assert (tmp_path / "fig" / "fig3_tau.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tau_rank_source_is_the_largest_run(tree):
    results, configs = tree
    _, ranks = tau.collect(results, "gqa", MODEL, configs)
    assert ranks == {0.5: [1, 1, 1, 1], 0.9: [10, 12, 14, 16]}  # tau .9: the 192 run (4 ranks), not the 64 one


# ------------------------------------------------------------------------------------------ statistics


def test_ci_and_paired_tests(tree, tmp_path):
    results, configs = tree
    ci, paired = extras.confidence(results, tmp_path, MODEL, configs, n_boot=10_000, seed=0)
    by_cell = {(r["dataset"], r["method"], r["budget"]): r for r in ci}
    # [1,1,1,0]: resampled count ~ Binomial(4, .75), P(0) = .004 < .025 < P(<=1) = .051 -> [25, 100]
    assert (by_cell[("gqa", "vanilla", 576)]["ci_low"], by_cell[("gqa", "vanilla", 576)]["ci_high"]) == (25.0, 100.0)
    # [1,1,0,0]: P(0) = P(4) = .0625 > .025 -> [0, 100]
    assert (by_cell[("gqa", "svd", 192)]["ci_low"], by_cell[("gqa", "svd", 192)]["ci_high"]) == (0.0, 100.0)
    assert by_cell[("textvqa", "svd", 192)]["accuracy"] == pytest.approx(65.0)
    rows = {(r["dataset"], r["budget"], r["method"]): r for r in paired}
    tome = rows[("gqa", 192, "tome")]  # tome [1,1,1,1] vs svd [1,1,0,0]: 2 discordant, all for tome
    assert (tome["diff"], tome["n_method_only"], tome["n_svd_only"], tome["p"], tome["test"]) == \
        (50.0, 2, 0, 0.5, "mcnemar-exact")
    van = rows[("gqa", 64, "vanilla")]  # vanilla [1,1,1,0] vs svd@64 [1,0,0,0]
    assert (van["diff"], van["n_method_only"], van["n_svd_only"], van["p"]) == (50.0, 2, 0, 0.5)
    assert rows[("gqa", 64, "fastv")]["p"] == 1.0 and rows[("gqa", 64, "fastv")]["diff"] == 0.0
    assert sorted(k for k in rows if k[0] == "gqa") == sorted(
        [("gqa", 192, "vanilla"), ("gqa", 192, "tome"), ("gqa", 192, "pyramiddrop"), ("gqa", 64, "vanilla"),
         ("gqa", 64, "fastv")])
    assert all(r["p_holm"] == 1.0 for r in paired if r["dataset"] == "gqa")  # 5 x 0.5 -> capped at 1
    tv = rows[("textvqa", 192, "vanilla")]  # d = [-0.1, -0.3]: |sum| >= .4 in half of the sign flips
    assert tv["test"] == "sign-flip" and tv["diff"] == pytest.approx(-20.0) and tv["p"] == pytest.approx(0.5, abs=0.03)
    assert (tmp_path / "table1_ci.csv").is_file() and (tmp_path / "paired_vs_svd.md").is_file()


def test_bootstrap_matches_index_resampling():
    rng = np.random.default_rng(1)
    scores = rng.choice([0.0, 0.3, 0.6, 1.0], size=400, p=[0.4, 0.1, 0.1, 0.4])
    fast = reports.bootstrap_mean_ci(scores, n_boot=20_000, seed=0)
    slow = np.quantile(scores[rng.integers(0, 400, size=(20_000, 400))].mean(axis=1), [0.025, 0.975])
    assert fast == pytest.approx(tuple(slow), abs=0.006)
    assert reports.bootstrap_mean_ci(scores, seed=3) == reports.bootstrap_mean_ci(scores, seed=3)
    assert reports.bootstrap_mean_ci([1.0] * 7) == (1.0, 1.0)


def test_exact_tests_and_holm():
    assert reports.binomial_two_sided_p(3, 10) == 2 * (1 + 10 + 45 + 120) / 1024
    assert reports.binomial_two_sided_p(0, 5) == 2 / 32
    assert reports.binomial_two_sided_p(5, 10) == 1.0 and reports.binomial_two_sided_p(0, 0) == 1.0
    a = [1] * 8 + [0] * 2 + [1] * 5
    b = [0] * 8 + [1] * 2 + [1] * 5
    n10, n01, p = reports.mcnemar_exact(a, b)
    assert (n10, n01, p) == (8, 2, 2 * (1 + 10 + 45) / 1024)
    d = np.array(a, float) - np.array(b, float)
    assert reports.sign_flip_p(d, n_perm=20_000, seed=0) == pytest.approx(p, abs=0.01)
    assert reports.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


# ---------------------------------------------------------------------------------------------- compute


def test_paper_convention_compute_reproduces_table2():
    paper = {576: 3.456, 192: 1.428, 128: 1.098, 64: 0.769, 32: 0.606, 16: 0.524}  # METHODS.md / Table 2
    for k, total in paper.items():
        assert reports.paper_convention_tmacs([k] * 32) == pytest.approx(total, abs=6e-4)
    # FastV-like profile: 2 layers at 576 then 30 at 64 (hand-computed: 947,135,174,144 MACs)
    assert reports.paper_convention_tmacs([576] * 2 + [64] * 30) == pytest.approx(0.947135174144, abs=1e-12)


def test_pareto_formula_and_measured(tree, tmp_path):
    needs_matplotlib()
    results, configs = tree
    rows, source = extras.pareto(results, tmp_path / "tab", tmp_path / "fig", MODEL, configs,
                                 efficiency=tmp_path / "no-efficiency")
    assert source.startswith("paper convention") and "n_text = 50" in source
    got = {(r["method"], r["budget"]): (round(r["compute_t"], 9), r["on_front"]) for r in rows if r["dataset"] == "gqa"}
    assert got == {("vanilla", 576): (3.456167827, False), ("svd", 192): (1.428004323, False),
                   ("tome", 192): (1.428004323, True), ("pyramiddrop", 192): (1.428004323, False),
                   ("svd", 64): (0.769129691, True), ("fastv", 64): (0.947135174, False)}
    assert (tmp_path / "fig" / "pareto.png").stat().st_size > 1000 and (tmp_path / "fig" / "pareto.pdf").is_file()

    eff = tmp_path / "eff"
    eff.mkdir()
    (eff / "other.csv").write_text("method,budget,gmacs\nsvd,192,1500\nvanilla,576,3500\n")
    rows, source = extras.pareto(results, tmp_path / "tab2", tmp_path / "fig2", MODEL, configs, efficiency=eff)
    assert source == "measured: other.csv:gmacs"
    got = {(r["method"], r["budget"]): r["compute_t"] for r in rows if r["dataset"] == "gqa"}
    assert got[("svd", 192)] == 1.5 and got[("vanilla", 576)] == 3.5 and got[("tome", 192)] is None
    # scripts/flops.py's layout: the dataset's own column first, paper_total_T for the others
    (eff / "other.csv").unlink()
    (eff / "flops.csv").write_text("method,kind,budget,paper_total_T,gqa_total_T,true_total_T,true_gqa_total_T\n"
                                   "svd,encoder,192,1.428,1.6,9,9\nvanilla,none,576,3.456,3.7,9,9\n"
                                   "trim,encoder,64,,,,\n")
    rows, source = extras.pareto(results, tmp_path / "tab3", tmp_path / "fig3", MODEL, configs, efficiency=eff)
    assert source == "measured: flops.csv:gqa_total_T, flops.csv:paper_total_T"
    got = {(r["dataset"], r["method"], r["budget"]): r["compute_t"] for r in rows}
    assert got[("gqa", "svd", 192)] == 1.6 and got[("gqa", "vanilla", 576)] == 3.7
    assert got[("textvqa", "svd", 192)] == 1.428 and got[("textvqa", "vanilla", 576)] == 3.456


def test_pareto_front():
    pts = [(1.0, 50.0), (2.0, 60.0), (2.0, 55.0), (3.0, 60.0), (0.5, 40.0)]
    assert reports.pareto_front(pts) == [4, 0, 1]


# ---------------------------------------------------------------------------------------------- patches


def test_overlay_darkens_exactly_the_pruned_patches():
    image = np.full((336, 336, 3), 200, dtype=np.uint8)
    out = extras.overlay(image, [0, 25])  # (row 0, col 0) and (row 1, col 1)
    assert (out[:14, :14] == 200).all() and (out[14:28, 14:28] == 200).all()
    assert (out[14:28, :14] == 60).all() and (out[:14, 14:28] == 60).all() and (out[-14:, -14:] == 60).all()
    with pytest.raises(ValueError):
        extras.kept_mask([576])


def test_kept_patches_figure_from_a_local_dataset(tmp_path):
    needs_matplotlib()
    data = write_local_fixture(tmp_path / "data", questions=4, images=2, seed=0)
    answers = {f"q{i:05d}": ["red"] for i in range(4)}
    results = tmp_path / "results"
    configs = write_configs(tmp_path / "configs")
    info = {"path": str(data)}
    kept = {q: {"kept_indices": list(range(i, 576, 9))} for i, q in enumerate(answers)}
    write_run(results, "local", "svd", 64, {q: "red" for q in answers}, answers, extra=kept, dataset_info=info)
    write_run(results, "local", "random", 64, {q: "blue" for q in answers}, answers, dataset_info=info,
              extra={q: {"kept_indices": list(range(64))} for q in answers})
    write_run(results, "local", "fastv", 64, {q: "red" for q in answers}, answers, dataset_info=info)
    path = extras.patches(results, tmp_path / "fig", budget=64, examples=2, model=MODEL, configs=configs)
    assert path.stat().st_size > 5000 and (tmp_path / "fig" / "kept_patches.pdf").is_file()
    # the image really comes from the dataset: LLaVA's padded square of q00000's image
    from omegaconf import OmegaConf
    from PIL import Image

    from eval.datasets import load_dataset

    record = load_dataset(OmegaConf.create({"name": "local", "path": str(data)})).records[0]
    square = np.asarray(extras.padded_square(Image.open(record.image)))
    assert square.shape == (336, 336, 3)
    with pytest.raises(reports.ReportError):
        extras.patches(results, tmp_path / "fig", budget=32, model=MODEL, configs=configs)


def test_load_runs_skips_broken_and_scratch(tmp_path):
    write_run(tmp_path, "gqa", "svd", 64, gqa("yes,no,red,cat"), GQA_ANSWERS)
    (tmp_path / "gqa" / "svd" / "_scratch").mkdir()
    (tmp_path / "gqa" / "svd" / "_scratch" / "metrics.json").write_text("{}")
    (tmp_path / "gqa" / "svd" / "broken").mkdir()
    (tmp_path / "gqa" / "svd" / "broken" / "metrics.json").write_text("{not json")
    with pytest.warns(UserWarning, match="broken"):
        runs = reports.load_runs(tmp_path)
    assert [r.accuracy for r in runs] == [100.0]


def test_paper_numbers_file():
    numbers = reports.read_paper_numbers()
    table = reports.paper_table1(numbers)
    assert table[("gqa", "vanilla", 576)].accuracy == 61.90 and table[("textvqa", "vanilla", 576)].accuracy == 58.20
    assert [table[("gqa", "svd", b)].accuracy for b in (192, 128, 64, 32, 16)] == [59.88, 58.70, 53.77, 53.52, 53.04]
    assert [table[("textvqa", "svd", b)].accuracy for b in (192, 128, 64, 32, 16)] == [57.24, 56.14, 55.14, 54.81, 54.03]
    assert table[("gqa", "visionzip", 32)].accuracy == 51.80 and table[("textvqa", "sparsevlm", 64)].accuracy == 53.40
    assert all(p.source for p in numbers)
    # never invented: every value is a table cell or stated in the text; lost cells stay empty
    assert all((p.accuracy is None) == (p.status == "lost") for p in numbers)
    assert sum(p.accuracy is not None for p in numbers if p.table == "table1") == 19  # 2 vanilla + 10 SVD-Prune + 7 baselines


def test_mini_cases_counts_each_case():
    rows = [{"question_id": "test-0", "answers": ["yes"], "prediction": "no"},
            {"question_id": "test-1", "answers": ["no"], "prediction": "no"},
            {"question_id": "test-2", "answers": ["yes"], "prediction": "yes"},
            {"question_id": "test-3", "answers": ["red"], "prediction": "red"}]
    questions = {"test-0": "is there a red shape?",  # colour present, missed
                 "test-1": "is there not a red shape?",  # colour present, right
                 "test-2": "is no circle present?",  # shape absent, right
                 "test-3": "what color is the shape?"}
    assert load_script("mini_cases").case_accuracy(rows, questions) == {
        "color": (1, 1), "color present": (1, 2), "shape absent": (1, 1)}


def test_reports_compute_is_the_flops_model():
    """The reports' per-run compute is svdprune.flops' paper convention (one FLOPs model): the layer count and
    n_text they assume are its, and its vanilla total is the paper's 3.456 T."""
    from svdprune import flops

    assert reports.compute.LLM_LAYERS == flops.LLAVA15_7B.text_layers
    assert reports.paper_convention_tmacs([576.0] * 32) == flops.paper_convention_tmacs([576.0] * 32)
    assert round(flops.paper_convention_tmacs([576.0] * 32), 3) == 3.456

"""Golden cases for the official scorers (expected values worked out by hand), predictions-file scoring
and the ``python -m eval.score`` CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.score import main as score_main
from eval.scoring import (SCORERS, gqa_accuracy, normalize_gqa, normalize_vqa, score, score_predictions,
                          textvqa_accuracy)
from svdprune.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------- GQA


@pytest.mark.parametrize("prediction,answer,expected", [
    ("yes", "yes", 1.0),
    ("Yes", "yes", 1.0),              # lowercased
    ("Yes.", "yes", 1.0),             # trailing period
    ("yes...", "yes", 1.0),           # every trailing period (rstrip('.'))
    ("  Table. \n", "table", 1.0),    # model_vqa_loader strips the output before rstrip('.')
    ("2.", "2", 1.0),
    ("yes. .", "yes", 0.0),           # only periods at the very end go: "yes. " != "yes"
    ("no", "yes", 0.0),
    ("yes, it is", "yes", 0.0),       # exact match: no partial credit
    ("the table", "table", 0.0),      # no article removal for GQA
    ("tables", "table", 0.0),
    ("table", ["table"], 1.0),        # answers as the runner passes them (a list of one)
])
def test_gqa_accuracy_golden(prediction, answer, expected):
    assert gqa_accuracy(prediction, answer) == expected


def test_gqa_reference_is_not_normalised():
    """GQA's eval.py compares against the stored answer (always lowercase, no period) as it is."""
    assert normalize_gqa("  The Cat.. ") == "the cat"
    assert gqa_accuracy("table", "table.") == 0.0
    assert gqa_accuracy("Table", "Table") == 0.0


# ------------------------------------------------------------------------------------------ TextVQA


@pytest.mark.parametrize("raw,expected", [
    ("Two", "2"),                      # number words -> digits (after lowercasing)
    ("ten", "10"),
    ("none", "0"),                     # the official map sends "none" to "0" too
    ("eleven", "eleven"),              # only zero..ten
    ("the cat.", "cat"),               # article dropped, trailing period deleted
    ("A Dog", "dog"),
    ("an", ""),
    ("dont", "don't"),                 # missing apostrophe restored
    ("don't", "don't"),
    ("whats", "what's"),
    ("what's", "what 's"),             # "'s" is split off first, so it does not meet "whats"
    ("3.5", "3.5"),                    # a period before a digit stays
    ("3.", "3"),
    ("1,000", "1000"),                 # commas deleted
    ("Hello, World?", "hello world"),  # ',' and '?' deleted
    ("coca-cola", "coca cola"),        # a mark touching no space becomes a space
    ("coca - cola", "coca cola"),      # ... and is deleted when it touches one (spaces then collapse)
    ("x/y z /", "xy z"),               # one mark touching a space deletes every occurrence of it
    ("(yes)", "yes"),
    ("@home!", "home"),
    ("new\nyork\tcity", "new york city"),
    ("  Stop  ", "stop"),
    ("coca:cola", "coca:cola"),        # ':' is not in the official punctuation list
    ("somebody'd", "somebodyd"),       # the official table's own typo, kept
    ("a." * 40, "a" * 32 + "a." * 8),  # the official re.sub gets re.UNICODE (32) as its count
])
def test_vqa_normalisation_golden(raw, expected):
    assert normalize_vqa(raw) == expected


def test_textvqa_accuracy_leave_one_out_by_hand():
    others = ["x"] * 10

    def answers(k):  # k of the 10 human answers say "dakota"
        return ["dakota"] * k + others[k:]

    assert textvqa_accuracy("dakota", answers(10)) == 1.0
    assert textvqa_accuracy("dakota", answers(4)) == 1.0  # any 9 still hold >= 3 matches
    # 3 of 10: leaving out one of the 3 matches (3 subsets) leaves 2 -> 2/3; the other 7 subsets keep 3 -> 1.
    # (3 * 2/3 + 7 * 1) / 10 = 9/10
    assert textvqa_accuracy("dakota", answers(3)) == pytest.approx(0.9)
    # 2 of 10: 2 subsets leave 1 match -> 1/3; 8 subsets keep 2 -> 2/3. (2 * 1/3 + 8 * 2/3) / 10 = 6/10
    assert textvqa_accuracy("dakota", answers(2)) == pytest.approx(0.6)
    # 1 of 10: 1 subset leaves 0 -> 0; 9 subsets keep 1 -> 1/3. (9 * 1/3) / 10 = 3/10
    assert textvqa_accuracy("dakota", answers(1)) == pytest.approx(0.3)
    assert textvqa_accuracy("dakota", answers(0)) == 0.0


def test_textvqa_accuracy_with_normalisation():
    assert textvqa_accuracy("Two", ["2"] * 3 + ["three"] * 7) == pytest.approx(0.9)
    assert textvqa_accuracy("The Cat.", ["cat", "a cat"] + ["dog"] * 8) == pytest.approx(0.6)
    assert textvqa_accuracy("dont", ["don't"] * 10) == 1.0
    assert textvqa_accuracy("Coca-Cola", ["coca cola"] * 4 + ["pepsi"] * 6) == 1.0
    # the TextVQA camera question: 5 x "dakota" among its 10 answers
    camera = ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota",
              "dakota digital", "dakota digital", "dakota", "dakota"]
    assert textvqa_accuracy("Dakota", camera) == 1.0
    assert textvqa_accuracy("Dakota Digital", camera) == pytest.approx(0.9)
    assert textvqa_accuracy("Nous les gosses", camera) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        textvqa_accuracy("x", [])


def test_scorer_registry():
    assert SCORERS["gqa"] is gqa_accuracy and SCORERS["vqa"] is textvqa_accuracy
    assert score("vqa", "two", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert score("gqa", "Yes.", ["yes"]) == 1.0
    with pytest.raises(UserError, match="unknown scorer 'bleu'; allowed: gqa, vqa"):
        score("bleu", "a", ["a"])


# ------------------------------------------------------------------------------- predictions files


def write_predictions(path: Path, rows: list[dict]) -> Path:
    with path.open("w") as f:
        for row in rows:
            base = {"prompt": "p", "kept_tokens": 64, "config_hash": "abc", "latency_s": 0.1}
            f.write(json.dumps({**base, **row}) + "\n")
    return path


GQA_ROWS = [
    {"question_id": "1", "prediction": "Yes.", "answers": ["yes"], "question_type": "verify/attr"},
    {"question_id": "2", "prediction": "cup", "answers": ["cup"], "question_type": "query/rel"},
    {"question_id": "3", "prediction": "blue", "answers": ["red"], "question_type": "query/attr"},
    {"question_id": "4", "prediction": "no", "answers": ["no"], "question_type": "query/attr"},
    {"question_id": "5", "prediction": "man", "answers": ["woman"], "question_type": None},
]


def test_score_predictions_gqa_by_type(tmp_path):
    result = score_predictions(write_predictions(tmp_path / "predictions.jsonl", GQA_ROWS), "gqa")
    assert set(result) == {"accuracy", "n", "by_type"}
    assert result["n"] == 5 and result["accuracy"] == pytest.approx(60.0)  # 3 of 5 right
    by_type = result["by_type"]
    assert by_type["query/attr"] == {"accuracy": pytest.approx(50.0), "n": 2}
    assert by_type["query/*"] == {"accuracy": pytest.approx(200 / 3), "n": 3}   # structural: query
    assert by_type["*/attr"] == {"accuracy": pytest.approx(200 / 3), "n": 3}    # semantic: attr
    assert by_type["verify/*"] == {"accuracy": pytest.approx(100.0), "n": 1}
    assert sum(v["n"] for k, v in by_type.items() if "*" not in k) == 4  # the untyped line is only in the total


def test_score_predictions_vqa(tmp_path):
    rows = [{"question_id": 1, "prediction": "Two", "answers": ["2"] * 3 + ["3"] * 7, "question_type": None},
            {"question_id": 2, "prediction": "ale", "answers": ["ale"] * 2 + ["x"] * 8, "question_type": None}]
    result = score_predictions(write_predictions(tmp_path / "p.jsonl", rows), "vqa")
    assert result == {"accuracy": pytest.approx(75.0), "n": 2, "by_type": {}}  # (0.9 + 0.6) / 2


def test_score_predictions_bad_input(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        score_predictions(tmp_path / "missing.jsonl", "gqa")
    path = write_predictions(tmp_path / "p.jsonl", GQA_ROWS[:2])
    with path.open("a") as f:
        f.write('{"question_id": "9", "answers": ["a"]}\n')
    with pytest.raises(UserError, match=r"p.jsonl:3: bad prediction line \(KeyError"):
        score_predictions(path, "gqa")
    write_predictions(path, GQA_ROWS[:2] + [GQA_ROWS[0]])
    with pytest.raises(UserError, match=r":3: question_id '1' appears twice"):
        score_predictions(path, "gqa")
    write_predictions(path, [{**GQA_ROWS[0], "answers": []}])
    with pytest.raises(UserError, match=":1: bad prediction line"):
        score_predictions(path, "vqa")
    path.write_text("")
    with pytest.raises(UserError, match="has no predictions"):
        score_predictions(path, "gqa")
    with pytest.raises(UserError, match="unknown scorer"):
        score_predictions(path, "nope")


def test_cli_reads_scorer_from_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    path = write_predictions(run / "predictions.jsonl", GQA_ROWS)
    (run / "metrics.json").write_text(json.dumps({"scorer": "gqa", "accuracy": 60.0}))
    assert score_main([str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scorer"] == "gqa" and out["accuracy"] == pytest.approx(60.0) and out["n"] == 5
    # --scorer wins over metrics.json. VQA accuracy with a single human answer is always 0: leaving that
    # answer out leaves no match, min(1, 0/3) = 0
    assert score_main([str(path), "--scorer", "vqa"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scorer"] == "vqa" and out["accuracy"] == 0.0


def test_cli_errors(tmp_path, capsys):
    path = write_predictions(tmp_path / "predictions.jsonl", GQA_ROWS)
    assert score_main([str(path)]) == 2  # no metrics.json
    err = capsys.readouterr().err
    assert err.startswith("error: no metrics.json next to") and "--scorer" in err and err.count("\n") == 1
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 1}))
    assert score_main([str(path)]) == 2
    assert 'has no "scorer" key' in capsys.readouterr().err
    assert score_main([str(tmp_path / "nope.jsonl"), "--scorer", "gqa"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_as_module(tmp_path):
    path = write_predictions(tmp_path / "predictions.jsonl", GQA_ROWS)
    done = subprocess.run([sys.executable, "-m", "eval.score", str(path), "--scorer", "gqa"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"] == pytest.approx(60.0)

"""Accuracy of easy-VQA predictions by question case: open shape / colour questions, and yes/no questions
split by whether the thing they name is in the image (``eval.easyvqa.case``). The mini model card reports these.

    python scripts/mini_cases.py results/mini/runs/<sha12>/easyvqa/vanilla/<run>/predictions.jsonl
"""
from __future__ import annotations

import argparse
from pathlib import Path

from eval.easyvqa import case_accuracy, load
from harness.results import read_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path)
    args = parser.parse_args()
    rows = read_predictions(args.predictions)
    splits = {row["question_id"].split("-")[0] for row in rows}
    questions = {r.question_id: r.question for split in sorted(splits) for r in load({"split": split}).records}
    for kind, (correct, total) in case_accuracy(rows, questions).items():
        print(f"{kind:15s} {correct:5d} / {total:5d}  {100 * correct / total:5.1f}%")
    correct, total = sum(row["prediction"] == row["answers"][0] for row in rows), len(rows)
    print(f"{'all':15s} {correct:5d} / {total:5d}  {100 * correct / total:5.1f}%")


if __name__ == "__main__":
    main()

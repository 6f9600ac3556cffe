"""Table 2 of the SVD-Prune paper (prefill compute) for every registered method and budget
(bench/flops_table.py: how it is counted).

    python scripts/flops.py                       # -> results/efficiency/flops.{csv,md}
    python scripts/flops.py --methods vanilla svd fastv --budgets 64 16 --output-dir /tmp/eff
    python scripts/flops.py --tokenizer /data/llava-1.5-7b-hf   # recompute the real prompt lengths
    python scripts/flops.py --family qwen25vl     # -> results/efficiency/flops_qwen25vl.{csv,md} (per image size)
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.flops_table import BUDGETS, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=("llava15", "qwen25vl"), default="llava15",
                        help="qwen25vl: Qwen2.5-VL-7B per image size -> flops_qwen25vl.{csv,md} (every method of "
                             "svdprune.families.supported_methods('qwen25vl'))")
    parser.add_argument("--methods", nargs="*", default=None, help="default: the paper's methods + every registered one")
    parser.add_argument("--budgets", nargs="*", type=int, default=BUDGETS)
    parser.add_argument("--output-dir", default=str(ROOT / "results" / "efficiency"))
    parser.add_argument("--tokenizer", default=None,
                        help="llava-hf folder or tokenizer.json to measure the real prompt lengths (default: recorded)")
    parser.add_argument("--question", default="What color is the shirt the woman is wearing?")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (counting needs no speed; 1 avoids "
                        "oversubscribing a shared machine)")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()

"""Throughput of the engine's per-question path (questions/s of ``svdprune.families.generate``, run.py's
``schedule=per_question``) at batch sizes 1, 8 and 32, per method and budget, on the device at hand. Every question
here has its own image; what run.py's default ``schedule=by_image`` gains when images carry many questions is
measured by ``scripts/bench_sweep_throughput.py`` (bench/throughput.py).

    python scripts/bench_throughput.py --model tiny                       # CPU
    python scripts/bench_throughput.py --model geometry7b --methods vanilla svd --budgets 64 16   # GPU
"""
from __future__ import annotations

import argparse

from bench.models import common_arguments
from bench.throughput import run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_arguments(parser)
    parser.set_defaults(methods=["vanilla", "svd"], budgets=[64, 16])
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 8, 32])
    parser.add_argument("--questions", type=int, default=64, help="questions per configuration (whole batches)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()

"""What scheduling questions by image buys a sweep: measured questions/s of the old per-question path and the
by-image path in one invocation, and the analytic compute of the whole Table 1 sweep before and after.
(bench/sweep_throughput.py: what is measured and how).

    python scripts/bench_sweep_throughput.py                  # both parts -> results/efficiency/sweep_*
    python scripts/bench_sweep_throughput.py --compute-only   # only the analytic part (no model, seconds)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.sweep_throughput import ROOT, run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compute-only", action="store_true", help="only the analytic Table 1 compute")
    parser.add_argument("--model", type=Path, default=ROOT / "checkpoints" / "mini")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--questions-per-image", type=int, default=30)
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 16])
    parser.add_argument("--configs", nargs="*", default=["vanilla:576", "svd:192", "svd:16"],
                        help="method:budget pairs")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=4, help="image decoding threads of the new path")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()

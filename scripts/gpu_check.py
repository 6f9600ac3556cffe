"""GPU day one in one prepared script (issue 22, item 5): what only a GPU can show, checked and written down.
(bench/gpu_check.py: what each step checks).

    python scripts/gpu_check.py                        # on a machine with a CUDA GPU: <= ~8 minutes on one GPU
    python scripts/gpu_check.py --cpu-dry-run          # the same code paths on the CPU, small sizes (CI runs it)
"""
from __future__ import annotations

import argparse
import sys

from bench.gpu_check import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same code paths on the CPU, small sizes")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--skip-table3", action="store_true")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

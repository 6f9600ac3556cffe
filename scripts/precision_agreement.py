"""Do the methods keep the same tokens in half precision as in float32? (issue 22, item 2)
(bench/precision.py).

    python scripts/precision_agreement.py --label after --output-dir results/precision
    # the code before a change, e.g. a git worktree of the previous commit, same script:
    PYTHONPATH=/tmp/before python scripts/precision_agreement.py --label before --output-dir results/precision
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.precision import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="which code this is (e.g. before, after)")
    parser.add_argument("--dtypes", nargs="+", default=["float16"], choices=["float16", "bfloat16"])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method but vanilla")
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output-dir", default=str(Path(tempfile.gettempdir()) / "svdprune-bench"))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""LLaVA-NeXT-7B geometry on the CPU: every supported method through run.py on a 336 x 336 and a 672 x 672 image,
time to first token side by side, and Table 2-style compute per image size.
(bench/llava_next_geometry.py: what is run and measured).

    python scripts/llava_next_geometry.py --model /work/llava-next7b-random --output-dir results/efficiency
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.llava_next_geometry import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, default=Path(tempfile.gettempdir()) / "svdprune-bench")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-runs", action="store_true")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

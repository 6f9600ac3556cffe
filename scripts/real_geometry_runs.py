"""Every method end to end through run.py on a LLaVA-1.5-7B-geometry folder, one process per run.
(bench/real_geometry.py: what each run checks).

    python scripts/real_geometry_runs.py --model /work/llava7b-random --clip /work/clip-l-random \
        --output-dir results/efficiency
"""
from __future__ import annotations

import argparse
import sys

from bench.real_geometry import run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="llava-hf folder (scripts/make_random_llava.py), or with "
                        "--family qwen25vl a Qwen2.5-VL folder (scripts/make_random_qwen25vl.py)")
    parser.add_argument("--family", choices=("llava15", "qwen25vl"), default="llava15",
                        help="qwen25vl: its methods, a 448 x 448 and a 1000 x 700 image, one row per image")
    parser.add_argument("--clip", default=None, help="TRIM's and CDPruner's CLIP folder (make_random_llava.py --clip)")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method of the family")
    parser.add_argument("--budgets", nargs="*", type=int, default=[192, 16])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--runs-dir", default=None, help="run.py output_dir (default: a temp folder)")
    parser.add_argument("--output-dir", default=None, help="table folder (default: scratch, not results/)")
    parser.add_argument("--tag", default="cpu-7b")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in runs_<tag>.csv (those of the (method, budget) pairs run again "
                             "are replaced)")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

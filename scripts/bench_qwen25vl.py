"""Qwen2.5-VL prefill latency, vanilla vs SVD-Prune (k = 16), side by side in one process.
(bench/qwen25vl.py: what is measured and how).

    python scripts/bench_qwen25vl.py --model /work/qwen25vl7b-random --output-dir results/efficiency
    python scripts/bench_qwen25vl.py --model /work/qwen25vl7b-random --questions 8 --budget 64 --repeats 2 \
        --output-dir results/efficiency      # one shared prefix per image vs whole prompts
"""
from __future__ import annotations

import argparse
import sys

from bench.qwen25vl import run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a Qwen2.5-VL folder, or 'tiny' (the random tiny model)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default=None, help="default: cpu-7b for a folder, cpu-tiny for tiny")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--questions", type=int, default=0,
                        help="instead: N questions on one image, whole prompts vs one shared prefix "
                             "(shared_prefix_qwen25vl_<tag>.{csv,md}; --budget 64 is the svd variant's)")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

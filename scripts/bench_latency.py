"""Latency per question (Table 3 of the SVD-Prune paper): prefill and decode separately, the pruning step,
peak memory (VRAM on GPU, RSS on CPU), questions/s, for vanilla and each method at each budget; plus SVD-Prune's
selection time against the vision tower (bench/latency.py: what each column is and how it is timed).

    python scripts/bench_latency.py --model tiny                      # CPU: the random tiny model (scratch output)
    python scripts/bench_latency.py --model /work/llava7b-random --device cpu --dtype bfloat16 \
        --budgets 192 16 --iters 3 --warmup 1 --new-tokens 4 --output-dir results/efficiency   # 7B geometry, CPU
    python scripts/bench_latency.py --model geometry7b                # GPU: LLaVA-1.5-7B shapes, random fp16
    python scripts/bench_latency.py --model /data/llava-1.5-7b-hf --methods vanilla svd --budgets 16
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import sys  # noqa: E402

from bench.latency import add_arguments, run  # noqa: E402
from svdprune.errors import UserError  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()

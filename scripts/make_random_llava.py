"""A llava-hf folder with LLaVA-1.5-7B's exact geometry and seeded random weights (no network;
svdprune/checkpoints/llava15.py says what is real and what is not).

    npm install --prefix /tmp/ltjs llama-tokenizer-js@1.2.2
    python scripts/make_random_llava.py /work/llava7b-random --tokenizer-js /tmp/ltjs/node_modules/llama-tokenizer-js \
        --clip /work/clip-l-random
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from svdprune.checkpoints.llama2_tokenizer import ConversionError
from svdprune.checkpoints.llava15 import write_clip, write_llava


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (keep it outside the repository)")
    parser.add_argument("--tokenizer-js", type=Path, required=True,
                        help="node_modules/llama-tokenizer-js (npm install llama-tokenizer-js@1.2.2)")
    parser.add_argument("--clip", type=Path, default=None, help="also write a random CLIP-L/14-336 here (TRIM)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--shard-gb", type=float, default=2.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    try:
        total = write_llava(args.out, args.tokenizer_js, args.seed, getattr(torch, args.dtype),
                            int(args.shard_gb * (1 << 30)))
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {total / 1e9:.2f} GB of {args.dtype} weights ({time.perf_counter() - started:.0f} s)")
    if args.clip is not None:
        total = write_clip(args.clip, args.seed)
        print(f"wrote {args.clip}: {total / 1e9:.2f} GB CLIP-L/14-336 (float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

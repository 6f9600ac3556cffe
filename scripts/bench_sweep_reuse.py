"""What keeping the loaded model between sweep jobs buys (issue 22, item 7): one 10-run mini sweep through
``python run.py -m`` (Hydra's basic launcher: every job in one process) with ``reuse_model=false`` (each job
loads the model and fingerprints the weights, as before) and ``reuse_model=true`` (the default: jobs with the
same model share it), run side by side in one invocation, alternating, each into a fresh output folder.
(bench/sweep_reuse.py).

    python scripts/bench_sweep_reuse.py                                   # -> /tmp/svdprune-bench/sweep_reuse_cpu.*
    python scripts/bench_sweep_reuse.py --output-dir results/efficiency   # the committed figures
"""
from __future__ import annotations

import argparse
import sys

from bench.sweep_reuse import SCRATCH, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="questions per run (default 300)")
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per variant, alternating (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="run.py threads= (default: torch's)")
    parser.add_argument("--output-dir", default=str(SCRATCH))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

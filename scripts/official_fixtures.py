"""Record the official implementations' outputs on seeded inputs: the fixtures under tests/fixtures/official/.
(baselines/official/record.py: how each recorder runs the authors' code).

    git clone https://github.com/Theia-4869/VisPruner /tmp/VisPruner
    python scripts/official_fixtures.py vispruner --repo /tmp/VisPruner
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from baselines.official.record import RECORDERS

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=sorted(RECORDERS))
    parser.add_argument("--repo", type=Path, required=True, help="a clone of the official repository")
    args = parser.parse_args()
    fixture = RECORDERS[args.method](args.repo)
    out = ROOT / "tests" / "fixtures" / "official" / f"{args.method}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    skipped = len(fixture["skipped_for_ties"])
    print(f"{out.relative_to(ROOT)}: {len(fixture['cases'])} cases, {skipped} skipped for ties")


if __name__ == "__main__":
    main()

"""Fetch GQA / TextVQA ahead of time, at the revisions the configs pin, into the folders the configs read.

    python -m eval.download gqa textvqa              # -> data/gqa, data/textvqa (the configs' dataset.path)
    python -m eval.download gqa --to /data/GQA       # elsewhere: then run with dataset.path=/data/GQA

Only the evaluation split's parquet files are fetched (GQA's testdev-balanced questions and images, not the
repository's training splits; TextVQA's validation split), in the hub's layout, which ``dataset.source=hf_disk`` (and the
default ``auto``) reads as it is. A run with no local copy fetches the same revision through ``datasets`` instead
(cached where ``datasets`` caches); this command is for machines that run offline (cluster nodes) or to keep the
data in one known place.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from eval.gqa import DOWNLOAD_FOLDERS, hub_unreachable
from svdprune.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dataset"
# the files of the split the configs read, as stored in each hub repository
PATTERNS = {"gqa": ["testdev_balanced_instructions/testdev-*.parquet", "testdev_balanced_images/testdev-*.parquet"],
            "textvqa": ["data/validation-*.parquet"]}
REPOS = {"gqa": "lmms-lab/GQA", "textvqa": "lmms-lab/textvqa"}


def download(name: str, folder: Path | None = None) -> Path:
    """Fetch dataset ``name`` at its pinned revision into ``folder`` (default: the config's ``dataset.path``)."""
    if name not in REPOS:
        raise UserError(f"unknown dataset {name!r}; allowed: {', '.join(REPOS)}")
    revision = str(OmegaConf.load(CONFIGS / f"{name}.yaml").revision)
    folder = Path(folder or DOWNLOAD_FOLDERS[name]).expanduser()
    unreachable = hub_unreachable()
    if unreachable is not None:
        raise UserError(f"cannot fetch {REPOS[name]}: the hub is unreachable ({unreachable}); run this where there is "
                        f"network and copy {folder} over")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(REPOS[name], repo_type="dataset", revision=revision, allow_patterns=PATTERNS[name],
                          local_dir=str(folder))
    except Exception as exc:  # noqa: BLE001 - auth, a revision gone, a full disk: one line
        detail = " ".join(str(exc).split())[:200]
        raise UserError(f"cannot fetch {REPOS[name]}@{revision} into {folder} ({type(exc).__name__}: {detail})") from None
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(REPOS), help="datasets to fetch")
    parser.add_argument("--to", type=Path, default=None, help="target folder (one dataset only; default: data/<name>)")
    args = parser.parse_args(argv)
    if args.to is not None and len(args.names) > 1:
        parser.error("--to takes one dataset at a time")
    try:
        for name in args.names:
            folder = download(name, args.to)
            print(f"{name}: {REPOS[name]} at the pinned revision -> {folder} (run with dataset={name}"
                  f"{'' if args.to is None else f' dataset.path={folder}'})")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

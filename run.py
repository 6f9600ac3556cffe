"""Entry point: ``python run.py method=svd budget=32 dataset=gqa`` (Hydra; see configs/)."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from svdprune.errors import UserError


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from harness.runner import run
    from harness.settings import check_config
    from harness.sweeps import skip_reason

    try:
        check_config(cfg)  # before skipping: a bad value is an error even where the run would be skipped
        reason = skip_reason(cfg)  # sweeps: finished runs and vanilla's duplicate budgets
        if reason:
            print(f"skip: {reason}")
            return
        run(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted, rerun the same command to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

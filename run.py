"""Entry point: ``python run.py method=svd budget=32 dataset=gqa`` (Hydra; see configs/)."""
from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from svdprune.errors import UserError


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from harness.runner import run
    from harness.settings import check_config
    from harness.sweep_status import clear_error, record_error
    from harness.sweeps import skip_reason

    try:
        check_config(cfg)  # before skipping: a bad value is an error even where the run would be skipped
        reason = skip_reason(cfg)  # sweeps: finished runs and vanilla's duplicate budgets
        if reason:
            print(f"skip: {reason}")
            return
        run(cfg)
        clear_error()  # sweep jobs: forget an earlier attempt's error (python -m harness.sweep_status)
    except UserError as exc:
        record_error(f"error: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        if os.environ.get("SUBMITIT_EXECUTOR"):  # a cluster job: submitit reports exceptions to the launcher,
            raise  # but an exit leaves it waiting where the cluster has no accounting (sacct)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted, rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        record_error(f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    main()

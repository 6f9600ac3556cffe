"""Entry point: ``python run.py method=svd budget=32 dataset=gqa`` (Hydra; see configs/).

Ctrl-C at any moment (also while Python imports torch or loads the weights) prints one line and exits 130;
a config group value that does not exist (``method=nope``) is one ``error:`` line with exit 2, checked before
Hydra composes the configuration.

Until a run starts (imports, Hydra's composition, the checks) Ctrl-C ends the process at once from the signal
handler: a KeyboardInterrupt raised inside Hydra or OmegaConf can be swallowed (exit 0) or turn into another
error (exit 1, an AttributeError from a half-updated config node), and nothing has been written yet. From
``run()`` on it is Python's KeyboardInterrupt again, which the runner's writers rely on to stop cleanly.
"""
import os
import signal
import sys

INTERRUPTED = "interrupted, rerun the same command to continue"


def _interrupted() -> None:
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(130)


def _exit_at_once(signum, frame) -> None:
    """SIGINT before a run starts: one line, exit 130, whatever the interrupted code would have caught."""
    os.write(2, f"{INTERRUPTED}\n".encode())
    os._exit(130)


def _sigint(handler) -> None:
    """Switch the Ctrl-C behaviour, unless SIGINT is ignored (background jobs) or this is not the CLI."""
    if __name__ == "__main__" and signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _exit_at_once):
        signal.signal(signal.SIGINT, handler)


_sigint(_exit_at_once)

try:
    import hydra
    from omegaconf import DictConfig

    from svdprune.errors import UserError
except KeyboardInterrupt:
    _interrupted()


_KEPT = []  # the process's LoadedModels: Hydra's basic launcher runs a sweep's jobs here, one after the other


def _kept_models():
    """The loaded model this process keeps between sweep jobs (harness/model_cache.py)."""
    if not _KEPT:
        from harness.model_cache import LoadedModels

        _KEPT.append(LoadedModels())
    return _KEPT[0]


def _fail(message: str) -> None:
    """A bad value: one line on stderr, exit 2 (a cluster job raises instead, see below)."""
    from harness.sweep_status import record_error

    record_error(f"error: {message}")
    print(f"error: {message}", file=sys.stderr)


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        from harness.runner import run
        from harness.settings import check_config
        from harness.sweep_status import clear_error, record_error
        from harness.sweeps import skip_reason

        check_config(cfg)  # before skipping: a bad value is an error even where the run would be skipped
        reason = skip_reason(cfg)  # sweeps: finished runs and vanilla's duplicate budgets
        if reason:
            print(f"skip: {reason}")
            return
        _sigint(signal.default_int_handler)  # the runner stops on KeyboardInterrupt
        try:
            run(cfg, models=_kept_models())
        finally:
            _sigint(_exit_at_once)  # a sweep's next job: Hydra composes its configuration
        clear_error()  # sweep jobs: forget an earlier attempt's error (python -m harness.sweep_status)
    except UserError as exc:
        _fail(str(exc))
        if os.environ.get("SUBMITIT_EXECUTOR"):  # a cluster job: submitit reports exceptions to the launcher,
            raise  # but an exit leaves it waiting where the cluster has no accounting (sacct)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:
        record_error(f"{type(exc).__name__}: {exc}")
        raise


def cli() -> None:
    try:
        from harness.settings import check_overrides

        check_overrides(sys.argv[1:])  # method=nope: one line here, not Hydra's listing
        if any(arg in ("-m", "--multirun") for arg in sys.argv[1:]):
            from harness.sweeps import check_sweep

            sys.argv.extend(check_sweep(sys.argv[1:]))  # every swept value, before the first job runs
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    try:
        cli()
    except KeyboardInterrupt:  # during Hydra's composition, before main() runs
        _interrupted()

"""The evaluation protocol of the ``mini`` model on easy-VQA, shared by scripts/eval_mini.py and the CI
regression test (tests/test_mini_regression.py).

The mini LLM has 2 decoder layers, so the decoder-side methods' LLaVA-7B schedules (layers 2..24) do not
fit. On mini every decoder-side method prunes once, after layer 0, keeping ``budget`` image tokens:
FastV with K = 1; PyramidDrop with one stage at layer 1 (ratio (k + 0.5) / 576, so int(576 * ratio) = k);
SparseVLM with one stage at layer 0 (keep k, recycling on: the LLM sees k + recycled tokens); DART with
pruning_loc 1 (pivots from layer 0's keys; it keeps 4 + 8 * (k // 8) image tokens, as at 7B).
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINI_WEIGHTS = ROOT / "checkpoints" / "mini" / "model.safetensors"
BUDGETS = (192, 128, 64, 32, 16)

def _not_on_mini() -> dict[str, str]:
    """Methods the mini model cannot run: those that need CLIP's text tower aligned with the vision tower (the
    checkpoint has none), as the method classes declare (``needs``), in Table 1's row order."""
    from svdprune.pruning import METHODS

    return {name: "needs a CLIP text tower aligned with the vision tower; the mini model has none"
            for name, cls in sorted(METHODS.items(), key=lambda item: item[1].table_row) if "clip_text" in cls.needs}


NOT_ON_MINI = _not_on_mini()
MINI_LLM_LAYERS = 2
# ToMe merges in vision layers 0..L-2: with the mini tower (3 layers) that is 2 layers, and the 50%-per-layer
# cap stops at 145 tokens, so only budget 192 is reachable (the others are reported as not possible).


def shallow_overrides(method: str, budget: int, n_layers: int) -> list[str]:
    """The method's own parameters for an LLM of ``n_layers`` layers (its ``shallow_params``) as Hydra overrides."""
    from svdprune.pruning import METHODS

    def value(v) -> str:
        return f"[{','.join(map(str, v))}]" if isinstance(v, (list, tuple)) else str(v)

    params = METHODS[method].shallow_params(budget, n_layers) if method in METHODS else {}
    return [f"method.params.{key}={value(v)}" for key, v in params.items()]


def mini_overrides(method: str, budget: int) -> list[str]:
    """Method parameters for the 2-layer mini LLM (see the module docstring); [] for other methods."""
    return shallow_overrides(method, budget, MINI_LLM_LAYERS)


def mini_config(method: str, budget: int, limit: int, output_dir: str | Path, batch_size: int = 16):
    """The composed run config of ``method`` at ``budget`` on the first ``limit`` easy-VQA test questions."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model=mini", "model.device=cpu", "dataset=easyvqa", f"method={method}", f"budget={budget}",
            f"limit={limit}", f"output_dir={output_dir}", f"batch_size={batch_size}", "max_new_tokens=4",
            "progress=false", *mini_overrides(method, budget)])


def checkpoint_sha256() -> str:
    """sha256 of the committed mini weights, recorded in the regression reference (a retrained checkpoint without
    a refreshed reference fails the regression test at once)."""
    import hashlib

    return hashlib.sha256(MINI_WEIGHTS.read_bytes()).hexdigest()


def run_and_read(cfg) -> tuple[dict, list[dict]]:
    """Run ``cfg`` through the runner: (its metrics, every prediction row of its run folder)."""
    from harness.results import read_predictions
    from harness.runner import run

    metrics = run(cfg)
    folder = Path(cfg.output_dir) / metrics["dataset"] / metrics["method"] / metrics["run_name"]
    return metrics, read_predictions(folder / "predictions.jsonl")


def mini_run(method: str, budget: int, limit: int, output_dir: str | Path) -> tuple[float, list[str]]:
    """Run ``method`` at ``budget`` on mini through the runner: (accuracy %, the answers in question order)."""
    metrics, rows = run_and_read(mini_config(method, budget, limit, output_dir))
    order = {f"test-{i}": i for i in range(limit)}
    answers = sorted((order[r["question_id"]], r["prediction"]) for r in rows if r["question_id"] in order)
    return metrics["this_run"]["accuracy"], [a for _, a in answers]

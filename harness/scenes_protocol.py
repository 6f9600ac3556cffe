"""The evaluation protocol of the ``scenes`` model (checkpoints/scenes) on the scenes benchmark (eval/scenes.py),
shared by scripts/eval_scenes.py and the CI regression test (tests/test_scenes_regression.py).

The scenes LLM has 4 decoder layers; the decoder-side methods' LLaVA-7B schedules (32 layers) are scaled by
4/32 and rounded to valid layers (their first cut lands after layer 0 in all three, as FastV's K=2 of 32 is
the 1/16 point of the depth):

* FastV: K = 1 (layer 0's attention of the last prompt token; layers 1..3 see ``budget`` image tokens).
* DART: pruning_loc 2 -> 1 (pivots from layer 0's keys; layers 1..3 see the kept tokens).
* PyramidDrop: layers [2, 8, 16] -> [1, 2, 3], ratios lambda, lambda^2, lambda^3 with lambda = (budget + 0.5)
  / 576, so that int(576 * lambda) = budget after the first stage (the structure of the LLaVA table).
* SparseVLM: layers [2, 6, 15] -> [0, 1, 2], keep [k, round(0.45 k), round(0.26 k)] (at least 1): the
  official 64-token schedule's proportions (66 / 30 / 17), recycling on.

TRIM reads the CLIP saved with the model (checkpoints/scenes/clip: this vision tower and a text tower trained
on the scenes' captions; configs/model/scenes.yaml sets ``clip_path``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENES_MODEL = ROOT / "checkpoints" / "scenes"
SCENES_WEIGHTS = SCENES_MODEL / "model.safetensors"
BUDGETS = (192, 128, 64, 32, 16)
# the CI regression (tests/test_scenes_regression.py, scripts/mutation_check.py): its reference and bounds
REGRESSION_REFERENCE = ROOT / "results" / "scenes" / "regression.json"
REGRESSION_TOLERANCE = 3.0  # accuracy points (92 questions: ~1.1 points each); absorbs BLAS differences
REGRESSION_AGREEMENT = 0.95  # share of questions answered as recorded


SCENES_LLM_LAYERS = 4


def scenes_overrides(method: str, budget: int) -> list[str]:
    """Method parameters for the 4-layer scenes LLM (see the module docstring); [] for other methods."""
    from harness.mini_protocol import shallow_overrides

    return shallow_overrides(method, budget, SCENES_LLM_LAYERS)


def scenes_config(method: str, budget: int, limit: int, output_dir: str | Path, extra: tuple[str, ...] = (),
                  batch_size: int = 16):
    """The composed run config of ``method`` at ``budget`` on the first ``limit`` scenes test questions."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model=scenes", "model.device=cpu", "dataset=scenes",
            f"method={method}", f"budget={budget}", f"limit={limit}", f"output_dir={output_dir}",
            f"batch_size={batch_size}", "max_new_tokens=3", "progress=false", *scenes_overrides(method, budget),
            *extra])


def checkpoint_sha256() -> str:
    """sha256 of the committed scenes weights (names eval_scenes' run folders; recorded in the reference)."""
    return hashlib.sha256(SCENES_WEIGHTS.read_bytes()).hexdigest()


def scenes_run(method: str, budget: int, limit: int, output_dir: str | Path,
               extra: tuple[str, ...] = ()) -> tuple[float, list[dict]]:
    """Run ``method`` at ``budget`` on the scenes model through the runner: (accuracy %, the prediction rows
    of the first ``limit`` test questions in dataset order)."""
    from harness.mini_protocol import run_and_read

    metrics, rows = run_and_read(scenes_config(method, budget, limit, output_dir, extra))
    order = sorted(rows, key=lambda r: tuple(int(part) for part in r["question_id"].split("-")[1:]))  # scene, q
    return metrics["this_run"]["accuracy"], order[:limit]

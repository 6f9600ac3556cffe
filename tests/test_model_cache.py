"""A sweep in one process loads each model once (issue 22, item 7): jobs with the same model settings and
weights share the loaded model; the answers are those of separate runs; other settings or retrained weights
load again."""
import json
import shutil
from pathlib import Path

from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

import harness.runner as runner
from harness.mini_protocol import mini_overrides
from harness.model_cache import LoadedModels

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def mini_args(data, out, model, *extra):
    return ["model=mini", f"model.path={model}", "model.device=cpu", "dataset=local", f"dataset.path={data}",
            f"output_dir={out}", "max_new_tokens=2", "progress=false", "limit=6", *extra]


def answers(metrics, out):
    path = Path(out) / metrics["dataset"] / metrics["method"] / metrics["run_name"] / "predictions.jsonl"
    return [json.loads(line)["prediction"] for line in path.read_text().splitlines()]


def test_jobs_of_one_model_share_it_and_answer_as_separate_runs(shapes_folder, tmp_path):
    model = tmp_path / "mini"
    shutil.copytree(ROOT / "checkpoints" / "mini", model)
    models = LoadedModels()
    jobs = [("svd", 16), ("random", 32), ("sparsevlm", 64), ("tome", 192), ("vanilla", 64)]
    for method, budget in jobs:
        extra = [f"method={method}", f"budget={budget}", *mini_overrides(method, budget)]
        shared = runner.run(make_cfg(mini_args(shapes_folder, tmp_path / "shared", model, *extra)), models=models)
        alone = runner.run(make_cfg(mini_args(shapes_folder, tmp_path / "alone", model, *extra)))
        assert answers(shared, tmp_path / "shared") == answers(alone, tmp_path / "alone"), method
        assert shared["config_hash"] == alone["config_hash"]
    assert models.loads == 1
    # another dtype is another model
    runner.run(make_cfg(mini_args(shapes_folder, tmp_path / "bf16", model, "method=svd", "budget=16",
                                  "model.dtype=bfloat16")), models=models)
    assert models.loads == 2
    # weights retrained in place: loaded again (never the stale model)
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, weights, metadata={"format": "pt"})
    retrained = runner.run(make_cfg(mini_args(shapes_folder, tmp_path / "re", model, "method=svd", "budget=16",
                                              "model.dtype=bfloat16")), models=models)
    assert models.loads == 3 and retrained["model_fingerprint"] != shared["model_fingerprint"]


def test_reuse_model_false_loads_every_time(shapes_folder, tmp_path):
    models = LoadedModels()
    for budget in (16, 32):
        runner.run(make_cfg(mini_args(shapes_folder, tmp_path, "checkpoints/mini", "method=svd", f"budget={budget}",
                                      "reuse_model=false")), models=models)
    assert models.loads == 0  # the kept model is not used at all

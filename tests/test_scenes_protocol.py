"""harness/scenes_protocol.py: the decoder-side schedules scaled to the 4-layer scenes LLM are valid method
parameters and keep exactly ``budget`` image tokens after their first cut."""
import pytest
from omegaconf import OmegaConf

from harness.scenes_protocol import BUDGETS, scenes_config
from svdprune.pruning import build_method


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("method", ["fastv", "pyramiddrop", "sparsevlm"])
def test_decoder_schedules_fit_four_layers_and_cut_to_budget(method, budget, tmp_path):
    cfg = scenes_config(method, budget, 10, tmp_path)
    built = build_method(method, budget, OmegaConf.to_container(cfg.method.params, resolve=True))
    if method == "fastv":
        assert built.agg_layer == 1
    elif method == "pyramiddrop":
        assert built.layers == [1, 2, 3] and int(576 * built.ratios[0]) == budget
    else:
        assert built.layers == [0, 1, 2] and built.keep[0] == budget and built.keep == sorted(built.keep, reverse=True)
    assert cfg.model.name == "scenes" and cfg.dataset.name == "scenes"

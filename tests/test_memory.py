"""The analytic memory model (issue 22, item 3): weights and KV cache exactly as meta-device tensors of
LLaVA-1.5-7B's geometry, the CLI's last line, and batch_size=auto."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svdprune import memory
from svdprune.flops import llava15_7b_config
from svdprune.pruning import build_method

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return llava15_7b_config()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_weights_are_the_meta_models_tensor_sizes(config, dtype):
    from svdprune.models import cast_like_from_pretrained

    model = cast_like_from_pretrained(memory.meta_model(config), dtype)  # as from_pretrained(dtype) holds it
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert memory.weight_bytes(config, dtype) - params == sum(b.numel() * b.element_size() for b in model.buffers())
    assert round(params / 1e9, 2) == (14.13 if dtype == torch.float16 else 28.25)


def test_kv_cache_is_what_a_meta_forward_caches(config):
    """0.5 MiB per token in fp16 (32 layers x 2 x 4096): the cache of a meta-device forward of the real LLM."""
    llm = memory.meta_model(config).to(torch.float16).model.language_model
    batch, length = 2, 100
    out = llm(inputs_embeds=torch.zeros(batch, length, 4096, dtype=torch.float16, device="meta"), use_cache=True)
    cached = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
                 for layer in out.past_key_values.layers)
    per_token_layer = memory.kv_bytes_per_token_and_layer(config, torch.float16)
    assert cached == batch * length * 32 * per_token_layer == batch * length * 2 ** 19


@pytest.mark.parametrize("method, params, expected", [
    ("vanilla", {}, [576] * 32),
    ("svd", {"tau": 0.9}, [16] * 32),
    ("fastv", {"agg_layer": 2}, [576] * 2 + [16] * 30),
])
def test_image_tokens_per_layer(method, params, expected):
    assert memory.image_tokens_per_layer(build_method(method, 16, params), 576, 32) == expected


def test_decoder_schedules_bound_what_the_engine_keeps():
    """The bound after the first cut is at least what PyramidDrop and SparseVLM keep (README's schedule table:
    SparseVLM at 16 keeps 16 + 17 recycled = 33 after layer 2; PyramidDrop 16 / 0 / 0)."""
    import yaml

    sparse = yaml.safe_load((ROOT / "configs/method/sparsevlm.yaml").read_text())["params"]
    assert memory.image_tokens_per_layer(build_method("sparsevlm", 16, sparse), 576, 32)[3:5] == [33, 33]
    pdrop = yaml.safe_load((ROOT / "configs/method/pyramiddrop.yaml").read_text())["params"]
    assert memory.image_tokens_per_layer(build_method("pyramiddrop", 16, pdrop), 576, 32)[:3] == [576, 576, 16]


def test_cli_prints_the_peak_as_its_last_line():
    result = subprocess.run([sys.executable, "-m", "svdprune.memory", "model=llava15_7b", "method=vanilla",
                             "batch_size=16", "model.dtype=float16", "max_new_tokens=128"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak = float(result.stdout.strip().splitlines()[-1])
    kv = 16 * (576 + memory.PROMPT_TEXT_TOKENS + 128) * 2 ** 19 / 1e9
    assert 14.1 + kv < peak < 14.1 + kv + 3  # weights + KV + activations of a few GB


def test_batch_size_auto(config):
    method = build_method("svd", 16, {"tau": 0.9})
    assert memory.auto_batch_size(config, method, torch.float16, 128, torch.device("cpu")) == memory.CPU_AUTO_BATCH
    # a 16 GB card with the 14.1 GB of weights loaded has ~1.5 GB free: a small batch; an 80 GB card: the largest
    small = memory.auto_batch_size(config, method, torch.float16, 128, torch.device("cuda"), free_bytes=int(1.5e9))
    large = memory.auto_batch_size(config, method, torch.float16, 128, torch.device("cuda"), free_bytes=int(65e9))
    assert 1 <= small < large == memory.AUTO_CANDIDATES[0]
    fits = memory.estimate(config, method, small, torch.float16, 128)
    assert fits.peak - fits.weights <= memory.AUTO_MARGIN * 1.5e9


def test_runner_batch_size_auto_is_recorded(shapes_folder, tmp_path):
    from tests.test_runner import base, make_cfg

    import harness.runner as runner

    metrics = runner.run(make_cfg(base(shapes_folder, tmp_path, "batch_size=auto", "limit=3")))
    assert metrics["batch_size"] == memory.CPU_AUTO_BATCH and metrics["batch_size_setting"] == "auto"

"""Half precision follows HF ``from_pretrained(dtype=...)`` exactly (issue 22, item 1): the project's loader leaves
every buffer that ``from_pretrained`` keeps in float32 (Llama's rotary ``inv_freq``) in float32, so the LLM's
outputs are bit-identical to those of the plainly loaded model, on the committed mini checkpoint and on a
shallow random model of LLaVA-1.5-7B's exact config."""
import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlavaConfig, LlavaForConditionalGeneration

from svdprune.families import load_model
from svdprune.families.llava15 import build_tiny
from svdprune.models import build_tiny_tokenizer

from svdprune.checkpoints.llava15 import LLAVA_15_7B_CONFIG

ROOT = Path(__file__).resolve().parents[1]

HALF = [torch.bfloat16, torch.float16]
POSITIONS = 700  # far enough that a bf16 inv_freq moves the rotary angle by ~0.9 rad (the measurement)


def llm_output(model, seed: int = 0) -> torch.Tensor:
    """The LLM's last hidden states over POSITIONS random tokens (what every answer is decoded from)."""
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(0, min(vocab, 32000), (1, POSITIONS), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.model.language_model(input_ids=ids).last_hidden_state


def assert_loaded_like_from_pretrained(ours, reference):
    assert {n: (b.dtype, b.shape) for n, b in ours.named_buffers()} == \
        {n: (b.dtype, b.shape) for n, b in reference.named_buffers()}
    for (name, a), (_, b) in zip(ours.named_buffers(), reference.named_buffers()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(ours.named_parameters(), reference.named_parameters()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert ours.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(llm_output(ours), llm_output(reference))


def project_load(path: Path, dtype: torch.dtype):
    cfg = OmegaConf.create({"kind": "pretrained", "path": str(path), "revision": None,
                            "dtype": str(dtype).replace("torch.", ""), "device": "cpu"})
    return load_model(cfg, progress=False).model


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_mini_checkpoint_in_half_precision_equals_from_pretrained(dtype):
    folder = ROOT / "checkpoints" / "mini"
    reference = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    assert_loaded_like_from_pretrained(project_load(folder, dtype), reference.eval())


@pytest.fixture(scope="module")
def geometry_7b_shallow(tmp_path_factory):
    """LLaVA-1.5-7B's config.json with one CLIP and one LLM layer (every width, head size, rope setting and the
    vocabulary are the 7B's), random weights saved as bf16 safetensors."""
    config = copy.deepcopy(LLAVA_15_7B_CONFIG)
    config["text_config"]["num_hidden_layers"] = 1
    config["vision_config"]["num_hidden_layers"] = 1
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration._from_config(LlavaConfig(**config), dtype=torch.bfloat16)
    folder = tmp_path_factory.mktemp("llava7b-shallow")
    model.save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)  # the loader reads a tokenizer; its vocabulary is not tested here
    return folder


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_7b_geometry_in_half_precision_equals_from_pretrained(geometry_7b_shallow, dtype):
    reference = LlavaForConditionalGeneration.from_pretrained(geometry_7b_shallow, dtype=dtype,
                                                              attn_implementation="sdpa").eval()
    assert_loaded_like_from_pretrained(project_load(geometry_7b_shallow, dtype), reference)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_tiny_in_half_precision_is_the_float32_model_loaded_in_half(tmp_path, dtype):
    """The random tiny model in half precision is its float32 self as from_pretrained would load it."""
    tiny32 = build_tiny(seed=0, vision_layers=1, text_layers=2)
    tiny32.model.save_pretrained(tmp_path)
    reference = LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype, attn_implementation="sdpa")
    ours = build_tiny(seed=0, vision_layers=1, text_layers=2, dtype=str(dtype).replace("torch.", ""))
    assert_loaded_like_from_pretrained(ours.model, reference.eval())


# ------------------------------------------------------------------ issue 22, item 2: rankings that do not depend on the device


def test_top_k_breaks_ties_to_the_lower_index():
    from baselines.attention import top_k

    scores = torch.randint(0, 4, (5, 300), generator=torch.Generator().manual_seed(0)).to(torch.float16)
    for k in (1, 16, 64, 192):
        brute = [sorted(range(300), key=lambda i: (-float(row[i]), i))[:k] for row in scores]
        assert top_k(scores, k).tolist() == brute


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_decoder_side_scores_are_float32_in_half_precision(dtype):
    """The attention rows FastV, PyramidDrop and SparseVLM rank are float32 whatever the model dtype, and equal
    the float32 softmax of the half-precision logits (no cast back to the model dtype)."""
    from baselines.attention import attention_rows

    lm = build_tiny(seed=0, vision_layers=1, text_layers=2, dtype=str(dtype).replace("torch.", ""))
    layer = lm.language_model.layers[1]
    hidden = torch.randn(2, 40, lm.model.config.text_config.hidden_size, dtype=dtype)
    positions = torch.arange(40)[None].expand(2, -1)
    cos_sin = lm.language_model.rotary_emb(hidden, positions)
    mask = torch.ones(40, 40, dtype=torch.bool).tril()[None, None].expand(2, -1, -1, -1)
    probs = attention_rows(layer, hidden, cos_sin, mask, torch.tensor([[39], [39]]))
    assert probs.dtype == torch.float32 and torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    assert probs.min() > 0 and not torch.equal(probs, probs.to(dtype).float())  # more than the model dtype holds


def test_scatter_sum_in_order_equals_the_cpus_scatter_reduce_bit_for_bit():
    """The deterministic merge sum (ToMe, SparseVLM) equals the CPU's sequential scatter_reduce exactly, also
    where many sources share one destination and their magnitudes differ by orders (order-sensitive sums)."""
    from baselines._scatter import repeat_rank, scatter_sum_in_order

    assert repeat_rank(torch.tensor([[3, 1, 3, 3, 0, 1]])).tolist() == [[0, 0, 1, 2, 0, 1]]
    g = torch.Generator().manual_seed(0)
    for trial in range(100):
        slots, sources = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(0, 50, (1,), generator=g))
        base = torch.randn(2, slots, 7, generator=g) * 10
        index = torch.randint(0, slots, (2, sources), generator=g)
        src = torch.randn(2, sources, 7, generator=g) * torch.logspace(-3, 3, sources)[None, :, None]
        expected = base.scatter_reduce(1, index[..., None].expand(-1, -1, 7), src, reduce="sum", include_self=True)
        assert torch.equal(scatter_sum_in_order(base, index, src), expected), trial


# ------------------------------------------------------------------ issue 22, item 3: model.dtype=auto


def test_dtype_auto_resolves_by_device():
    from svdprune.models import cpu_has_native_bf16, resolve_dtype

    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "float16"  # official LLaVA
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert resolve_dtype("float16", "cpu") == "float16"  # an explicit dtype is kept


def test_dtype_auto_is_the_resolved_dtype_in_the_run_identity(shapes_folder, tmp_path):
    """A run with dtype=auto is the run of the dtype it resolved to (same folder), never one of another dtype;
    metrics.json records both the setting and the dtype used."""
    from hydra import compose, initialize_config_dir

    import harness.runner as runner
    from svdprune.models import resolve_dtype

    def cfg(dtype):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            return compose(config_name="config", overrides=[
                "model=tiny", "model.vision_layers=1", "model.text_layers=2", f"model.dtype={dtype}",
                "model.device=cpu", "dataset=local", f"dataset.path={shapes_folder}", f"output_dir={tmp_path}",
                "max_new_tokens=1", "progress=false", "method=svd", "budget=16", "limit=2"])

    resolved = resolve_dtype("auto", "cpu")
    auto = runner.run(cfg("auto"))
    assert auto["dtype"] == resolved and auto["dtype_setting"] == "auto"
    explicit = runner.run(cfg(resolved))
    assert explicit["config_hash"] == auto["config_hash"] and explicit["newly_answered"] == 0
    other = "float16" if resolved != "float16" else "float32"
    assert runner.run(cfg(other))["config_hash"] != auto["config_hash"]

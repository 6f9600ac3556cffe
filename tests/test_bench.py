"""The efficiency scripts run end to end on the tiny model on CPU and write what they promise
(no timing assertions: only structure, labels and counts)."""
import csv
from pathlib import Path

import pytest
import torch

from bench import latency
from bench import models as bench_models
from svdprune import probing, timing
from svdprune.pruning import default_params
from tests.script_modules import SCRIPTS, load_script

bench_latency = load_script("bench_latency")
bench_throughput = load_script("bench_throughput")
flops_script = load_script("flops")

TINY = ["--model", "tiny", "--device", "cpu", "--threads", "1", "--tiny-layers", "3", "4"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bench_latency_end_to_end(tmp_path):
    result = bench_latency.main(TINY + ["--methods", "vanilla", "svd", "fastv", "not_a_method", "--budgets", "16",
                                        "--iters", "1", "--warmup", "1", "--new-tokens", "3", "--svd-vision", "model",
                                        "--svd-batch", "2", "--svd-iters", "1", "--output-dir", str(tmp_path)])
    assert result["tag"] == "cpu-tiny"
    rows = read_csv(tmp_path / "latency_cpu-tiny.csv")
    assert [(r["method"], r["budget"]) for r in rows] == [("vanilla", "576"), ("svd", "16"), ("fastv", "16")]
    for r in rows:
        assert r["device"] == "cpu" and r["device_name"].startswith("CPU") and r["model"] == "tiny"
        assert r["peak_vram_gb"] == "" and r["kernel_ms"] == ""  # GPU-only columns stay empty on CPU
        assert float(r["e2e_ms"]) == pytest.approx(float(r["prefill_ms"]) + float(r["decode_ms"]), rel=1e-4)
        assert float(r["fps"]) == pytest.approx(1000 / float(r["e2e_ms"]), rel=1e-4)
        assert float(r["peak_rss_gb"]) > 0 and 1 <= float(r["generated_tokens"]) <= 3
    by_method = {r["method"]: r for r in rows}
    assert by_method["svd"]["image_tokens_first_cut"] == "16"
    assert int(by_method["svd"]["prompt_tokens"]) == int(by_method["vanilla"]["prompt_tokens"]) - 560
    assert by_method["fastv"]["image_tokens_first_cut"] == "16" and float(by_method["fastv"]["image_tokens_avg"]) > 16
    assert any("not_a_method" in n for n in result["notes"])
    svd_rows = read_csv(tmp_path / "svd_vs_vision_cpu-tiny.csv")
    assert {r["solver"] for r in svd_rows} >= {"svd"} and all(r["batch"] == "2" for r in svd_rows)
    assert all(r["tokens"] == "576" for r in svd_rows)
    md = (tmp_path / "latency_cpu-tiny.md").read_text()
    assert "CPU figures" in md and "GPU" not in md.split("CPU figures")[0]


def test_prefill_mark_splits_the_engines_generate(tiny):
    """The lm_head hook marks the first token's logits: one call per generated token, the first ends prefill."""
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.svd import SvdPrune

    clock = timing.Clock(torch.device("cpu"))
    mark = timing.PrefillMark(tiny, clock)
    try:
        out = latency.run_question(tiny, SvdPrune(16), [probing.probe_image()], ["What is it?"], 4, clock,
                                         mark, ANSWER_INSTRUCTION)
    finally:
        mark.remove()
    assert out["decode_steps"] == out["generated"] - 1 == mark.calls - 1
    assert out["prefill"] > 0 and out["decode"] >= 0 and out["image_tokens"][0] == 16
    assert not tiny.model.lm_head._forward_hooks  # removed: later runs are not timed


def test_adhoc_runs_do_not_write_committed_results():
    assert bench_models.output_dir(None) == bench_models.SCRATCH
    assert bench_models.SCRATCH.resolve() != (SCRIPTS.parent / "results" / "efficiency").resolve()
    assert bench_models.output_dir("elsewhere") == Path("elsewhere")


def test_model_argument_takes_a_folder():
    parser = __import__("argparse").ArgumentParser()
    bench_models.common_arguments(parser)
    assert (parser.parse_args([]).model, parser.parse_args([]).model_path) == ("tiny", None)
    args = parser.parse_args(["--model", "/some/llava-folder"])
    assert (args.model, args.model_path) == ("real", "/some/llava-folder")


def test_timed_method_records_the_pruning_step():
    from svdprune.pruning import PruneContext
    from svdprune.svd import SvdPrune

    method = SvdPrune(8)
    timed = timing.TimedMethod(method, timing.Clock(torch.device("cpu")))
    kept = method.reduce(torch.randn(2, 576, 16), PruneContext(questions=["a", "b"]))
    assert kept.shape == (2, 8, 16)
    assert len(timed.spans["prune"]) == 1 and not timed.spans["encode"]


def test_bench_throughput_end_to_end(tmp_path):
    result = bench_throughput.main(TINY + ["--methods", "vanilla", "svd", "--budgets", "16", "--batch-sizes", "1", "3",
                                           "--questions", "3", "--max-new-tokens", "2", "--output-dir", str(tmp_path)])
    rows = read_csv(tmp_path / "throughput_cpu-tiny.csv")
    assert [(r["method"], r["budget"], r["batch_size"]) for r in rows] == [
        ("vanilla", "576", "1"), ("vanilla", "576", "3"), ("svd", "16", "1"), ("svd", "16", "3")]
    for r in rows:
        assert r["device"] == "cpu" and r["questions"] == "3" and 1 <= int(r["generated_tokens"]) <= 6
        assert float(r["questions_per_s"]) == pytest.approx(3 / float(r["seconds"]), rel=1e-4)
    assert "CPU figures" in (tmp_path / "throughput_cpu-tiny.md").read_text()
    assert result["tag"] == "cpu-tiny"


def test_flops_script_end_to_end(tmp_path):
    torch.set_num_threads(1)
    rows = flops_script.main(["--methods", "vanilla", "svd", "fastv", "trim", "not_a_method", "--budgets", "16",
                              "--output-dir", str(tmp_path)])
    by = {(r["method"], r.get("budget")): r for r in rows}
    assert by[("vanilla", 576)]["paper_total_T"] == pytest.approx(3.456, rel=0.01)
    assert by[("svd", 16)]["paper_total_T"] == pytest.approx(0.524, rel=0.01)
    assert by[("svd", 16)]["paper_overhead_G"] > 0 and by[("vanilla", 576)]["paper_overhead_G"] == 0
    fastv = by[("fastv", 16)]
    agg = default_params("fastv").get("agg_layer", 2)
    assert fastv["llm_tokens_per_layer"].split() == ["576"] * agg + ["16"] * (32 - agg)
    assert fastv["paper_total_T"] > by[("svd", 16)]["paper_total_T"]  # decoder-side: early layers see 576
    assert by[("not_a_method", None)]["note"] == "not registered"
    # TRIM's CLIP is not on disk here: a stand-in CLIP keeps it in the table (token counts do not need weights)
    assert by[("trim", 16)]["image_tokens_projected"] == 16
    # the true architecture count is above the paper's (gated MLP, patch conv, lm_head)
    assert by[("vanilla", 576)]["true_total_T"] > by[("vanilla", 576)]["paper_total_T"]
    csv_rows = read_csv(tmp_path / "flops.csv")
    assert len(csv_rows) == 5
    md = (tmp_path / "flops.md").read_text()
    assert "not_a_method: not registered" in md and "| 16 |" in md


def test_kernel_time_counts_each_device_kernel_once():
    """Table 3's kernel time: an operator that launched a 50 us kernel, and that kernel's own event, are 50 us of
    device time, not 100 (summing self device time over operators and kernels counts every kernel twice)."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import EventList, FunctionEvent

    op = FunctionEvent(id=1, name="aten::mm", thread=0, start_us=0, end_us=100, use_device="cuda")
    op.append_kernel("gemm_kernel", 0, 50)
    kernel = FunctionEvent(id=2, name="gemm_kernel", thread=0, start_us=10, end_us=60, use_device="cuda",
                           device_type=DeviceType.CUDA)
    memcpy = FunctionEvent(id=3, name="Memcpy HtoD", thread=0, start_us=70, end_us=75, use_device="cuda",
                           device_type=DeviceType.CUDA)
    events = EventList([op, kernel, memcpy], use_device="cuda")
    assert timing.device_kernel_ms(events) == pytest.approx(0.055)
    assert sum(e.self_device_time_total for e in events) / 1000 == pytest.approx(0.105)  # the old, double sum


def test_the_flops_table_lists_the_papers_methods_as_the_registry_does():
    from svdprune.pruning import METHODS

    assert set(probing.PAPER_METHODS) == {name for name, cls in METHODS.items() if cls.in_paper}

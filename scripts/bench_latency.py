"""Latency per question (Table 3 of the SVD-Prune paper): prefill and decode separately, the pruning step,
peak VRAM, FPS, for vanilla and each method at each budget; plus SVD-Prune's selection time against the
vision tower.

    python scripts/bench_latency.py --model tiny                      # CPU: the random tiny model
    python scripts/bench_latency.py --model geometry7b                # GPU: LLaVA-1.5-7B shapes, random fp16
    python scripts/bench_latency.py --model-path /data/llava-1.5-7b-hf --methods vanilla svd --budgets 16

Each measured question runs the engine's own functions (``svdprune.surgery``: encode_images -> build_inputs
-> prefill -> lm_head, then ``decode_step`` + lm_head per new token), exactly what ``generate()`` runs, except
that it always produces ``--new-tokens`` tokens (no EOS stop, so every configuration decodes the same amount)
and image preprocessing (PIL) is done once outside the timed region. Timing: CUDA events (one synchronise per
question) on GPU, ``time.perf_counter`` on CPU; median over ``--iters`` after ``--warmup`` questions.

Columns (ms unless named): ``vision`` = ``method.encode`` (vision tower; ToMe merges inside it);
``prune`` = ``method.reduce`` + every ``method.after_layer`` call (the selection itself: SVD for SVD-Prune,
scoring for decoder-side methods); ``prefill`` = everything up to the first generated token's logits
(vision + prune + projector + LLM prefill + lm_head); ``decode`` = the remaining ``new_tokens - 1`` steps;
``e2e`` = prefill + decode; ``fps`` = 1000 / e2e (questions per second at batch size 1);
``peak_vram_gb`` = ``torch.cuda.max_memory_allocated`` (GPU only; empty on CPU); ``kernel_ms`` = summed CUDA
kernel time of one question from torch.profiler (``--kernel-time``, GPU only).

Outputs ``latency_<tag>.csv`` / ``.md`` and ``svd_vs_vision_<tag>.csv`` in ``--output-dir``; the tag and
every row name the device (``cpu`` rows are CPU figures, never GPU ones) and the model.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import csv
import inspect
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch

from flops import GQA_SAMPLE_QUESTIONS, method_order, offline_params, probe_image  # scripts/flops.py
from svdprune import flops as F

BUDGETS = [192, 128, 64, 32, 16]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ----------------------------------------------------------------------------------------- model and device

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device here")
    return device


def device_name(device: torch.device) -> str:
    """Human-readable device: the GPU's name, or the CPU model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def device_tag(device: torch.device, model_name: str) -> str:
    if device.type == "cuda":
        gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
        return f"cuda-{gpu}-{model_name}"
    return f"cpu-{model_name}"


def word_tokenizer_note(lm) -> str:
    return "real tokenizer" if lm.name not in ("tiny", "geometry7b") else "tiny byte-level BPE tokenizer"


def build_geometry7b(device: torch.device, dtype: torch.dtype, tokenizer_path: str | None = None):
    """LlavaForConditionalGeneration with LLaVA-1.5-7B's config, random weights, built on ``device`` directly.

    Without ``tokenizer_path`` the tiny byte-level tokenizer is used (the GQA prompt is 55-77 tokens with it,
    58-67 with the real Llama-2 tokenizer); ``<image>``'s id is set into the config.
    """
    from transformers import LlavaForConditionalGeneration

    from svdprune.models import LoadedModel, build_tiny_tokenizer
    from svdprune.prompts import CLIP_MEAN, CLIP_STD, IMAGE_PLACEHOLDER

    if tokenizer_path:
        from flops import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
    else:
        tokenizer = build_tiny_tokenizer()
    config = F.llava15_7b_config()
    config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    grid = config.vision_config.image_size // config.vision_config.patch_size
    return LoadedModel(model=model, tokenizer=tokenizer, name="geometry7b", revision=None,
                       image_size=config.vision_config.image_size, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                       image_token_id=config.image_token_id, feature_layer=config.vision_feature_layer,
                       num_patches=grid * grid, device=device, dtype=dtype)


def load_model(args, device: torch.device):
    from svdprune.models import build_tiny, load_pretrained

    if args.model_path:
        return load_pretrained(args.model_path, None, args.dtype or "float16", str(device))
    if args.model == "geometry7b":
        return build_geometry7b(device, DTYPES[args.dtype or "float16"], args.tokenizer)
    vision_layers, text_layers = args.tiny_layers
    return build_tiny(seed=0, device=str(device), dtype=args.dtype or "float32", vision_layers=vision_layers,
                      text_layers=text_layers)


# ------------------------------------------------------------------------------------------------ timing

class Clock:
    """Marks on the device timeline: CUDA events on GPU, perf_counter on CPU. ``ms(a, b)`` after ``sync()``."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000.0


class TimedMethod:
    """Wraps a method's encode / reduce / after_layer to time them on the device timeline (the engine needs no
    change: it calls these attributes)."""

    def __init__(self, method, clock: Clock):
        self.method, self.clock = method, clock
        self.spans: dict[str, list] = {"encode": [], "prune": []}
        self._patch("encode", "encode")
        self._patch("reduce", "prune")
        if method.kind == "decoder":
            self._patch("after_layer", "prune")

    def _patch(self, attr: str, bucket: str):
        original = getattr(self.method, attr)

        def timed(*args, **kwargs):
            start = self.clock.mark()
            out = original(*args, **kwargs)
            self.spans[bucket].append((start, self.clock.mark()))
            return out

        setattr(self.method, attr, timed)

    def reset(self):
        for spans in self.spans.values():
            spans.clear()

    def total_ms(self, bucket: str) -> float:
        return sum(self.clock.ms(a, b) for a, b in self.spans[bucket])


def run_question(lm, method, pixels, questions, new_tokens: int, clock: Clock, instruction) -> dict:
    """One batch through the engine's functions with marks at prefill end and decode end."""
    from transformers import DynamicCache

    from svdprune.prompts import vicuna_prompt
    from svdprune.pruning import PruneContext
    from svdprune.surgery import build_inputs, decode_step, encode_images, prefill

    start = clock.mark()
    context = PruneContext(questions=questions, seed=0, model=lm.model, instruction=instruction)
    image_embeds = encode_images(lm, method, pixels.to(lm.device, lm.dtype), context)
    state = build_inputs(lm, [vicuna_prompt(q, instruction) for q in questions], image_embeds)
    prompt_tokens = int((~state.padding).sum(-1).max())
    cache = DynamicCache(config=lm.language_model.config)
    last_hidden, counts, groups = prefill(lm, state, method, context, cache)
    next_ids = lm.model.lm_head(last_hidden).argmax(-1)
    prefill_end = clock.mark()
    for step in range(new_tokens - 1):
        last_hidden = decode_step(lm, next_ids, step, groups, cache)
        next_ids = lm.model.lm_head(last_hidden).argmax(-1)
    end = clock.mark()
    clock.sync()
    return dict(prefill=clock.ms(start, prefill_end), decode=clock.ms(prefill_end, end),
                image_tokens=counts[0].tolist(), prompt_tokens=prompt_tokens)


def kernel_time_ms(fn) -> float:
    """Summed GPU time of one call (ms): the profiler's "Self CUDA time total" (sum of self device time over
    all events, so nothing is counted twice)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(event.self_device_time_total for event in prof.key_averages()) / 1000.0


def bench_config(lm, name: str, budget: int, args, clock: Clock, pixels, questions, params: dict) -> dict:
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.pruning import build_method

    method = build_method(name, budget, params)
    if method.kind == "none":
        budget = method.budget = lm.num_patches
    if hasattr(method, "check"):
        method.check(lm)  # generate() validates once per batch; here once, outside the timed region
    timed = TimedMethod(method, clock)
    samples = []
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats(lm.device)
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            timed.reset()
            out = run_question(lm, method, pixels, questions, args.new_tokens, clock, ANSWER_INSTRUCTION)
            if i >= args.warmup:
                samples.append(dict(out, vision=timed.total_ms("encode"), prune=timed.total_ms("prune")))
        kernel = None
        if clock.cuda and args.kernel_time:
            try:
                kernel = kernel_time_ms(lambda: run_question(lm, method, pixels, questions, args.new_tokens, clock,
                                                             ANSWER_INSTRUCTION))
            except Exception as exc:  # noqa: BLE001 - profiler support varies; the other columns stand
                print(f"kernel time unavailable: {exc}", file=sys.stderr)

    def med(key):
        return statistics.median(s[key] for s in samples)

    image_tokens = samples[-1]["image_tokens"]
    e2e = statistics.median(s["prefill"] + s["decode"] for s in samples)
    return dict(
        method=name, kind=method.kind, budget=budget, batch=len(questions),
        image_tokens_first_cut=next((k for k in image_tokens if k != image_tokens[0]), image_tokens[0]),
        image_tokens_avg=round(statistics.fmean(image_tokens), 2), prompt_tokens=samples[-1]["prompt_tokens"],
        new_tokens=args.new_tokens, vision_ms=med("vision"), prune_ms=med("prune"), prefill_ms=med("prefill"),
        decode_ms=med("decode"), decode_per_token_ms=med("decode") / max(args.new_tokens - 1, 1),
        e2e_ms=e2e, fps=1000.0 * len(questions) / e2e,
        peak_vram_gb=torch.cuda.max_memory_allocated(lm.device) / 1e9 if clock.cuda else None,
        kernel_ms=kernel, iters=len(samples),
    )


# --------------------------------------------------------------------------- SVD-Prune selection vs vision

def method_budgets(names: list[str], lm, budgets, workdir: Path, notes: list[str], note_suffix: str = ""):
    """(name, budget, params) for every registered method in ``names`` and every budget (vanilla: its one
    budget); unregistered names and offline stand-ins are noted in ``notes``. Shared with bench_throughput."""
    from svdprune.pruning import METHODS

    for name in names:
        if name not in METHODS:
            notes.append(f"{name}: not registered in svdprune.pruning.METHODS")
            continue
        params, note = offline_params(name, lm, workdir)
        if note:
            notes.append(note + note_suffix)
        for budget in ([lm.num_patches] if name == "vanilla" else budgets):
            yield name, budget, params


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (at most 200 characters), for a note in the report."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def clip_l_tower(device: torch.device, dtype: torch.dtype):
    """CLIP ViT-L/14-336 vision tower with random weights (LLaVA-1.5's geometry), built on ``device``."""
    from transformers import CLIPVisionModel

    config = F.llava15_7b_config().vision_config
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        return CLIPVisionModel._from_config(config, dtype=dtype).eval()


def median_ms(fn, clock: Clock, iters: int, warmup: int) -> float:
    times = []
    for i in range(warmup + iters):
        start = clock.mark()
        fn()
        end = clock.mark()
        clock.sync()
        if i >= warmup:
            times.append(clock.ms(start, end))
    return statistics.median(times)


def svd_solvers() -> list[str]:
    from svdprune import svd

    if "solver" in inspect.signature(svd.leverage).parameters:
        return list(getattr(svd, "SOLVERS", ("svd", "gram")))
    return ["svd"]


@torch.inference_mode()
def bench_svd_vs_vision(lm, args, clock: Clock) -> list[dict]:
    """Time ``svdprune.svd.leverage`` on the (B, 576, Dv) float32 layer -2 features against the vision tower
    forward that produced them (same batch), for every solver ``leverage`` offers."""
    from svdprune import svd

    if args.svd_vision == "clip-l":
        dtype = torch.float32 if clock.device.type == "cpu" else lm.dtype
        tower, tower_name = clip_l_tower(lm.device, dtype), f"CLIP ViT-L/14-336 (random {str(dtype)[6:]})"
    else:
        tower, dtype, tower_name = lm.vision_tower, lm.dtype, f"{lm.name} vision tower ({str(lm.dtype)[6:]})"
    size = tower.config.image_size
    rows = []
    for batch in args.svd_batch:
        pixels = torch.randn(batch, 3, size, size, device=lm.device, dtype=dtype)
        vision_ms = median_ms(lambda: tower(pixels, output_hidden_states=True), clock, args.svd_iters, 1)
        features = tower(pixels, output_hidden_states=True).hidden_states[lm.feature_layer][:, 1:].float()
        n, d = features.shape[1:]
        for solver in svd_solvers():
            options = {"solver": solver} if solver != "svd" or len(svd_solvers()) > 1 else {}
            ms = median_ms(lambda: svd.leverage(features, 0.9, **options), clock, args.svd_iters, 1)
            macs = F.svd_macs(n, d, "uv") if solver == "svd" else F.gram_eigh_macs(n, d)
            rows.append(dict(device=clock.device.type, device_name=device_name(clock.device), vision=tower_name,
                             batch=batch, tokens=n, dim=d, solver=solver, leverage_ms=ms, vision_ms=vision_ms,
                             ratio=ms / vision_ms, textbook_gmacs_per_image=macs / 1e9))
            print(f"svd vs vision  B={batch} solver={solver}: leverage {ms:.2f} ms, vision {vision_ms:.2f} ms, "
                  f"ratio {ms / vision_ms:.3f}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- outputs

def write_csv(path: Path, rows: list[dict]) -> None:
    columns = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()})


def _f(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def write_markdown(path: Path, rows: list[dict], svd_rows: list[dict], header: dict, notes: list[str]) -> None:
    lines = [f"# Latency per question on {header['device_name']} ({header['device']}, model `{header['model']}`)", "",
             f"Generated by `scripts/bench_latency.py`. Device: **{header['device_name']}**; model: {header['model_note']}; "
             f"dtype {header['dtype']}; batch {header['batch']}; {header['new_tokens']} new tokens per question "
             f"(no EOS stop); median of {header['iters']} after {header['warmup']} warm-up; prompt tokenised with the "
             f"{header['tokenizer']}. Times in ms; `prune` = method.reduce + after_layer (ToMe's merging is inside "
             "`vision`); `prefill` includes vision, prune, projector, LLM prefill and the first token's lm_head.", ""]
    if header["device"] == "cpu":
        lines += ["**CPU figures** (not GPU figures, and on the random tiny model they say nothing about LLaVA-1.5-7B "
                  "speed: they show the harness works). On a CPU shared with other jobs the medians still move by up "
                  "to 2x between identical computations (compare the `vision` column, the same tower for every "
                  "method except ToMe).", ""]
    lines += ["| method | k | img tok (first cut / avg) | prompt tok | vision | prune | prefill | decode | "
              "decode/token | e2e | FPS | peak VRAM GB | kernel ms | speed-up vs vanilla |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = next((r for r in rows if r["method"] == "vanilla"), None)
    for r in rows:
        speedup = base["e2e_ms"] / r["e2e_ms"] if base else None
        lines.append(f"| {r['method']} | {r['budget']} | {r['image_tokens_first_cut']} / {r['image_tokens_avg']:.1f} | "
                     f"{r['prompt_tokens']} | {_f(r['vision_ms'])} | {_f(r['prune_ms'])} | {_f(r['prefill_ms'])} | "
                     f"{_f(r['decode_ms'])} | {_f(r['decode_per_token_ms'])} | {_f(r['e2e_ms'])} | {_f(r['fps'])} | "
                     f"{_f(r['peak_vram_gb'])} | {_f(r['kernel_ms'])} | {_f(speedup)}x |")
    if svd_rows:
        lines += ["", f"**SVD-Prune selection vs the vision tower** (`svdprune.svd.leverage`, tau 0.9, on the "
                  f"(B, {svd_rows[0]['tokens']}, {svd_rows[0]['dim']}) float32 layer -2 features vs the vision tower "
                  f"forward that produced them; {svd_rows[0]['vision']}; {svd_rows[0]['device_name']}; median of "
                  f"{header['svd_iters']} after 1 warm-up).", "",
                  "| batch | solver | leverage ms | vision ms | ratio | textbook G MACs / image |", "|---|---|---|---|---|---|"]
        for r in svd_rows:
            lines.append(f"| {r['batch']} | {r['solver']} | {_f(r['leverage_ms'])} | {_f(r['vision_ms'])} | "
                         f"{r['ratio']:.3f} | {r['textbook_gmacs_per_image']:.2f} |")
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=["tiny", "geometry7b"], default="tiny",
                        help="tiny: random tiny LLaVA; geometry7b: LLaVA-1.5-7B config, random weights on the device")
    parser.add_argument("--model-path", default=None, help="llava-hf folder or hub id with real weights (overrides --model)")
    parser.add_argument("--tiny-layers", nargs=2, type=int, default=[24, 32], metavar=("VISION", "TEXT"),
                        help="depth of the tiny model (default LLaVA-1.5's, so that every method's schedule applies)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for --model geometry7b (folder or tokenizer.json)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: float16 for 7B, float32 for tiny")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    parser.add_argument("--budgets", nargs="*", type=int, default=BUDGETS)
    parser.add_argument("--output-dir", default=str(ROOT / "results" / "efficiency"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_arguments(parser)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="questions per timed call (Table 3: 1)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per question (no EOS stop)")
    parser.add_argument("--kernel-time", action="store_true", help="GPU: also sum CUDA kernel time (torch.profiler)")
    parser.add_argument("--svd-vision", choices=["auto", "clip-l", "model", "none"], default="auto",
                        help="vision tower for the SVD ratio: clip-l = random CLIP-L/336 (default for tiny), "
                             "model = the benchmarked model's (default otherwise), none = skip")
    parser.add_argument("--svd-batch", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--svd-iters", type=int, default=5)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from svdprune.errors import UserError
    from svdprune.prompts import preprocess_image
    from svdprune.pruning import METHODS

    device = resolve_device(args.device)
    lm = load_model(args, device)
    model_name = "real" if args.model_path else args.model
    clock = Clock(device)
    questions = [GQA_SAMPLE_QUESTIONS[i % len(GQA_SAMPLE_QUESTIONS)] for i in range(args.batch)]
    pixels = torch.stack([preprocess_image(probe_image(seed=i), lm.image_size, lm.image_mean, lm.image_std)
                          for i in range(args.batch)])
    names = args.methods if args.methods is not None else method_order(METHODS)
    rows, notes = [], []
    workdir = Path(tempfile.mkdtemp(prefix="svdprune_latency_"))
    for name, budget, params in method_budgets(names, lm, args.budgets, workdir, notes,
                                               "; its text-tower time is not representative"):
        try:
            row = bench_config(lm, name, budget, args, clock, pixels, questions, params)
        except (UserError, OSError, ValueError, RuntimeError) as exc:
            notes.append(f"{name} k={budget}: {type(exc).__name__}: {first_line(exc)}")
            print(f"{name} k={budget}: skipped ({first_line(exc)})", file=sys.stderr)
            continue
        row = dict(device=device.type, device_name=device_name(device), model=model_name,
                   dtype=str(lm.dtype)[6:], **row)
        rows.append(row)
        print(f"{name:12s} k={row['budget']:3d} prefill {row['prefill_ms']:8.2f} ms  decode {row['decode_ms']:8.2f} ms"
              f"  prune {row['prune_ms']:7.2f} ms  e2e {row['e2e_ms']:8.2f} ms  [{row['device_name']}]", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    if device.type == "cpu":
        notes.append("peak VRAM and kernel time: GPU only")
    elif not args.kernel_time:
        notes.append("kernel time: run with --kernel-time")

    svd_rows = []
    svd_vision = args.svd_vision if args.svd_vision != "auto" else ("clip-l" if model_name == "tiny" else "model")
    if svd_vision != "none":
        args.svd_vision = svd_vision
        svd_rows = bench_svd_vs_vision(lm, args, clock)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = device_tag(device, model_name)
    header = dict(device=device.type, device_name=device_name(device), model=model_name, dtype=str(lm.dtype)[6:],
                  batch=args.batch, new_tokens=args.new_tokens, iters=args.iters, warmup=args.warmup,
                  svd_iters=args.svd_iters,
                  tokenizer=word_tokenizer_note(lm),
                  model_note={"tiny": f"random tiny LLaVA (CLIP {lm.model.config.vision_config.num_hidden_layers} layers x 32, "
                                      f"Llama {lm.model.config.text_config.num_hidden_layers} layers x 64; 577 vision tokens)",
                              "geometry7b": "LLaVA-1.5-7B geometry, random weights",
                              "real": f"LLaVA-1.5 weights from {args.model_path}"}[model_name])
    write_csv(out / f"latency_{tag}.csv", rows)
    if svd_rows:
        write_csv(out / f"svd_vs_vision_{tag}.csv", svd_rows)
    write_markdown(out / f"latency_{tag}.md", rows, svd_rows, header, notes)
    print(f"wrote {out / f'latency_{tag}.csv'} and .md")
    return dict(rows=rows, svd_rows=svd_rows, notes=notes, tag=tag)


if __name__ == "__main__":
    main()

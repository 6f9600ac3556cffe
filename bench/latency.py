"""Latency per question (Table 3 of the SVD-Prune paper): prefill and decode separately, the pruning step,
peak memory (VRAM on GPU, RSS on CPU), questions/s, for vanilla and each method at each budget; plus SVD-Prune's
selection time against the vision tower (``scripts/bench_latency.py`` is its command line).

``--model FOLDER`` loads a llava-hf folder exactly as run.py does (e.g. ``scripts/make_random_llava.py``'s
random LLaVA-1.5-7B, :mod:`bench.models`). Each measured question is one call of the engine's own ``svdprune.families.generate``
(what run.py calls): a forward hook on ``lm_head`` marks the end of the prefill (its first call gives the first
token's logits), and wrappers on the method's ``encode`` / ``reduce`` / ``after_layer`` time the vision tower and
the pruning step. Decoding is greedy with at most ``--new-tokens`` tokens; EOS stops a row as in real runs
(``generated_tokens`` says how many came; random weights practically never produce EOS). Timing: CUDA events
on GPU, ``time.perf_counter`` on CPU; median over ``--iters`` after ``--warmup`` questions; every configuration
runs in the same process on the same model, so ratios between rows are like for like.

Columns (ms unless named): ``vision`` = ``method.encode`` (vision tower; ToMe merges inside it);
``prune`` = ``method.reduce`` + every ``method.after_layer`` call; ``prefill`` = from the call to the first
``lm_head`` output (image preprocessing, vision, prune, projector, LLM prefill, lm_head); ``decode`` = the
rest (``generated_tokens - 1`` steps + detokenisation); ``e2e`` = prefill + decode; ``fps`` = questions per
second at the batch size; ``peak_vram_gb`` = ``torch.cuda.max_memory_allocated`` and ``peak_reserved_gb`` =
``torch.cuda.max_memory_reserved`` (GPU: what the tensors needed, and what the caching allocator held, which is
what decides whether a card runs out of memory); ``peak_rss_gb`` = the process's peak RSS during that configuration
(CPU, Linux: VmHWM reset through /proc/self/clear_refs; it includes the weights); ``kernel_ms`` = the summed
duration of the device's own kernel (and memcpy/memset) events of one question, from an extra profiled
question after the timed ones (GPU only, on by default there; ``--no-kernel-time`` leaves it out). All GPU
timing events are recorded on the stream of the device the model is on (``--device cuda:1`` times cuda:1).

Outputs ``latency_<tag>.csv`` / ``.md`` and ``svd_vs_vision_<tag>.csv`` in ``--output-dir`` (default: a scratch
folder under the system temp dir, so that ad-hoc runs never overwrite the committed ``results/efficiency``
files; pass ``--output-dir results/efficiency`` to refresh those). The tag and every row name the device
(``cpu`` rows are CPU figures, never GPU ones) and the model (``7b`` for a folder with LLaVA-1.5-7B's geometry).
"""
from __future__ import annotations

import argparse
import csv
import inspect
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from bench.models import clip_l_tower, common_arguments, folder_model_name, load_model, model_note, output_dir, word_tokenizer_note
from svdprune import flops as F
from svdprune.models import resolve_device
from svdprune.probing import GQA_SAMPLE_QUESTIONS, method_order, offline_params, probe_image
from svdprune.timing import (Clock, PrefillMark, TimedMethod, device_name, device_tag, kernel_time_ms, median_ms,
                             peak_rss_gb, peak_rss_reset)


def run_question(lm, method, images, questions, new_tokens: int, clock: Clock, mark: PrefillMark,
                 instruction) -> dict:
    """One call of the engine's ``generate`` (greedy, ``new_tokens`` at most, EOS stops a row as in runs), split
    at the first ``lm_head`` call into prefill and decode."""
    from svdprune.families import generate

    mark.reset()
    start = clock.mark()
    out = generate(lm, method, questions, images, instruction=instruction, max_new_tokens=new_tokens, seed=0)
    end = clock.mark()
    clock.sync()
    return dict(prefill=clock.ms(start, mark.mark), decode=clock.ms(mark.mark, end),
                decode_steps=mark.calls - 1, image_tokens=out.image_tokens_per_layer[0],
                prompt_tokens=max(out.prompt_lengths), generated=max(len(ids) for ids in out.token_ids))


def bench_config(lm, name: str, budget: int, args, clock: Clock, images, questions, params: dict) -> dict:
    from svdprune.prompts import ANSWER_INSTRUCTION
    from svdprune.pruning import build_method

    method = build_method(name, budget, params)
    if method.kind == "none":
        budget = method.budget = lm.num_patches
    if hasattr(method, "check"):
        method.check(lm)  # generate() checks again (cheap); a first check may build state (TRIM's tiny CLIP)
    timed = TimedMethod(method, clock)
    mark = PrefillMark(lm, clock)
    samples = []
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats(lm.device)
    rss_reset = clock.device.type == "cpu" and peak_rss_reset()

    def once():
        return run_question(lm, method, images, questions, args.new_tokens, clock, mark, ANSWER_INSTRUCTION)

    try:
        for i in range(args.warmup + args.iters):
            timed.reset()
            out = once()
            if i >= args.warmup:
                samples.append(dict(out, vision=timed.total_ms("encode"), prune=timed.total_ms("prune")))
        kernel = None
        if clock.cuda and args.kernel_time:
            try:
                kernel = kernel_time_ms(once, lm.device)
            except Exception as exc:  # noqa: BLE001 - profiler support varies; the other columns stand
                print(f"kernel time unavailable: {exc}", file=sys.stderr)
    finally:
        mark.remove()

    def med(key):
        return statistics.median(s[key] for s in samples)

    image_tokens = samples[-1]["image_tokens"]
    e2e = statistics.median(s["prefill"] + s["decode"] for s in samples)
    steps = med("decode_steps")
    return dict(
        method=name, kind=method.kind, budget=budget, batch=len(questions),
        image_tokens_first_cut=next((k for k in image_tokens if k != image_tokens[0]), image_tokens[0]),
        image_tokens_avg=round(statistics.fmean(image_tokens), 2), prompt_tokens=samples[-1]["prompt_tokens"],
        new_tokens=args.new_tokens, generated_tokens=med("generated"), vision_ms=med("vision"), prune_ms=med("prune"),
        prefill_ms=med("prefill"), decode_ms=med("decode"),
        decode_per_token_ms=med("decode") / steps if steps else None,
        e2e_ms=e2e, fps=1000.0 * len(questions) / e2e,
        peak_vram_gb=torch.cuda.max_memory_allocated(lm.device) / 1e9 if clock.cuda else None,
        peak_reserved_gb=torch.cuda.max_memory_reserved(lm.device) / 1e9 if clock.cuda else None,
        peak_rss_gb=peak_rss_gb() if rss_reset else None,
        kernel_ms=kernel, iters=len(samples),
    )


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


PAPER_TABLE3 = dict(vanilla_ms=930.00, svd16_ms=222.56, speedup=4.18)  # paper Table 3 (GPU, LLaVA-1.5-7B)


def paper_comparison(rows: list[dict]) -> list[str]:
    """Vanilla vs SVD-Prune k=16 from this run (same invocation), split into prefill and decode, beside the
    paper's Table 3 ratio. Empty when either row is missing."""
    base = next((r for r in rows if r["method"] == "vanilla"), None)
    svd = next((r for r in rows if r["method"] == "svd" and r["budget"] == 16), None)
    if base is None or svd is None:
        return []
    ratio = lambda key: base[key] / svd[key] if svd[key] else float("nan")  # noqa: E731
    return ["", f"**Vanilla vs SVD-Prune k=16 (this run)**: end to end {ratio('e2e_ms'):.2f}x "
            f"(prefill {ratio('prefill_ms'):.2f}x, decode {ratio('decode_ms'):.2f}x); the paper's Table 3: "
            f"{PAPER_TABLE3['vanilla_ms']:.2f} ms -> {PAPER_TABLE3['svd16_ms']:.2f} ms, {PAPER_TABLE3['speedup']}x "
            "(GPU, fp16). Prefill work scales with the tokens the LLM sees (compute-bound); each decode step reads "
            "all 7B weights once whatever the prompt length (memory-bound), so the end-to-end ratio falls between "
            "the two and depends on how many tokens are generated."]


def _vram(row: dict) -> str:
    if row.get("peak_vram_gb") is None:
        return "-"
    return f"{_f(row['peak_vram_gb'])} / {_f(row.get('peak_reserved_gb'))}"


def write_markdown(path: Path, rows: list[dict], svd_rows: list[dict], header: dict, notes: list[str]) -> None:
    lines = [f"# Latency per question on {header['device_name']} ({header['device']}, model `{header['model']}`)", "",
             f"Generated by `scripts/bench_latency.py`. Device: **{header['device_name']}**; model: {header['model_note']}; "
             f"dtype {header['dtype']}; batch {header['batch']}; {header['new_tokens']} new tokens per question "
             f"at most (greedy, EOS stops as in runs; `gen` = tokens generated); median of {header['iters']} after "
             f"{header['warmup']} warm-up; prompt tokenised with the {header['tokenizer']}. Each question is one call "
             "of the engine's `svdprune.families.generate` (image preprocessing included); times in ms; `prefill` = "
             "from the call to the first `lm_head` output (vision, prune, projector, LLM prefill, first token's "
             "logits), `decode` = the rest; `prune` = method.reduce + after_layer (ToMe's merging is inside "
             "`vision`); `q/s` = questions per second at this batch size.", ""]
    if header["device"] == "cpu":
        scope = ("at LLaVA-1.5-7B's geometry and dtype, so the work per question is the real model's; the weights are "
                 "random, so answers are noise" if header["model"] == "7b" else
                 "and on the random tiny model they say nothing about LLaVA-1.5-7B speed: they show the harness works")
        lines += [f"**CPU figures** (not GPU figures, {scope}). On a CPU shared with other jobs the times move by up "
                  "to 2x between identical computations (compare the `vision` column, the same tower for every "
                  "method except ToMe).", ""]
    lines += ["| method | k | img tok (first cut / avg) | prompt tok | gen | vision | prune | prefill | decode | "
              "decode/token | e2e | q/s | peak VRAM GB (allocated / reserved) | peak RSS GB | kernel ms | "
              "speed-up vs vanilla |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = next((r for r in rows if r["method"] == "vanilla"), None)
    for r in rows:
        speedup = base["e2e_ms"] / r["e2e_ms"] if base else None
        lines.append(f"| {r['method']} | {r['budget']} | {r['image_tokens_first_cut']} / {r['image_tokens_avg']:.1f} | "
                     f"{r['prompt_tokens']} | {r['generated_tokens']:g} | {_f(r['vision_ms'])} | {_f(r['prune_ms'])} | "
                     f"{_f(r['prefill_ms'])} | {_f(r['decode_ms'])} | {_f(r['decode_per_token_ms'])} | "
                     f"{_f(r['e2e_ms'])} | {_f(r['fps'], 3)} | {_vram(r)} | {_f(r.get('peak_rss_gb'))} | "
                     f"{_f(r['kernel_ms'])} | {_f(speedup)}x |")
    if svd_rows:
        lines += ["", f"**SVD-Prune selection vs the vision tower** (`svdprune.svd.leverage`, tau 0.9, on the "
                  f"(B, {svd_rows[0]['tokens']}, {svd_rows[0]['dim']}) float32 layer -2 features vs the vision tower "
                  f"forward that produced them; {svd_rows[0]['vision']}; {svd_rows[0]['device_name']}; median of "
                  f"{header['svd_iters']} after 1 warm-up).", "",
                  "| batch | solver | leverage ms | vision ms | ratio | textbook G MACs / image |", "|---|---|---|---|---|---|"]
        for r in svd_rows:
            lines.append(f"| {r['batch']} | {r['solver']} | {_f(r['leverage_ms'])} | {_f(r['vision_ms'])} | "
                         f"{r['ratio']:.3f} | {r['textbook_gmacs_per_image']:.2f} |")
    lines += paper_comparison(rows)
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """scripts/bench_latency.py's options (also what scripts/gpu_check.py's Table 3 step passes)."""
    common_arguments(parser)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="questions per timed call (Table 3: 1)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per question (no EOS stop)")
    parser.add_argument("--by-budget", action="store_true",
                        help="run vanilla, then every method at the first budget, then the next (default: per method)")
    parser.add_argument("--tag", default=None, help="file tag (default <device>-<model>, e.g. cpu-7b)")
    parser.add_argument("--prewarm", action="store_true",
                        help="one untimed SVD-Prune k=16 question before the first configuration (cheap warm-up)")
    parser.add_argument("--clip", default=None, help="TRIM's CLIP folder (e.g. make_random_llava.py --clip)")
    parser.add_argument("--kernel-time", action=argparse.BooleanOptionalAction, default=True,
                        help="GPU: device kernel time of one extra profiled question (default on; --no-kernel-time)")
    parser.add_argument("--svd-vision", choices=["auto", "clip-l", "model", "none"], default="auto",
                        help="vision tower for the SVD ratio: clip-l = random CLIP-L/336 (default for tiny), "
                             "model = the benchmarked model's (default otherwise), none = skip")
    parser.add_argument("--svd-batch", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--svd-iters", type=int, default=5)


def configurations(lm, names: list[str], args, device: torch.device, workdir: Path,
                   notes: list[str]) -> list[tuple[str, int, dict]]:
    """(method, budget, params) in the order they run (per method, or ``--by-budget``), and the notes they bring."""
    configs = list(method_budgets(names, lm, args.budgets, workdir, notes,
                                  "; its text-tower time is not representative"))
    if args.clip:
        notes[:] = [n for n in notes if not n.startswith("trim:")] + [f"trim: CLIP from --clip {args.clip}"]
    if device.type == "cpu":
        notes.append("peak VRAM and kernel time: GPU only; peak RSS = the process's VmHWM, reset before each "
                     "configuration (so it includes the model's weights)")
    elif not args.kernel_time:
        notes.append("kernel time: left out (--no-kernel-time)")
    if args.by_budget:  # vanilla, then every method at the first budget, then at the next, ...
        configs.sort(key=lambda c: (c[0] != "vanilla", args.budgets.index(c[1]) if c[1] in args.budgets else -1))
    return configs


def run(args) -> dict:
    """The measurements scripts/bench_latency.py's arguments ask for; the rows, notes and file tag."""
    if args.threads:
        torch.set_num_threads(args.threads)

    from svdprune.errors import UserError
    from svdprune.pruning import METHODS

    device = resolve_device(args.device)
    lm = load_model(args, device)
    model_name = folder_model_name(args.model_path) if args.model_path else args.model
    clock = Clock(device)
    questions = [GQA_SAMPLE_QUESTIONS[i % len(GQA_SAMPLE_QUESTIONS)] for i in range(args.batch)]
    images = [probe_image(seed=i) for i in range(args.batch)]
    names = args.methods if args.methods is not None else method_order(METHODS)
    rows, notes, svd_rows = [], [], []
    out = output_dir(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or device_tag(device, model_name)
    header = dict(device=device.type, device_name=device_name(device), model=model_name, dtype=str(lm.dtype)[6:],
                  batch=args.batch, new_tokens=args.new_tokens, iters=args.iters, warmup=args.warmup,
                  svd_iters=args.svd_iters, tokenizer=word_tokenizer_note(lm),
                  model_note=model_note(lm, args, model_name))

    def write_all(final: bool) -> None:
        """Rewritten after every configuration, so that a long run stopped half way keeps what it measured."""
        pending = [] if final else ["(partial: the run is still going or was stopped before the end)"]
        write_csv(out / f"latency_{tag}.csv", rows)
        if svd_rows:
            write_csv(out / f"svd_vs_vision_{tag}.csv", svd_rows)
        write_markdown(out / f"latency_{tag}.md", rows, svd_rows, header, notes + pending)

    workdir = Path(tempfile.mkdtemp(prefix="svdprune_latency_"))
    configs = configurations(lm, names, args, device, workdir, notes)
    if args.prewarm:  # one untimed question through every weight (first touch of mmap'ed pages, kernel set-up)
        from svdprune.prompts import ANSWER_INSTRUCTION
        from svdprune.families import generate
        from svdprune.svd import SvdPrune

        generate(lm, SvdPrune(16), questions, images, instruction=ANSWER_INSTRUCTION, max_new_tokens=2)
        notes.append("one untimed SVD-Prune k=16 question ran first (--prewarm): first-touch costs are in no row")
    for name, budget, params in configs:
        if name == "trim" and args.clip:
            params = dict(params, clip_path=args.clip, revision=None)
        try:
            row = bench_config(lm, name, budget, args, clock, images, questions, params)
        except (UserError, OSError, ValueError, RuntimeError) as exc:
            notes.append(f"{name} k={budget}: {type(exc).__name__}: {first_line(exc)}")
            print(f"{name} k={budget}: skipped ({first_line(exc)})", file=sys.stderr)
            continue
        row = dict(device=device.type, device_name=device_name(device), model=model_name,
                   dtype=str(lm.dtype)[6:], **row)
        rows.append(row)
        print(f"{name:12s} k={row['budget']:3d} prefill {row['prefill_ms']:8.2f} ms  decode {row['decode_ms']:8.2f} ms"
              f"  prune {row['prune_ms']:7.2f} ms  e2e {row['e2e_ms']:8.2f} ms  [{row['device_name']}]", flush=True)
        write_all(final=False)
    shutil.rmtree(workdir, ignore_errors=True)

    svd_vision = args.svd_vision if args.svd_vision != "auto" else ("clip-l" if model_name == "tiny" else "model")
    if svd_vision != "none":
        args.svd_vision = svd_vision
        svd_rows = bench_svd_vs_vision(lm, args, clock)
    write_all(final=True)
    print(f"wrote {out / f'latency_{tag}.csv'} and .md")
    return dict(rows=rows, svd_rows=svd_rows, notes=notes, tag=tag)


def run_argv(argv: list[str]) -> dict:
    """:func:`run` with scripts/bench_latency.py's command-line arguments (scripts/gpu_check.py's Table 3 step)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))

"""Timing and memory measurement for the benchmarks, beside the FLOPs model (:mod:`svdprune.flops`) and the
memory model (:mod:`svdprune.memory`) whose predictions they check.

- :class:`Clock`: marks on the device timeline (CUDA events on the model's device, ``perf_counter`` on the CPU);
- :class:`TimedMethod`: wraps a method's ``encode`` / ``reduce`` / ``after_layer`` to time the vision tower and the
  pruning step, the engine unchanged; :class:`PrefillMark`: a hook on ``lm_head`` whose first call ends the prefill;
- peak RSS (Linux VmHWM, resettable) and the device's own kernel time from the profiler;
- the device's name and the file tag every benchmark output carries (``cpu-7b``, ``cuda-nvidia-h100-...``).
"""
from __future__ import annotations

import platform
import re
import statistics
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """Human-readable device: the GPU's name, or the CPU model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()} ({torch.get_num_threads()} threads)"


def device_tag(device: torch.device, model_name: str) -> str:
    if device.type == "cuda":
        gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
        return f"cuda-{gpu}-{model_name}"
    return f"cpu-{model_name}"


class Clock:
    """Marks on the device timeline: CUDA events on GPU, perf_counter on CPU. ``ms(a, b)`` after ``sync()``."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self):
        if self.cuda:  # on the model's device: a bare record() would go to the current device's stream
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
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


class PrefillMark:
    """Forward hook on ``lm_head``: its first call in a question computes the first generated token's logits,
    so the mark taken right after it ends the prefill (every later call is one decode step). Timing the engine's
    own ``svdprune.families.generate`` this way needs no copy of its loop."""

    def __init__(self, lm, clock: Clock):
        self.clock, self.calls, self.mark = clock, 0, None
        self.handle = lm.model.lm_head.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1
        if self.calls == 1:
            self.mark = self.clock.mark()

    def reset(self):
        self.calls, self.mark = 0, None

    def remove(self):
        self.handle.remove()


def peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``/proc/self/clear_refs``); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float | None:
    """Peak resident set size of this process since the last reset (VmHWM), GB; None where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def device_kernel_ms(events) -> float:
    """Summed duration (ms) of the device's own events (kernels, memcpy, memset) in a profiler's event list.

    CPU operator events are left out: their ``self_device_time_total`` is the time of the kernels they launched,
    so summing it over operators and kernels (what ``key_averages()`` totals) counts every kernel twice."""
    from torch.autograd import DeviceType

    return sum(event.device_time_total for event in events if event.device_type == DeviceType.CUDA) / 1000.0


def kernel_time_ms(fn, device: torch.device) -> float:
    """Device kernel time of one call of ``fn`` (ms), see :func:`device_kernel_ms`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return device_kernel_ms(prof.events())


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

"""Timers of the benchmark (`python scripts/benchmark.py`): step windows, host-read counts, peak memory, matmul peak."""
import cProfile
import math
import pstats
import statistics
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch.overrides import TorchFunctionMode

from diffusion_lab.training import EMA

HOST_READS = {"item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__", "__index__"}


class HostReads(TorchFunctionMode):
    """Counts Python reads of tensor values (.item(), bool(), ...): a device sync each when the tensor is on a GPU.

    With a GPU only reads of GPU tensors count; on a CPU-only machine all do, AdamW's per-parameter step
    counter (a host tensor even on a GPU) included.
    """

    def __init__(self):
        super().__init__()
        self.count, self.device_only = 0, torch.cuda.is_available()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS and isinstance(args[0], torch.Tensor):
            self.count += not self.device_only or args[0].device.type != "cpu"
        return func(*args, **(kwargs or {}))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the process's peak RSS (VmHWM), Linux >= 4.0


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated GPU memory, or on CPU the process's peak resident set (VmHWM) since the last reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


class Window:
    """Wall and CPU time and peak memory of steps [warmup, warmup + steps) of a loop; host reads in step warmup - 1."""

    def __init__(self, warmup: int, steps: int, device: torch.device, profile: str | None = None):
        self.warmup, self.steps, self.device, self.profile = warmup, steps, device, profile
        self.reads, self.profiler, self.result = HostReads(), cProfile.Profile() if profile else None, None
        self.started = None

    def tick(self, i: int) -> bool:
        """Call at the start of step i; True once the window is closed."""
        if i == 0:
            self.started = time.perf_counter()
        if i == self.warmup - 1:
            self.reads.__enter__()
        if i == self.warmup:
            self._open()
        if i == self.warmup + self.steps:
            self._close()
        return self.result is not None

    def _open(self) -> None:
        if self.warmup > 0:
            self.reads.__exit__(None, None, None)
        sync(self.device)
        reset_peak_memory(self.device)
        self.profiler and self.profiler.enable()
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def _close(self) -> None:
        sync(self.device)
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.cpu0
        self.result = dict(step_ms=1e3 * wall / self.steps, cpu_ms=1e3 * cpu / self.steps,
                           peak_memory_mib=peak_memory_mib(self.device), host_reads_per_step=self.reads.count,
                           warmup_s=self.t0 - self.started)  # the warm-up steps: torch.compile compiles in them
        if self.profiler:
            self.profiler.disable()
            with open(self.profile, "w") as f:
                pstats.Stats(self.profiler, stream=f).sort_stats("tottime").print_stats(60)


class WindowClosed(Exception):
    """Ends a fit as soon as its timer's window is closed, carrying that timer out to the caller of the fit."""

    def __init__(self, timer: "StepTimer"):
        super().__init__("timed window closed")
        self.timer = timer


class StepTimer(Callback):
    """Runs a Window over a fit's training batches, keeps the module and EMA for sampling, then stops the fit.

    Hydra builds it inside train(cfg), out of the benchmark's reach: it hands itself out in WindowClosed.
    """

    def __init__(self, warmup: int, steps: int, profile: str | None = None):
        self.window, self.calls, self.module, self.ema = Window(warmup, steps, torch.device("cpu"), profile), 0, None, None

    def on_train_start(self, trainer, pl_module) -> None:
        self.window.device = pl_module.device
        self.module, self.ema = pl_module, next((c for c in trainer.callbacks if isinstance(c, EMA)), None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.calls += 1
        if self.window.tick(self.calls - 1):
            raise WindowClosed(self)


def spread(values: list[float]) -> dict:
    """Median, minimum, maximum and the 95% confidence interval of the median (`median_ci`) of repeated
    measurements, and the resolution: the interval's half width relative to the median (the half range under 6
    measurements, which give no 95% interval; None from one), so a change larger than it moves the median out."""
    median, ci = statistics.median(values), median_ci(values)
    lo, hi = ci or (min(values), max(values))
    return dict(median=median, min=min(values), max=max(values), n=len(values), ci=ci,
                resolution=(hi - lo) / 2 / median if median and len(values) > 1 else None)


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The distribution-free confidence interval of the median: the k-th smallest and k-th largest of n values,
    k the largest rank with P(Binomial(n, 1/2) < k) <= (1 - level) / 2 (coverage >= level whatever the
    distribution); None when n is too small for the level (n < 6 at 95%)."""
    n, k, below = len(values), 0, 0.0
    while below + math.comb(n, k) / 2**n <= (1 - level) / 2:
        below += math.comb(n, k) / 2**n
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def ratio_spread(numerators: list[float], denominators: list[float]) -> dict:
    """The spread of paired ratios (round i's numerator over round i's denominator), with the ratios as `values`."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    return spread(ratios) | {"values": ratios}


def median_run(runs: list[dict]) -> dict:
    """The run of the median samples/s (the lower middle one of an even count), with its other figures."""
    return sorted(runs, key=lambda r: r["samples_per_s"])[(len(runs) - 1) // 2]


def peak_matmul(device: torch.device, dtype: torch.dtype, n: int) -> float | None:
    """The best FLOP/s of an n x n matrix product in dtype on device over five tries; None if unsupported."""
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        a @ a
    except RuntimeError:
        return None
    best = 0.0
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        a @ a
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best

"""What a run cost: its training wall time (kept across resumes), peak memory and machine, written to a JSON file."""
import json
import os
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def peak_host_memory() -> int | None:
    """The process's peak resident memory in bytes (getrusage; None where the resource module is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device, world_size: int) -> str:
    """One line naming what ran the training: `2 CPU cores (AMD EPYC ...), 2 threads` or `1x NVIDIA H100 ...`."""
    if device.type == "cuda":
        return f"{world_size}x {torch.cuda.get_device_name(device)}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    procs = f", {world_size} processes" if world_size > 1 else ""
    return f"{cores} CPU cores ({cpu_name()}), {torch.get_num_threads()} threads{procs}"


class RunSummary(Callback):
    """Writes `path` (JSON) when training ends: optimizer steps, training wall seconds (validation included, summed
    over resumed runs: the count is part of the checkpoint), peak memory (host RSS of rank 0's process; CUDA
    allocator peak on GPUs) and the machine. scripts/results_table.py reads it."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.seconds_before = 0.0  # training seconds of the runs this one resumes
        self._start: float | None = None

    def seconds(self) -> float:
        return self.seconds_before + (time.monotonic() - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        device = trainer.strategy.root_device
        summary = {
            "steps": trainer.global_step,
            "train_seconds": round(self.seconds(), 1),
            "peak_host_memory_bytes": peak_host_memory(),
            "peak_cuda_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "machine": describe_machine(device, trainer.world_size),
            "torch": torch.__version__,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(summary, indent=2) + "\n")

    def state_dict(self) -> dict:
        return {"train_seconds": self.seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seconds_before = float(state_dict.get("train_seconds", 0.0))

"""What ran a command, for every artifact a figure comes from: the machine, the versions and the code's commit.

    provenance()   # {"date", "commit", "dirty", "command", "machine", "cpu", "native_bf16", "threads", "torch", ...}
"""
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def native_bf16(accelerator: str = "auto") -> bool:
    """Whether the device Lightning's `accelerator` picks computes bfloat16 matrix products natively: a CUDA GPU with
    bf16 (Ampere on), or a CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated, many times slower than float32
    (an AVX2-only CPU)."""
    cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if accelerator not in ("cpu", "auto"):
        return False  # mps, tpu, ...: not measured
    cpu = torch.cpu
    return any(getattr(cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def describe_machine(device: torch.device, world_size: int = 1) -> str:
    """One line naming what ran: `2 CPU cores (AMD EPYC ...), 2 threads` or `1x NVIDIA H100 ...`."""
    if device.type == "cuda":
        return f"{world_size}x {torch.cuda.get_device_name(device)}"
    procs = f", {world_size} processes" if world_size > 1 else ""
    return f"{cpu_cores()} CPU cores ({cpu_name()}), {torch.get_num_threads()} threads{procs}"


def peak_host_memory() -> int | None:
    """The process's peak resident memory in bytes (getrusage; None where the resource module is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def commit() -> tuple[str | None, bool]:
    """(the checkout's commit, whether its tracked files differ from it); (None, False) outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, False


def provenance(device: torch.device | None = None, world_size: int = 1) -> dict:
    """Where a result comes from: date (UTC), commit (and whether the tree was dirty), the command line, the machine
    and the versions of Python, torch and Lightning."""
    device = device or torch.device("cpu")
    sha, dirty = commit()
    try:
        from importlib.metadata import version
        lightning = version("lightning")
    except Exception:  # noqa: BLE001 - not installed
        lightning = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": sha, "dirty": dirty, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": describe_machine(device, world_size), "cpu": cpu_name(), "cores": cpu_cores(),
            "threads": torch.get_num_threads(), "native_bf16": native_bf16(device.type),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "python": platform.python_version(), "torch": torch.__version__, "lightning": lightning}

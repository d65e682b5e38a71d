"""What the framework costs at run time: `python scripts/benchmark.py [--workloads toy dit unet] [--options all] [--out DIR]`.

For each workload (the default swiss-roll MLP; the fashion_mnist_dit and fashion_mnist_unet networks at batch 64
on random in-memory 28x28 images) it times training through `train(cfg)` (Lightning with the run's callbacks,
EMA included, and CSV logger; validation off) against a plain PyTorch loop doing the same work (same initial
weights, AdamW, `diffusion_loss`, in-memory batches, torch-ema update); times 20-step sampling with the run's
sampler on the EMA weights; counts model FLOPs and host reads of tensor values (each a device sync on a GPU);
and times each option (bf16, torch.compile, fused AdamW, ...) through the framework. Writes benchmark.json and
benchmark.md (`--quick`: seconds, toy only). A benchmark, not a test: its numbers depend on the machine and its load.
The parts live in scripts/benchmarking/: measure (timers), workloads (what is timed), report (JSON, markdown).
"""
import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import torch

from benchmarking.measure import peak_matmul
from benchmarking.report import machine, write
from benchmarking.workloads import OPTIONS, WORKLOADS, bench_workload
from diffusion_lab.machine import native_bf16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--options", nargs="*", help=f"of {list(OPTIONS)}, or `all`; default: a per-workload list on CPU, all on GPU")
    p.add_argument("--steps", type=int, help="timed optimizer steps (default: per workload)")
    p.add_argument("--warmup", type=int, help="untimed steps before them (>= 1; the last counts host reads)")
    p.add_argument("--rounds", type=int, help="rounds of framework, plain loop and speed=fast runs per workload, "
                   "interleaved; medians and spreads over them (default: per workload)")
    p.add_argument("--sample-batch", type=int, help="samples drawn at once when timing sampling")
    p.add_argument("--noise-batch", type=int, default=1024, help="batch of the noise-stream cost")
    p.add_argument("--noise-rounds", type=int, help="rounds of the noise-stream cost (default: per workload)")
    p.add_argument("--out", default="outputs/benchmark", help="directory for benchmark.json and benchmark.md")
    p.add_argument("--profile", action="store_true", help="cProfile the framework's timed window: profile_<workload>.txt")
    p.add_argument("--quick", action="store_true", help="a smoke run in seconds: toy, 10 steps, one option")
    args = p.parse_args(argv)
    if args.quick:
        args.workloads, args.steps, args.warmup, args.rounds = ["toy"], args.steps or 10, args.warmup or 3, 2
        args.options = ["fused_adamw"] if args.options is None else args.options
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and log intervals, irrelevant to timing
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = 8192 if device.type == "cuda" else 1024 if args.quick else 2048
    native = native_bf16(device.type)  # emulated bf16 (an AVX2 CPU) runs a 2048^3 product for a minute: skipped
    peaks = {"fp32": peak_matmul(device, torch.float32, n), "bf16": peak_matmul(device, torch.bfloat16, n) if native else None}
    report = dict(machine=machine(device, peaks), args=vars(args), workloads={})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            report["workloads"][name] = bench_workload(name, args, tmp, peaks, device)
            text = write(report, args.out)  # after each workload: a long run's finished part is kept
    print(text)
    return report


if __name__ == "__main__":
    main()

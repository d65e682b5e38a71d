"""Where a training step's time goes in fp32 and in bf16 autocast: `python scripts/benchmarking/profile_precision.py
--out DIR [--workload dit]`. torch.profiler over a few steps of the benchmark's workload (the framework's loss,
AdamW, EMA update), grouped by operator; writes DIR/profile.json (scripts/figures.py collect benchmark DIR --name
NAME) with each precision's step time and its top operators by self CPU time, in families (matrix products,
attention, normalization, elementwise, casts, optimizer, other).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from benchmarking.workloads import compose_run, get_batch  # noqa: E402
from diffusion_lab.app.train import build  # noqa: E402
from diffusion_lab.core import diffusion_loss  # noqa: E402
from diffusion_lab.machine import provenance  # noqa: E402

FAMILIES = {"matmul": ("addmm", "mm", "bmm", "linear", "matmul", "baddbmm", "conv", "mkldnn"),
            "attention": ("attention", "softmax", "sdpa", "flash"),
            "normalization": ("norm",), "casts": ("_to_copy", "copy_", "to", "type_as"),
            "optimizer": ("adam", "_foreach", "lerp"), "elementwise": ("mul", "add", "gelu", "silu", "sub", "div",
                                                                     "exp", "sin", "cos", "pow", "sqrt", "rsqrt")}


def family(name: str) -> str:
    key = name.removeprefix("aten::").lower()
    return next((f for f, words in FAMILIES.items() if any(w in key for w in words)), "other")


def profile_steps(workload: str, bf16: bool, steps: int, tmp: str) -> dict:
    torch.manual_seed(0)
    module, datamodule = build(compose_run(workload, [], tmp, 0, 1))
    model, data = module.objective.train(), datamodule.dataset
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = [p.detach().clone() for p in model.parameters()]

    def step():
        x0 = get_batch(data, torch.randint(len(data), (datamodule.batch_size,)))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, x0, module.schedule)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 0.001)

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - t0) / steps
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    families: dict[str, float] = {}
    for e in ops:
        families[family(e.key)] = families.get(family(e.key), 0.0) + e.self_cpu_time_total / total
    return {"step_ms_profiled": 1e3 * wall, "families": dict(sorted(families.items(), key=lambda kv: -kv[1])),
            "top": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps}
                    for e in ops[:12]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workload", default="dit", choices=["toy", "dit", "unet"])
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {name: profile_steps(args.workload, name == "bf16", args.steps, tmp) for name in ("fp32", "bf16")}
    for name, r in result.items():
        print(f"{name}: {r['step_ms_profiled']:.0f} ms/step (profiled); " +
              ", ".join(f"{k} {v:.0%}" for k, v in r["families"].items()))
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"workload": args.workload, "profile": result, **provenance()}
    (args.out / "profile.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

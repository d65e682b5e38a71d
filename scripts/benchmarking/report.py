"""What `python scripts/benchmark.py` tells: progress lines, the machine, benchmark.json and benchmark.md tables."""
import json
import os
import platform
import time
from pathlib import Path

import lightning as L
import torch


def log(msg: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine(device: torch.device, peaks: dict) -> dict:
    """What the numbers were measured on."""
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), platform.processor())
    return dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu}",
                cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                lightning=L.__version__, python=platform.python_version(),
                peak_matmul_tflops={k: v and v / 1e12 for k, v in peaks.items()})


def fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def training_table(m: dict, w: dict) -> list[str]:
    """The machine line and one row per workload: framework against plain loop."""
    peaks = ", ".join(f"{k} {fmt(v)} TFLOP/s" for k, v in m["peak_matmul_tflops"].items())
    lines = [f"{m['device']} ({m['cores']} cores, torch threads {m['threads']}); torch {m['torch']}, lightning "
             f"{m['lightning']}; peak matmul measured in this run: {peaks}.", "",
             "| workload | batch | timed steps | framework samples/s | plain samples/s | framework / plain | same, by CPU time "
             "| overhead ms/step | sampling samples/s (20 steps) | peak memory MiB (fw / plain) | MFU "
             "| host reads/step (fw / plain) | plain loop has EMA |", "|---" * 13 + "|"]
    for name, r in w.items():
        fw, pl = r["framework"], r["plain"]
        lines.append(f"| {name} | {r['batch']} | {r['steps']} | {fmt(fw['samples_per_s'])} | {fmt(pl['samples_per_s'])} "
                     f"| {r['ratio']:.3f} | {r['cpu_ratio']:.3f} | {r['overhead_ms']:.2f} "
                     f"| {fmt(r['sampling']['samples_per_s'])} | {fw['peak_memory_mib']:.0f} / {pl['peak_memory_mib']:.0f} "
                     f"| {fmt(r['mfu'], '.1%')} | {fw['host_reads_per_step']} / {pl['host_reads_per_step']} "
                     f"| {'yes' if pl['ema'] else 'no (nor has the run)'} |")
    return lines


def sampling_table(w: dict) -> list[str]:
    """Sampler, forwards and host reads per step, without and with classifier-free guidance."""
    lines = ["| sampling | sampler | batch | forwards/step | host reads/step | with CFG: forwards/step "
             "| with CFG: host reads/step |", "|---" * 7 + "|"]
    for name, r in w.items():
        s, c = r["sampling"], r["sampling_cfg"] or {}
        lines.append(f"| {name} | {s['sampler']} | {s['batch']} | {s['forwards_per_step']:g} | {s['host_reads_per_step']:g} "
                     f"| {fmt(c.get('forwards_per_step'), 'g')} | {fmt(c.get('host_reads_per_step'), 'g')} |")
    return lines


def options_table(w: dict) -> list[str]:
    """One row per option run on any workload; empty when none was."""
    options = list(dict.fromkeys(o for r in w.values() for o in r["options"]))
    if not options:
        return []
    lines = ["Options: framework samples/s relative to its default run (MFU against the matching peak).", "",
             "| option | " + " | ".join(w) + " |", "|---" * (len(w) + 1) + "|"]
    return lines + [f"| {o} | " + " | ".join(_option_cell(r["options"].get(o)) for r in w.values()) + " |"
                    for o in options]


def _option_cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    if "error" in r:
        return r["error"]
    return f"x{r['relative']:.2f} ({fmt(r['samples_per_s'])}/s, MFU {fmt(r['mfu'], '.1%')})"


def markdown(report: dict) -> str:
    """The training, sampling and options tables of a report."""
    w = report["workloads"]
    lines = [*training_table(report["machine"], w), "", *sampling_table(w)]
    options = options_table(w)
    return "\n".join(lines + (["", *options] if options else [])) + "\n"


def write(report: dict, out: str) -> str:
    """Writes benchmark.json and benchmark.md into out; returns the markdown."""
    text = markdown(report)
    (Path(out) / "benchmark.json").write_text(json.dumps(report, indent=2))
    (Path(out) / "benchmark.md").write_text(text)
    return text

"""What `python scripts/benchmark.py` tells: progress lines, the machine, benchmark.json and benchmark.md tables."""
import json
import time
from pathlib import Path

import torch

from diffusion_lab.machine import provenance


def log(msg: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine(device: torch.device, peaks: dict) -> dict:
    """What the numbers were measured on, and with which code (diffusion_lab.machine.provenance)."""
    info = provenance(device)
    return dict(info, device=info["gpu"] or f"CPU: {info['cpu']}", peak_matmul_tflops={k: v and v / 1e12 for k, v in peaks.items()})


def fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def rng(sp: dict, spec: str = ".3g") -> str:
    """A spread as `median [95% interval of the median]`, or `median (min-max)` when too few rounds give none."""
    if sp.get("ci"):
        return f"{fmt(sp['median'], spec)} [{fmt(sp['ci'][0], spec)}-{fmt(sp['ci'][1], spec)}]"
    return f"{fmt(sp['median'], spec)} ({fmt(sp['min'], spec)}-{fmt(sp['max'], spec)})"


def training_table(m: dict, w: dict) -> list[str]:
    """The machine line and one row per workload: framework against plain loop, and the speed preset against both."""
    peaks = ", ".join(f"{k} {fmt(v)} TFLOP/s" if v else f"{k} not native (emulated; not measured)"
                      for k, v in m["peak_matmul_tflops"].items())
    bf16 = "native bf16" if m.get("native_bf16") else "no native bf16"
    lines = [f"{m['device']} ({m['cores']} cores, torch threads {m['threads']}, {bf16}); torch {m['torch']}, lightning "
             f"{m['lightning']}; commit {str(m.get('commit'))[:7]}, {m.get('date')}; `{m.get('command')}`; peak matmul "
             f"measured in this run: {peaks}. Each figure: the median over the rounds "
             "with [its 95% confidence interval] (from the rounds' order statistics; from 6 rounds on), else "
             "(min-max); a round times the framework, the plain loop and speed=fast in turn, and a ratio is the "
             "median of the rounds' paired ratios.", "",
             "| workload | batch | steps x rounds | framework samples/s | plain samples/s | framework / plain "
             "| speed=fast samples/s | fast / framework | overhead ms/step | peak memory MiB (fw / plain / fast) | MFU "
             "| host reads/step (fw / plain) | plain loop has EMA |", "|---" * 13 + "|"]
    for name, r in w.items():
        t, fw, pl, fast = r["training"], r["framework"], r["plain"], r["fast"]
        lines.append(f"| {name} | {r['batch']} | {r['steps']} x {r['rounds']} | {rng(t['framework'])} | {rng(t['plain'])} "
                     f"| {rng(r['ratio'], '.3f')} | {rng(t['fast'])} | {rng(r['fast_speedup'], '.2f')} "
                     f"| {r['overhead_ms']:.2f} | {fw['peak_memory_mib']:.0f} / {pl['peak_memory_mib']:.0f} / "
                     f"{fast['peak_memory_mib']:.0f} | {fmt(r['mfu'], '.1%')} | {fw['host_reads_per_step']} / "
                     f"{pl['host_reads_per_step']} | {'yes' if pl['ema'] else 'no (nor has the run)'} |")
    return lines


def sampling_table(w: dict) -> list[str]:
    """Sampling speed of the default run and the preset; forwards and host reads per step, without and with CFG."""
    lines = ["| sampling | sampler, steps | batch | samples/s | speed=fast samples/s | fast / default | forwards/step "
             "| host reads/step | with CFG: forwards/step | with CFG: host reads/step |", "|---" * 10 + "|"]
    for name, r in w.items():
        s, c = r["sampling"], r["sampling_cfg"] or {}
        lines.append(f"| {name} | {s['sampler']}, {s['steps']} | {s['batch']} | {rng(s['framework'])} | {rng(s['fast'])} "
                     f"| {rng(s['fast_speedup'], '.2f')} | {s['forwards_per_step']:g} | {s['host_reads_per_step']:g} "
                     f"| {fmt(c.get('forwards_per_step'), 'g')} | {fmt(c.get('host_reads_per_step'), 'g')} |")
    return lines


def noise_table(w: dict) -> list[str]:
    """Per-sample noise streams against one generator, for the run's sampler and for fresh noise at every step."""
    lines = ["| noise streams | sampler, steps | batch | per-sample streams samples/s | one generator samples/s "
             "| rounds | cost (median of paired rounds) | cost quartiles | noise ms per run (streams / one) "
             "| cost from the noise alone |", "|---" * 10 + "|"]
    for name, r in w.items():
        for kind, n in r["noise"].items():
            q, d = n.get("cost_quartiles"), n["draw_ms"]
            lines.append(f"| {name}, {kind.replace('_', ' ')} | {n['sampler']}, {n['steps']} | {n['batch']} "
                         f"| {fmt(n['per_sample_samples_per_s'])} | {fmt(n['one_generator_samples_per_s'])} "
                         f"| {n['rounds']} | {n['cost']:+.1%} | {f'{q[0]:+.1%} to {q[1]:+.1%}' if q else '-'} "
                         f"| {d['per_sample']:.3g} / {d['one']:.3g} ({d['draws']} draw{'s' * (d['draws'] != 1)}) "
                         f"| {n['draw_cost']:+.1%} |")
    return lines


def options_table(w: dict) -> list[str]:
    """One row per option run on any workload; empty when none was."""
    options = list(dict.fromkeys(o for r in w.values() for o in r["options"]))
    if not options:
        return []
    lines = ["Options: framework samples/s relative to its default run (MFU against the matching peak; warm-up: the "
             "seconds of the untimed first steps, torch.compile's compilation included).", "",
             "| option | " + " | ".join(w) + " |", "|---" * (len(w) + 1) + "|"]
    return lines + [f"| {o} | " + " | ".join(_option_cell(r["options"].get(o)) for r in w.values()) + " |"
                    for o in options]


def _option_cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    if "error" in r:
        return r["error"]
    warm = f", warm-up {r['warmup_s']:.1f} s" if r.get("warmup_s") is not None else ""  # compile time is in it
    return f"x{r['relative']:.2f} ({fmt(r['samples_per_s'])}/s, MFU {fmt(r['mfu'], '.1%')}{warm})"


def markdown(report: dict) -> str:
    """The training, sampling and options tables of a report."""
    w = report["workloads"]
    lines = [*training_table(report["machine"], w), "", *sampling_table(w), "", *noise_table(w)]
    options = options_table(w)
    return "\n".join(lines + (["", *options] if options else [])) + "\n"


def write(report: dict, out: str) -> str:
    """Writes benchmark.json and benchmark.md into out; returns the markdown."""
    text = markdown(report)
    (Path(out) / "benchmark.json").write_text(json.dumps(report, indent=2))
    (Path(out) / "benchmark.md").write_text(text)
    return text

"""Smoke test of scripts/benchmark.py: a --quick run writes every field of the JSON and the markdown tables.

It asserts nothing about speed: the benchmark's numbers depend on the machine and its load.
"""
import json

import pytest

from tests.helpers import run_script

RUN_FIELDS = {"step_ms", "cpu_ms", "samples_per_s", "peak_memory_mib", "host_reads_per_step"}
WORKLOAD_FIELDS = {"batch", "steps", "warmup", "rounds", "params", "flops_per_step", "framework", "plain", "fast",
                   "training", "ratio", "fast_speedup", "cpu_ratio", "overhead_ms", "mfu", "sampling", "sampling_cfg",
                   "noise", "options"}
SAMPLING_FIELDS = {"framework", "fast", "fast_speedup", "batch", "steps", "sampler", "forwards_per_step",
                   "host_reads_per_step"}
SPREAD_FIELDS = {"median", "min", "max", "n", "half_range"}


@pytest.mark.slow
def test_smoke_benchmark_quick_writes_json_and_markdown(tmp_path):
    run_script("scripts/benchmark.py", ["--quick", "--out", str(tmp_path)], timeout=300, one_thread=False, check=True)
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(report["machine"]) >= {"device", "threads", "torch", "lightning", "peak_matmul_tflops"}
    toy = report["workloads"]["toy"]
    assert set(toy) >= WORKLOAD_FIELDS
    assert set(toy["framework"]) >= RUN_FIELDS and set(toy["plain"]) >= RUN_FIELDS | {"ema"}
    assert set(toy["sampling"]) >= SAMPLING_FIELDS and toy["sampling"]["steps"] == 20
    assert toy["rounds"] == 2 and all(set(toy["training"][k]) >= SPREAD_FIELDS for k in ("framework", "plain", "fast"))
    assert toy["training"]["framework"]["n"] == 2 and toy["ratio"]["min"] <= toy["ratio"]["median"] <= toy["ratio"]["max"]
    assert set(toy["noise"]) == {"run_sampler", "ddpm_noise"} and toy["noise"]["ddpm_noise"]["batch"] == 1024
    assert toy["flops_per_step"] > 0 and toy["framework"]["samples_per_s"] > 0 and toy["plain"]["ema"]
    assert toy["sampling"]["forwards_per_step"] == 1  # one denoiser call per step of the generalized sampler
    assert set(toy["options"]["fused_adamw"]) >= RUN_FIELDS | {"relative", "mfu"}
    table = (tmp_path / "benchmark.md").read_text()
    assert "| workload | batch |" in table and "\n| toy | 2048 | 10 x 2 |" in table and "| fused_adamw |" in table
    assert "| toy, ddpm noise | GeneralizedSampler, 20 | 1024 | " in table  # the run's 20 steps
    noise = toy["noise"]["ddpm_noise"]
    assert noise["draw_ms"]["draws"] == 21 and noise["draw_ms"]["per_sample"] > 0  # the start, then one per step
    assert noise["cost_quartiles"][0] <= noise["cost"] <= noise["cost_quartiles"][1]

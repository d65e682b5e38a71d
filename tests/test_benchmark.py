"""Smoke test of scripts/benchmark.py: a --quick run writes every field of the JSON and the markdown tables.

It asserts nothing about speed: the benchmark's numbers depend on the machine and its load.
"""
import importlib
import json

import pytest
from scipy import stats

from tests.helpers import ROOT, run_script

RUN_FIELDS = {"step_ms", "cpu_ms", "samples_per_s", "peak_memory_mib", "host_reads_per_step"}
WORKLOAD_FIELDS = {"batch", "steps", "warmup", "rounds", "params", "flops_per_step", "framework", "plain", "fast",
                   "training", "ratio", "fast_speedup", "cpu_ratio", "overhead_ms", "mfu", "sampling", "sampling_cfg",
                   "noise", "options"}
SAMPLING_FIELDS = {"framework", "fast", "fast_speedup", "batch", "steps", "sampler", "forwards_per_step",
                   "host_reads_per_step"}
SPREAD_FIELDS = {"median", "min", "max", "n", "ci", "resolution"}


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
    assert toy["training"]["framework"]["n"] == 2 and toy["ratio"]["n"] == 2
    assert set(toy["noise"]) == {"run_sampler", "ddpm_noise"} and toy["noise"]["ddpm_noise"]["batch"] == 1024
    assert toy["flops_per_step"] > 0 and toy["framework"]["samples_per_s"] > 0 and toy["plain"]["ema"]
    assert toy["sampling"]["forwards_per_step"] == 1  # one denoiser call per step of the generalized sampler
    assert set(toy["options"]["fused_adamw"]) >= RUN_FIELDS | {"relative", "mfu"}
    table = (tmp_path / "benchmark.md").read_text()
    assert "| workload | batch |" in table and "\n| toy | 2048 | 10 x 2 |" in table and "| fused_adamw |" in table
    assert "| toy, ddpm noise | sample_generalized, 20 | 1024 | " in table  # the run's 20 steps
    noise = toy["noise"]["ddpm_noise"]
    assert noise["draw_ms"]["draws"] == 21 and noise["draw_ms"]["per_sample"] > 0  # the start, then one per step
    assert report["machine"]["commit"] and "native_bf16" in report["machine"]  # where and with what code it ran


@pytest.fixture
def measure(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return importlib.import_module("benchmarking.measure")


@pytest.mark.parametrize("n", [5, 6, 10, 12, 20, 31])
def test_median_interval_is_the_narrowest_pair_of_order_statistics_covering_95_percent(measure, n):
    def coverage(k):  # P(x_(k) <= median <= x_(n-k+1)) for any continuous distribution
        return 1 - 2 * stats.binom.cdf(k - 1, n, 0.5)

    ci = measure.median_ci([float(v) for v in range(n, 0, -1)])  # the value v is the v-th smallest
    if n < 6:
        assert ci is None and coverage(1) < 0.95
    else:
        k = int(ci[0])
        assert ci[1] == n - k + 1 and coverage(k) >= 0.95 > coverage(k + 1)
        sp = measure.spread([float(v) for v in range(1, n + 1)])
        assert sp["ci"] == ci and sp["resolution"] == pytest.approx((n - 2 * k + 1) / 2 / sp["median"])

"""scripts/gpu_check.py: every part at toy size on this machine (slow), and a part stopped at its budget keeps the
report (default)."""
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, script_env


def gpu_check(out, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(out), "--dry-run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=script_env(one_thread=False))


def test_a_part_past_its_budget_is_stopped_and_the_report_still_written(tmp_path):
    r = gpu_check(tmp_path, "--parts", "machine", "cuda_tests", "--scale", "0.02")  # 0.4 s: python cannot even start
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["status"] for s in report["status"].values()] == ["stopped at its budget (what it measured by then is "
                                                                 "kept)"] * 2
    assert "| machine | stopped at its budget" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_dry_run_runs_every_part_and_reports_what_each_measured(tmp_path):
    r = gpu_check(tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {p: s["status"] for p, s in report["status"].items()} == dict.fromkeys(
        ["machine", "cuda_tests", "throughput", "max_batch", "quality", "ddp_resume"], "ok")
    parts = report["parts"]
    assert parts["machine"]["peak_tflops"]["fp32"] > 0 and parts["machine"]["cores"] >= 1
    assert "skipped" in parts["cuda_tests"]["summary"] or "passed" in parts["cuda_tests"]["summary"]
    toy = parts["throughput"]["toy"]
    assert toy["training"]["framework"]["median"] > 0 and set(toy["options"]) == {"tf32", "bf16"}
    assert toy["options"]["bf16"]["warmup_s"] >= 0 and toy["sampling"]["batch"] == 16
    assert parts["max_batch"]["toy"]["batch"] == 64 and parts["max_batch"]["toy"]["capped"] is True
    for name in ("fp32", "bf16+compile"):
        q = parts["quality"][name]
        assert q["returncode"] == 0 and q["steps"] > 0 and q["classifier_fd_floor"] > 0 and q["classifier_fd"] > 0
        assert (tmp_path / q["grid"].rsplit("/", 1)[-1]).is_file()
    assert parts["ddp_resume"]["first"]["global_step"] == 10 and parts["ddp_resume"]["resumed"]["global_step"] == 20
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| same training seconds |" in text and "DDP (1 device) then resume" in text and "| toy |" in text

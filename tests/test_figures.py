"""The cost of a run (callbacks.summary), the memory pre-check, and the figures made from artifacts (scripts/figures.py)."""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffusion_lab.evaluation import logged
from diffusion_lab.app.train import check_memory, train
from diffusion_lab.errors import ConfigError
from diffusion_lab.models import DiT
from diffusion_lab.models.memory import training_memory
from diffusion_lab.training import RunSummary
from tests.helpers import CONDITIONAL, FAST, TINY_DIT, compose_train, run_script

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A conditional DiT on digits with CFG and an unconditional MLP on a Gaussian mixture, trained for 20 steps."""
    root = tmp_path_factory.mktemp("results")
    train(compose_train([*FAST, *TINY_DIT, CONDITIONAL, "guidance=cfg", "num_samples=20",
                         "task_name=dit_run"], root / "dit"))
    train(compose_train([*FAST, "data=gaussian", "model.hidden_dims=[16,32,16]", "data.batch_size=256", "task_name=toy_run"],
                        root / "toy"))
    return root


def test_summary_records_steps_time_memory_and_machine(tiny_runs):
    summary = json.loads((tiny_runs / "dit" / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["train_seconds"] > 0 and summary["validation_seconds"] > 0
    assert summary["peak_host_memory_bytes"] > 50 * 2**20  # a Python process with torch loaded
    assert summary["peak_cuda_memory_bytes"] is None and "CPU cores" in summary["machine"]
    assert len(summary["commit"]) == 40 and summary["cpu"] and summary["threads"] >= 1  # where it ran


def test_summary_time_adds_the_resumed_runs_seconds(tmp_path):
    summary = RunSummary(str(tmp_path / "summary.json"))
    summary.load_state_dict({"train_seconds": 100.0})  # what the checkpoint of the earlier run holds
    trainer = SimpleNamespace(is_global_zero=True, global_step=7, world_size=1,
                              strategy=SimpleNamespace(root_device=torch.device("cpu")))
    summary.on_train_start(trainer, None)
    summary.on_train_end(trainer, None)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert 100.0 <= written["train_seconds"] < 110 and written["steps"] == 7 and written["validation_seconds"] == 0
    assert summary.state_dict()["train_seconds"] >= 100.0


def figures(root: Path, *args: str):
    return run_script("scripts/figures.py", ["--root", str(root), *args])


def test_run_artifacts_and_the_results_table_hold_what_the_runs_logged(tiny_runs, tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("dit", "toy"):
        r = figures(tmp_path, "collect", "run", str(tiny_runs / name))
        assert r.returncode == 0, r.stderr
    dit = json.loads((tmp_path / "docs/artifacts/runs/dit_run.json").read_text())
    values, summary = logged(tiny_runs / "dit"), json.loads((tiny_runs / "dit" / "summary.json").read_text())
    assert dit["steps"] == 20 and dit["train_seconds"] == summary["train_seconds"] and dit["commit"] == summary["commit"]
    assert [p["step"] for p in dit["curve"]] == [9, 19]  # validations at steps 10 and 20
    assert dit["curve"][-1]["classifier_fd"] == values["val/classifier_fd"][-1][1]
    # summary.json keeps training seconds to 0.1 s
    assert 0 < dit["curve"][0]["train_seconds"] < dit["curve"][1]["train_seconds"] <= dit["train_seconds"] + 0.05
    assert dit["floor"]["classifier_fd"] == values["val/classifier_fd_floor"][0][1]
    assert (tmp_path / "docs/artifacts/runs/dit_run.png").stat().st_size > 0
    page = tmp_path / "docs" / "results.md"
    page.write_text("a\n<!-- figure: results -->\nold\n<!-- /figure -->\nb\n<!-- figure: curves 1x8x8 -->\n"
                    "<!-- /figure -->\n")
    assert figures(tmp_path, "render", "--check").returncode == 1  # stale before rendering
    assert figures(tmp_path, "render").returncode == 0
    assert figures(tmp_path, "render", "--check").returncode == 0  # and up to date after
    text = page.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| dit_run |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "Digits, 1x8x8" and cells[2] == "20" and cells[3].startswith(f"{summary['train_seconds'] / 60:.1f} min")
    fd = float(re.match(r"classifier_fd (\S+) \(20 vs as many real; floor (\S+)\)", cells[6]).group(1))
    assert fd == pytest.approx(values["val/classifier_fd"][-1][1], rel=1e-3)
    per_class = [int(a) for a in cells[7].split(" (")[0].split()]
    assert per_class == [round(100 * values[f"val/accuracy_{k}"][-1][1]) for k in range(10)]
    toy = next(line for line in text.splitlines() if line.startswith("| toy_run |"))
    assert "| unconditional |" in toy and "| swd " in toy
    assert '<img src="artifacts/runs/dit_run.png"' in row and "old" not in text and text.startswith("a\n")
    assert (tmp_path / "docs/figures/curves_1x8x8.png").stat().st_size > 0


def test_an_unfinished_run_or_an_unknown_figure_is_one_error_line(tmp_path):
    r = figures(tmp_path, "collect", "run", str(tmp_path))
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not a finished train.py run (no summary.json, which callbacks.summary writes at the end)"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("<!-- figure: nonsense -->\n<!-- /figure -->\n")
    r = figures(tmp_path, "render")
    assert r.returncode != 0 and "unknown figure kind 'nonsense'" in r.stderr.strip().splitlines()[-1]


def test_every_figure_of_the_repository_is_what_its_artifacts_give():
    """README.md and docs/*.md are up to date with docs/artifacts: `scripts/figures.py render` changes nothing."""
    r = run_script("scripts/figures.py", ["render", "--check"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_training_memory_state_is_five_copies_and_activations_scale_with_batch():
    torch.manual_seed(0)
    net = DiT(in_dim=16, channels=1, patch_size=2, depth=2, head_dim=16, num_heads=2)
    params = sum(p.numel() for p in net.parameters())
    small, large = training_memory(net, 2), training_memory(net, 64)
    assert small.num_params == params and small.state == 5 * 4 * params  # weights, grads, 2 Adam moments, EMA
    assert training_memory(net, 2, averages=0).state == 4 * 4 * params
    assert training_memory(net, 2, averages=3).state == 7 * 4 * params  # with two post-hoc EMA profiles
    assert large.activations == pytest.approx(32 * small.activations, rel=1e-6)
    # each block keeps at least its input, attention output and MLP hidden layer: (B, 64 tokens, 32 + 32 + 128)
    assert large.activations > 2 * 64 * 64 * (32 + 32 + 128) * 4


def test_memory_check_refuses_a_run_larger_than_the_free_memory(tmp_path, monkeypatch):
    cfg = compose_train([*FAST, *TINY_DIT, "data.batch_size=64"], tmp_path)
    net = DiT(in_dim=8, channels=1, patch_size=2, depth=1, head_dim=8, num_heads=2)
    need = training_memory(net, 64, averages=3).total  # the EMA and the default two post-hoc profiles
    monkeypatch.setattr("diffusion_lab.app.train.available_memory", lambda accelerator: ("this machine", need - 1))
    with pytest.raises(ConfigError, match=r"needs at least .* GiB .*data.batch_size=64\) but this machine has .* "
                                          r"GiB free; .*memory_check=false"):
        check_memory(cfg, net)
    monkeypatch.setattr("diffusion_lab.app.train.available_memory", lambda accelerator: ("this machine", need + 1))
    check_memory(cfg, net)  # fits

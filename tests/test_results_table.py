"""The cost of a run (callbacks.summary), the memory pre-check and the README's results table (scripts/results_table.py)."""
import json
import re
from types import SimpleNamespace

import pytest
import torch

from diffusion_lab.app.runs import logged
from diffusion_lab.app.train import check_memory, train
from diffusion_lab.errors import ConfigError
from diffusion_lab.models import DiT
from diffusion_lab.models.memory import training_memory
from diffusion_lab.training import RunSummary
from tests.helpers import CONDITIONAL, FAST, TINY_DIT, compose_train, run_script

README = "# title\n\ntext before\n\n{begin}\nold table\n{end}\n\ntext after\n"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A conditional DiT on digits with CFG and an unconditional MLP on a Gaussian mixture, trained for 20 steps."""
    root = tmp_path_factory.mktemp("results")
    train(compose_train([*FAST, *TINY_DIT, CONDITIONAL, "guidance=cfg", "num_samples=20",
                         "task_name=dit_run"], root / "dit"))
    train(compose_train([*FAST, "data=gaussian", "model.hidden_dims=[16,32,16]", "data.batch_size=256", "task_name=toy_run"],
                        root / "toy"))
    return root


def cells(stdout: str, recipe: str) -> list[str]:
    line = next(row for row in stdout.splitlines() if row.startswith(f"| {recipe} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_summary_records_steps_time_memory_and_machine(tiny_runs):
    summary = json.loads((tiny_runs / "dit" / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["train_seconds"] > 0
    assert summary["peak_host_memory_bytes"] > 50 * 2**20  # a Python process with torch loaded
    assert summary["peak_cuda_memory_bytes"] is None and "CPU cores" in summary["machine"]


def test_summary_time_adds_the_resumed_runs_seconds(tmp_path):
    summary = RunSummary(str(tmp_path / "summary.json"))
    summary.load_state_dict({"train_seconds": 100.0})  # what the checkpoint of the earlier run holds
    trainer = SimpleNamespace(is_global_zero=True, global_step=7, world_size=1,
                              strategy=SimpleNamespace(root_device=torch.device("cpu")))
    summary.on_train_start(trainer, None)
    summary.on_train_end(trainer, None)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert 100.0 <= written["train_seconds"] < 110 and written["steps"] == 7
    assert summary.state_dict()["train_seconds"] >= 100.0


def test_results_table_reports_what_the_runs_logged(tiny_runs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README.format(begin="<!-- results:begin (scripts/results_table.py) -->",
                                    end="<!-- results:end -->"))
    r = run_script("scripts/results_table.py", [str(tiny_runs / "dit"), str(tiny_runs / "toy"), "--readme",
                                                str(readme), "--images", str(tmp_path / "docs")], check=True)
    dit, toy = cells(r.stdout, "dit_run"), cells(r.stdout, "toy_run")
    values, summary = logged(tiny_runs / "dit"), json.loads((tiny_runs / "dit" / "summary.json").read_text())
    assert dit[1] == "Digits, 1x8x8" and dit[2] == "20" and dit[3] == f"{summary['train_seconds'] / 60:.1f} min"
    fd = float(re.match(r"classifier_fd (\S+) \(20 vs 20 real; floor (\S+)\)", dit[6]).group(1))
    assert fd == pytest.approx(values["val/classifier_fd"][-1][1], rel=1e-3)
    per_class = [int(a) for a in dit[7].split(" (")[0].split()]
    assert per_class == [round(100 * values[f"val/accuracy_{k}"][-1][1]) for k in range(10)]
    assert toy[7] == "unconditional" and toy[6].startswith("swd ")
    assert (tmp_path / "docs" / "dit_run.png").stat().st_size > 0 and '<img src="docs/dit_run.png"' in dit[8]
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# title") and text.endswith("text after\n")
    assert "| dit_run |" in text and "| toy_run |" in text
    # one recipe rerun: its row is replaced, the other recipe's row stays where it was
    dit_row = next(line for line in text.splitlines() if line.startswith("| dit_run |"))
    readme.write_text(text.replace("| toy_run |", "| toy_run | stale"))
    run_script("scripts/results_table.py", [str(tiny_runs / "toy"), "--readme", str(readme)], check=True)
    rows = [line for line in readme.read_text().splitlines() if line.startswith(("| dit_run |", "| toy_run |"))]
    assert rows[0] == dit_row and rows[1].startswith("| toy_run | Gaussian") and len(rows) == 2


def test_results_table_refuses_an_unfinished_run_in_one_line(tmp_path):
    r = run_script("scripts/results_table.py", [str(tmp_path)])
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not a finished train.py run (needs config.yaml and summary.json, which "
        "callbacks.summary writes when training ends)"]


def test_training_memory_state_is_five_copies_and_activations_scale_with_batch():
    torch.manual_seed(0)
    net = DiT(in_dim=16, channels=1, patch_size=2, depth=2, head_dim=16, num_heads=2)
    params = sum(p.numel() for p in net.parameters())
    small, large = training_memory(net, 2), training_memory(net, 64)
    assert small.num_params == params and small.state == 5 * 4 * params  # weights, grads, 2 Adam moments, EMA
    assert training_memory(net, 2, ema=False).state == 4 * 4 * params
    assert large.activations == pytest.approx(32 * small.activations, rel=1e-6)
    # each block keeps at least its input, attention output and MLP hidden layer: (B, 64 tokens, 32 + 32 + 128)
    assert large.activations > 2 * 64 * 64 * (32 + 32 + 128) * 4


def test_memory_check_refuses_a_run_larger_than_the_free_memory(tmp_path, monkeypatch):
    cfg = compose_train([*FAST, *TINY_DIT, "data.batch_size=64"], tmp_path)
    net = DiT(in_dim=8, channels=1, patch_size=2, depth=1, head_dim=8, num_heads=2)
    need = training_memory(net, 64, ema=True).total
    monkeypatch.setattr("diffusion_lab.app.train.available_memory", lambda accelerator: ("this machine", need - 1))
    with pytest.raises(ConfigError, match=r"needs at least .* GiB .*data.batch_size=64\) but this machine has .* "
                                          r"GiB free; .*memory_check=false"):
        check_memory(cfg, net)
    monkeypatch.setattr("diffusion_lab.app.train.available_memory", lambda accelerator: ("this machine", need + 1))
    check_memory(cfg, net)  # fits


def test_nfe_report_tables_what_evaluate_wrote(tmp_path):
    """scripts/nfe_report.py reads metrics.csv as evaluate.py writes it (evaluation.write_csv), matches grid points
    to the NFE columns (Heun's 9 under 10), and writes its README section and plot."""
    from diffusion_lab.evaluation import write_csv

    floor = {"classifier_fd_floor": 6.5}
    write_csv([{"steps": s, "gam": None, "cfg_scale": 0.5, "nfe": s, "classifier_fd": 100.0 / s, **floor}
               for s in (5, 10, 20)], tmp_path / "dpm" / "metrics.csv")
    write_csv([{"steps": s, "gam": None, "cfg_scale": 0.5, "nfe": 2 * s - 1, "classifier_fd": 50.0 / s, **floor}
               for s in (3, 5)], tmp_path / "heun" / "metrics.csv")
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- nfe:demo:begin -->\nold\n<!-- nfe:demo:end -->\nb\n")
    r = run_script("scripts/nfe_report.py", [f"DPM={tmp_path / 'dpm'}", f"Heun={tmp_path / 'heun'}", "--section",
                                             "demo", "--readme", str(readme), "--plot", str(tmp_path / "p.png")],
                   check=True)
    assert "| DPM | 20 | 10 | 5 |  | 6.5 |" in r.stdout
    assert "| Heun | 16.7 | 10 (9) |  |  | 6.5 |" in r.stdout
    text = readme.read_text()
    assert "old" not in text and "| DPM | 20 |" in text and text.startswith("a\n") and text.endswith("b\n")
    assert (tmp_path / "p.png").stat().st_size > 0

"""Bad invocations of train.py, scripts/sample.py and scripts/evaluate.py, tried systematically.

Each ends with a non-zero exit and one `error:` line naming the problem, no traceback, and leaves an
earlier run's directory byte for byte as it was. All invocations run at once (one thread each).
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_lab.app.train import train
from tests.conftest import FAST, compose_train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TRAIN = {
    "unknown option": (["model=transformer"], "Could not find 'model/transformer'"),
    "wrong type": (["trainer.max_steps=abc"], "trainer.max_steps"),
    "learning rate out of range": (["optimizer.lr=-1"], "optimizer.lr"),
    "validation interval zero": (["trainer.val_check_interval=0"], "trainer.val_check_interval"),
    "steps out of range": (["sampler.steps=0"], "sampler: steps=0 must be an integer >= 1"),
    "schedule out of range": (["schedule.sigma_min=20"], "sigma_min"),
    "missing data root": (["model=dit", "data=mnist", "data.dataset.root=/nonexistent/mnist",
                           "data.dataset.download=false"], "/nonexistent/mnist"),
    "missing checkpoint": (["ckpt_path=/nonexistent/last.ckpt"], "/nonexistent/last.ckpt"),
    "corrupt checkpoint": (["ckpt_path={corrupt}"], "cannot read"),
    "foreign checkpoint": (["ckpt_path={foreign}"], "not a diffusion_lab checkpoint"),
    "cfg on unconditional": (["guidance=cfg"], "conditional"),
    "labels from unlabelled data": (["conditional=true"], "no labels"),
    "patch size": (["model=dit", "data=digits", "model.patch_size=3"], "patch_size"),
    "unwritable output": (["hydra.run.dir=/proc/diffusion_lab_run"], "not a writable directory"),
    "reused run directory": ([], "already holds a run"),
    "resume into another run": (["ckpt_path={foreign_run}"], "mix two runs"),
}
SCRIPTS = {
    "sample missing checkpoint": ("sample", ["ckpt=/nonexistent.ckpt"], "no such file"),
    "sample corrupt checkpoint": ("sample", ["ckpt={corrupt}"], "truncated"),
    "sample foreign checkpoint": ("sample", ["ckpt={foreign}"], "not a diffusion_lab checkpoint"),
    "sample cfg on unconditional": ("sample", ["ckpt={good}", "cfg_scale=3"], "unconditional"),
    "sample labels outside classes": ("sample", ["ckpt={good}", "labels=[3]"], "label"),
    "sample steps zero": ("sample", ["ckpt={good}", "steps=0"], "steps=0"),
    "sample unwritable output": ("sample", ["ckpt={good}", "hydra.run.dir=/proc/diffusion_lab_run"], "writable"),
    "evaluate missing checkpoint": ("evaluate", ["ckpt=/nonexistent.ckpt"], "no such file"),
    "evaluate unknown metric": ("evaluate", ["ckpt={good}", "metric=[nonsense]"], "nonsense"),
    "evaluate cfg on unconditional": ("evaluate", ["ckpt={good}", "cfg_scale=2"], "unconditional"),
}


def _digest(run_dir: Path) -> dict:
    """Hashes of the run's outputs; Hydra's own record of the latest invocation (.hydra/, the log) is excluded."""
    return {str(p.relative_to(run_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    earlier = root / "earlier_run"
    train(compose_train([*FAST, "trainer.max_steps=10"], earlier))
    train(compose_train([*FAST, "trainer.max_steps=5"], root / "other_run"))
    files = {"good": earlier / "checkpoints/last.ckpt", "corrupt": root / "corrupt.ckpt", "foreign": root / "foreign.ckpt",
             "foreign_run": root / "other_run/checkpoints/last.ckpt"}
    files["corrupt"].write_bytes(files["good"].read_bytes()[:4096])
    torch.save({"weights": torch.zeros(3)}, files["foreign"])
    before = _digest(earlier)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    procs = {}
    for name, (args, _) in TRAIN.items():
        args = [a.format(**files) for a in args]
        run_dir = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={earlier}"]
        procs[name] = subprocess.Popen([sys.executable, "train.py", *FAST, *args, *run_dir], cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, (script, args, _) in SCRIPTS.items():
        args = [a.format(**files) for a in args]
        run_dir = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={root / name.replace(' ', '_')}"]
        procs[name] = subprocess.Popen([sys.executable, f"scripts/{script}.py", *args, *run_dir], cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {name: (p.wait(timeout=300), p.communicate()[1]) for name, p in procs.items()}
    return out, before, _digest(earlier)


@pytest.mark.parametrize("name", [*TRAIN, *SCRIPTS])
def test_bad_invocation_exits_nonzero_with_one_error_line(results, name):
    code, stderr = results[0][name]
    expected = TRAIN[name][1] if name in TRAIN else SCRIPTS[name][2]
    lines = [line for line in stderr.splitlines() if line.strip() and "Set the environment variable" not in line]
    assert code != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert any(expected in line for line in lines), stderr[-3000:]
    assert sum(line.startswith("error:") for line in lines) <= 1, stderr[-3000:]


def test_no_earlier_output_is_overwritten_or_lost(results):
    _, before, after = results
    assert before == after

"""Faults: SIGKILL mid-epoch and exact resume, a kill during a checkpoint save, non-finite losses, bad checkpoints."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_lab.errors import NonFiniteError
from diffusion_lab.app.train import build, train
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parents[1]
# 8 batches of 512 per epoch; checkpoints every 5 optimizer steps.
BASE = [*FAST, "data.epoch_size=4096", "data.batch_size=512", "model.hidden_dims=[16,32,16]",
        "trainer.val_check_interval=5", "callbacks.model_checkpoint.every_n_train_steps=5", "num_samples=8"]


def run_train(args, run_dir, check=True):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def assert_same_training_state(a_path, b_path):
    a, b = (torch.load(p, weights_only=False) for p in (a_path, b_path))
    assert a["global_step"] == b["global_step"]
    for key in ["state_dict", "ema_state_dict"]:
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])


@pytest.mark.parametrize("kill_at,extra", [
    (13, []),                                           # last checkpoint at step 10: mid-epoch (batch 2 of 8)
    pytest.param(9, ["callbacks.model_checkpoint.every_n_train_steps=8"], marks=pytest.mark.slow),  # last batch of epoch 0
    pytest.param(13, ["trainer.accumulate_grad_batches=2"], marks=pytest.mark.slow),  # step 10 = batch 20 = mid-epoch
    pytest.param(11, ["callbacks.model_checkpoint.every_n_train_steps=null",
                      "callbacks.model_checkpoint.save_on_train_epoch_end=true",
                      "+callbacks.model_checkpoint.every_n_epochs=1"], marks=pytest.mark.slow),  # epoch-end checkpoint
], ids=["mid-epoch", "last-batch", "accumulate-2", "epoch-end"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, compose_cfg, kill_at, extra):
    args = [*BASE, "trainer.max_steps=20", *extra]
    train(compose_cfg(args, tmp_path / "straight"))
    r = run_train([*args, f"+callbacks.kill._target_=tests.crash.KillAtStep", f"+callbacks.kill.step={kill_at}"],
                  tmp_path / "killed", check=False)
    assert r.returncode == -9, r.stderr[-2000:]
    run_train([*args, "ckpt_path=last"], tmp_path / "killed")
    assert_same_training_state(tmp_path / "straight/checkpoints/last.ckpt", tmp_path / "killed/checkpoints/last.ckpt")


def test_kill_during_checkpoint_save_keeps_the_previous_checkpoint(tmp_path):
    args = [*BASE, "trainer.max_steps=15"]
    r = run_train([*args, "+callbacks.kill._target_=tests.crash.KillDuringSave", "+callbacks.kill.step=10"],
                  tmp_path, check=False)
    assert r.returncode == -9
    ckpts = tmp_path / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 5  # the save at step 5, intact
    run_train([*args, "ckpt_path=last"], tmp_path)
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 15
    assert not [p.name for p in ckpts.iterdir() if p.name.endswith(".tmp")]


def _poison(datamodule, rows=slice(0, None)):
    datamodule.dataset.data[rows] = float("nan")


def test_non_finite_loss_stops_before_the_optimizer_step(compose_cfg, tmp_path):
    cfg = compose_cfg([*BASE, "trainer.max_steps=20"])
    module, datamodule = build(cfg)
    import lightning as L
    from hydra.utils import instantiate

    class PoisonAt(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 7:
                batch.fill_(float("nan"))

    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + [PoisonAt()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    with pytest.raises(NonFiniteError, match="step 7"):
        trainer.fit(module, datamodule=datamodule)
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        state = torch.load(path, weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
        assert all(torch.isfinite(v).all() for v in state["ema_state_dict"].values())


def test_nonfinite_skip_drops_the_step_and_keeps_training(compose_cfg, tmp_path):
    cfg = compose_cfg([*BASE, "trainer.max_steps=12", "nonfinite=skip"])
    module, datamodule = build(cfg)
    import lightning as L
    from hydra.utils import instantiate

    class PoisonOnce(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4 and not getattr(self, "done", False):
                self.done = True
                batch.fill_(float("nan"))

    trainer = instantiate(cfg.trainer, callbacks=[PoisonOnce()], logger=False)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 12
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_same_seed_same_config_gives_identical_losses_and_samples(compose_cfg, tmp_path):
    logs, samples = [], []
    for name in ["a", "b"]:
        train(compose_cfg([*BASE, "trainer.max_steps=10", "trainer.log_every_n_steps=1"], tmp_path / name))
        logs.append((tmp_path / name / "csv/version_0/metrics.csv").read_text())
        samples.append(sorted((tmp_path / name / "samples").glob("*.png"))[-1].read_bytes())
    assert logs[0] == logs[1] and "train/loss" in logs[0]
    assert samples[0] == samples[1]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A checkpoint of the base model and one of a wider model."""
    from tests.conftest import compose_train

    root = tmp_path_factory.mktemp("ckpts")
    train(compose_train([*BASE, "trainer.max_steps=5"], root / "good_run"))
    train(compose_train([*BASE, "trainer.max_steps=5", "model.hidden_dims=[16,64,16]"], root / "other_run"))
    return root / "good_run/checkpoints/last.ckpt", root / "other_run/checkpoints/last.ckpt"


@pytest.mark.parametrize("make,expected", [
    (lambda p: p.write_bytes(b"not a checkpoint"), "cannot read"),
    (lambda p: p.write_bytes(p.with_name("good.ckpt").read_bytes()[:5000]), "cannot read"),
    (lambda p: torch.save({"foo": 1}, p), "not a diffusion_lab checkpoint"),
    (lambda p: p.write_bytes(p.with_name("other.ckpt").read_bytes()), "model.hidden_dims"),
], ids=["garbage", "truncated", "foreign", "other-model"])
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, two_checkpoints, make, expected):
    (tmp_path / "good.ckpt").write_bytes(two_checkpoints[0].read_bytes())
    (tmp_path / "other.ckpt").write_bytes(two_checkpoints[1].read_bytes())
    bad = tmp_path / "bad.ckpt"
    make(bad)
    r = run_train([*BASE, "trainer.max_steps=10", f"ckpt_path={bad}"], tmp_path / "run", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and expected in lines[-1] and str(bad) in lines[-1], r.stderr[-2000:]

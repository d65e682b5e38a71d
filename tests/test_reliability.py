"""Faults: SIGKILL mid-epoch and exact resume, a kill during a checkpoint save, non-finite losses."""
import pytest
import torch

from diffusion_lab.errors import NonFiniteError
from diffusion_lab.app.train import build, train
from tests.helpers import BASE, assert_same_training_state, global_step, logged_metrics, run_train


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
    r = run_train([*args, "+callbacks.kill._target_=tests.crash.KillAtStep", f"+callbacks.kill.step={kill_at}"],
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
    assert global_step(ckpts / "last.ckpt") == 5  # the save at step 5, intact
    run_train([*args, "ckpt_path=last"], tmp_path)
    assert global_step(ckpts / "last.ckpt") == 15
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
    assert all(torch.isfinite(p).all() for p in module.objective.parameters())
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
    assert all(torch.isfinite(p).all() for p in module.objective.parameters())


def test_same_seed_same_config_gives_identical_losses_and_samples(compose_cfg, tmp_path):
    logs, samples = [], []
    for name in ["a", "b"]:
        train(compose_cfg([*BASE, "trainer.max_steps=10", "trainer.log_every_n_steps=1"], tmp_path / name))
        logged = logged_metrics(tmp_path / name)
        logged.pop("val/eval_seconds"), logged.pop("val/train_seconds")  # wall times
        logs.append(logged)
        samples.append(sorted((tmp_path / name / "samples").glob("*.png"))[-1].read_bytes())
    assert logs[0] == logs[1] and "train/loss" in logs[0] and "val/swd" in logs[0]
    assert samples[0] == samples[1]

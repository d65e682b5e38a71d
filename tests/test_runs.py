"""Runs never lose work: the final step, signals, set-and-forget resume, config changes on resume, one run per directory."""
import csv
import math
from pathlib import Path
import signal
import subprocess
import sys

import pytest
import torch
from filelock import FileLock

from diffusion_lab.errors import ConfigError, NonFiniteError
from diffusion_lab.app.runs import LOCK_FILE, RunDirectory
from diffusion_lab.evaluation import logged
from diffusion_lab.app.train import train
from tests.helpers import BASE, assert_same_training_state, global_step, run_train


def test_final_step_is_saved_validated_and_drawn_when_off_the_cadence(compose_cfg, tmp_path):
    train(compose_cfg([*BASE, "trainer.max_steps=13"]))  # checkpoints and validation every 5 steps
    ckpts = tmp_path / "checkpoints"
    assert global_step(ckpts / "last.ckpt") == 13
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png"))[-1] == "samples_step0000013.png"
    rows = list(csv.DictReader(open(tmp_path / "csv/version_0/metrics.csv")))
    assert [int(r["step"]) + 1 for r in rows if r.get("val/swd")] == [5, 10, 13]  # Lightning writes step - 1


def test_checkpoints_keep_the_newest_few_and_ema_weights_once(compose_cfg, tmp_path):
    train(compose_cfg([*BASE, "trainer.max_steps=22"]))
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step0000010.ckpt", "step0000015.ckpt", "step0000020.ckpt"]
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    ema_state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EMA"))
    assert set(ema_state) == {"num_updates", "power"} and ema_state["num_updates"] == 22 == ema_state["power"]["step"]
    assert set(ckpt["ema_state_dict"]) == {k.removeprefix("objective.") for k in ckpt["state_dict"]}


def test_resuming_a_finished_run_for_more_steps_is_bit_identical(compose_cfg, tmp_path):
    train(compose_cfg([*BASE, "trainer.max_steps=20"], tmp_path / "straight"))
    train(compose_cfg([*BASE, "trainer.max_steps=13", "ckpt_path=auto"], tmp_path / "resumed"))
    train(compose_cfg([*BASE, "trainer.max_steps=20", "ckpt_path=auto"], tmp_path / "resumed"))
    assert_same_training_state(tmp_path / "straight/checkpoints/last.ckpt", tmp_path / "resumed/checkpoints/last.ckpt")


@pytest.mark.parametrize("signame", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_signal_saves_the_current_step_exits_nonzero_and_resumes_bit_identical(tmp_path, compose_cfg, signame):
    args = [*BASE, "trainer.max_steps=20"]
    train(compose_cfg(args, tmp_path / "straight"))
    r = run_train([*args, "+callbacks.sig._target_=tests.crash.SignalAtStep", "+callbacks.sig.step=13",
                   f"+callbacks.sig.signame={signame}"], tmp_path / "stopped", check=False)
    assert r.returncode == 128 + getattr(signal, signame), r.stderr[-2000:]
    assert f"stopped by {signame} at step 13" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert global_step(tmp_path / "stopped/checkpoints/last.ckpt") == 13  # not the periodic save of step 10
    run_train([*args, "ckpt_path=auto"], tmp_path / "stopped")
    assert_same_training_state(tmp_path / "straight/checkpoints/last.ckpt", tmp_path / "stopped/checkpoints/last.ckpt")


@pytest.mark.slow
def test_slurm_signal_saves_then_hands_over_to_the_requeue_handler(tmp_path, compose_cfg):
    """The path a SLURM time limit takes under the submitit launcher: USR2, save, submitit requeues, resume."""
    args = [*BASE, "trainer.max_steps=20"]
    train(compose_cfg(args, tmp_path / "straight"))
    job, marker = tmp_path / "job", tmp_path / "requeued"
    r = run_train([*args, "+callbacks.requeue._target_=tests.crash.FakeRequeue", f"+callbacks.requeue.marker={marker}",
                   f"+callbacks.requeue.ckpt={job}/checkpoints/last.ckpt", "+callbacks.sig._target_=tests.crash.SignalAtStep",
                   "+callbacks.sig.step=12", "+callbacks.sig.signame=SIGUSR2", "ckpt_path=auto"], job, check=False)
    assert r.returncode == 255, r.stderr[-2000:]
    assert marker.read_text() == "SIGUSR2 12"  # last.ckpt held step 12 when the requeue handler ran
    run_train([*args, "ckpt_path=auto"], job)  # the requeued job: same command
    assert_same_training_state(tmp_path / "straight/checkpoints/last.ckpt", job / "checkpoints/last.ckpt")


def test_ckpt_path_last_starts_with_a_warning_then_resumes_as_lightnings_and_auto_alike(compose_cfg, tmp_path, caplog):
    train(compose_cfg([*BASE, "trainer.max_steps=5", "ckpt_path=last"]))  # nothing to resume: a new run, and a warning
    assert global_step(tmp_path / "checkpoints/last.ckpt") == 5
    assert any("ckpt_path=last: no checkpoint at" in r.getMessage() for r in caplog.records)
    train(compose_cfg([*BASE, "trainer.max_steps=8", "ckpt_path=last"]))
    assert global_step(tmp_path / "checkpoints/last.ckpt") == 8
    train(compose_cfg([*BASE, "trainer.max_steps=10", "ckpt_path=auto"]))
    assert global_step(tmp_path / "checkpoints/last.ckpt") == 10
    with pytest.raises(Exception, match="ckpt_path: no checkpoint at /nonexistent.ckpt"):
        train(compose_cfg([*BASE, "trainer.max_steps=12", "ckpt_path=/nonexistent.ckpt"]))


def test_resume_applies_a_new_learning_rate_and_schedule_length(compose_cfg, tmp_path):
    cosine = ["lr_scheduler=cosine", "lr_scheduler.warmup_steps=2"]
    train(compose_cfg([*BASE, *cosine, "trainer.max_steps=10"]))
    train(compose_cfg([*BASE, *cosine, "trainer.max_steps=20", "optimizer.lr=0.01", "ckpt_path=auto"]))
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    group, sched = ckpt["optimizer_states"][0]["param_groups"][0], ckpt["lr_schedulers"][0]
    assert group["initial_lr"] == 0.01 and sched["base_lrs"] == [0.01] and sched["total_steps"] == 20
    assert group["lr"] == pytest.approx(0.0, abs=1e-12) and sched["last_epoch"] == 20  # the cosine's end
    assert ckpt["config"]["optimizer"]["lr"] == 0.01
    # at step 14 the new schedule (lr 0.01, 2 warmup steps, total 20) is part-way down its cosine; the old one (total
    # 10) would have ended at 0
    lr = dict(logged(tmp_path)["train/lr"])[14]
    assert lr == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * (14 - 2) / (20 - 2))), rel=1e-6)


def test_resume_with_a_constant_lr_trains_at_the_new_lr(compose_cfg, tmp_path):
    train(compose_cfg([*BASE, "trainer.max_steps=5"]))
    train(compose_cfg([*BASE, "trainer.max_steps=6", "optimizer.lr=0.01", "ckpt_path=auto"]))
    group = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == 0.01


@pytest.mark.parametrize("change,key", [("model.hidden_dims=[16,64,16]", "model.hidden_dims"),
                                        ("schedule=ddpm", "schedule"), ("data.batch_size=256", "data.batch_size")])
def test_resume_refuses_a_new_model_data_or_schedule(compose_cfg, tmp_path, change, key):
    train(compose_cfg([*BASE, "trainer.max_steps=5"]))
    with pytest.raises(ConfigError, match=key):
        train(compose_cfg([*BASE, "trainer.max_steps=10", change, "ckpt_path=auto"]))


def test_a_run_directory_holds_one_run(compose_cfg, tmp_path):
    train(compose_cfg([*BASE, "trainer.max_steps=5"], tmp_path / "a"))
    config = (tmp_path / "a/config.yaml").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(compose_cfg([*BASE, "trainer.max_steps=5", "seed=1"], tmp_path / "a"))
    assert (tmp_path / "a/config.yaml").read_text() == config
    train(compose_cfg([*BASE, "trainer.max_steps=5"], tmp_path / "b"))
    with pytest.raises(ConfigError, match="mix two runs"):  # another run's checkpoint resumed in b
        train(compose_cfg([*BASE, "trainer.max_steps=10", f"ckpt_path={tmp_path}/a/checkpoints/last.ckpt"],
                          tmp_path / "b"))
    with FileLock(tmp_path / "c" / LOCK_FILE):  # a live run holds c
        with pytest.raises(ConfigError, match="in use by another run"):
            train(compose_cfg([*BASE, "trainer.max_steps=5"], tmp_path / "c"))
    train(compose_cfg([*BASE, "trainer.max_steps=5"], tmp_path / "c"))


def test_a_killed_run_does_not_leave_its_directory_locked(tmp_path):
    code = f"from filelock import FileLock; import time; lock = FileLock({str(tmp_path / LOCK_FILE)!r}); lock.acquire(); print(1, flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "1"
    with pytest.raises(ConfigError, match="in use"):
        RunDirectory(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with RunDirectory(tmp_path):
        pass


def test_nonfinite_skip_stops_after_too_many_skipped_steps_in_a_row(compose_cfg, tmp_path):
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        train(compose_cfg([*BASE, "trainer.max_steps=20", "nonfinite=skip", "max_skipped_steps=3",
                           "optimizer.lr=1e6"]))


@pytest.mark.slow
def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    r = run_train([*BASE, "trainer.max_steps=20", "+callbacks.disk._target_=tests.crash.DiskFullAtStep",
                   "+callbacks.disk.step=7"], tmp_path, check=False)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[-1].startswith("error: cannot write checkpoint") and "No space left" in lines[-1], r.stderr[-2000:]
    assert global_step(tmp_path / "checkpoints/last.ckpt") == 5
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_ema_export_pairs_names_with_shadows_when_parameters_are_frozen(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    from diffusion_lab.app.train import build

    cfg = compose_cfg([*BASE, "trainer.max_steps=5"])
    module, datamodule = build(cfg)
    params = dict(module.objective.named_parameters())
    frozen, trained = list(params)[0], list(params)[-1]
    params[frozen].requires_grad_(False)
    before = params[frozen].detach().clone()
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    instantiate(cfg.trainer, callbacks=callbacks, logger=False).fit(module, datamodule=datamodule)
    shadows = next(c for c in callbacks if type(c).__name__ == "EMA").ema.shadow_params
    exported = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["ema_state_dict"]
    for (name, _), shadow in zip(module.objective.named_parameters(), shadows, strict=True):
        assert exported[name].shape == shadow.shape and torch.equal(exported[name], shadow), name
    assert torch.equal(exported[frozen], before)  # the average of a constant is that constant
    assert not torch.equal(exported[trained], params[trained].detach())


def test_a_resume_reads_the_checkpoint_file_once(compose_cfg, tmp_path, monkeypatch):
    import diffusion_lab.checkpoints as checkpoints

    train(compose_cfg([*BASE, "trainer.max_steps=5", "ckpt_path=auto"]))
    reads, load = [], torch.load
    monkeypatch.setattr(checkpoints.torch, "load", lambda *a, **k: reads.append(a[0]) or load(*a, **k))
    train(compose_cfg([*BASE, "trainer.max_steps=10", "ckpt_path=auto"]))
    assert [Path(p).name for p in reads] == ["last.ckpt"]  # read by train.py, handed to Lightning
    assert global_step(tmp_path / "checkpoints" / "last.ckpt") == 10

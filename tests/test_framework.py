"""The framework: every config option composes and instantiates; training, checkpoints, resume, loggers."""
import copy
import csv
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion_lab.app.config import user_error
from diffusion_lab.app.runs import check_resume_config
from diffusion_lab.errors import ConfigError, DataError
from diffusion_lab.app.train import build, train
from diffusion_lab.checkpoints import upgrade_checkpoint
from tests.helpers import (CONDITIONAL, FAST, assert_same_training_state, config_options, global_step, logged_metrics,
                           run_script)


# Options that need files or hardware this machine lacks are composed but built elsewhere (see below).
NEEDS_FILES = {"mnist", "fashion_mnist", "cifar10", "image_folder", "hf"}
EXTRA = {
    ("model", "cond_mlp"): [CONDITIONAL, "data=tree"],
    ("data", "digits"): ["model=dit", "model.depth=1"], ("data", "mnist"): ["model=dit"],
    ("data", "fashion_mnist"): ["model=dit"], ("data", "cifar10"): ["model=unet"], ("data", "image_folder"): ["model=dit"],
    ("data", "hf"): ["model=dit"], ("model", "dit"): ["data=digits"], ("model", "unet"): ["data=digits"],
    ("guidance", "cfg"): [CONDITIONAL, "data=gaussian", "model=toy_unet"],
    ("lr_scheduler", "cosine"): [], ("trainer", "gpu"): [],
    # 16x16 digits -> the VAE's 2x4x4 latents, which the denoiser and the classifier take
    ("module", "latent"): ["data=digits", "data.input_dims=[1,16,16]", "model=unet", "model.in_dim=4",
                           "model.channels=2", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_levels=[1]",
                           "module.vae.ch=8", "module.classifier.ch=8"],
}


GROUPS = ["data", "model", "objective", "objective/loss_weight", "schedule", "sampler", "guidance", "module",
          "optimizer", "lr_scheduler", "logger", "callbacks", "trainer"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in config_options(g)])
def test_every_group_option_composes_and_instantiates(compose_cfg, tiny_ckpts, group, option):
    add = "+" if group == "objective/loss_weight" else ""  # a group the default objective does not pick
    cfg = compose_cfg([f"{add}{group}={option}", *EXTRA.get((group, option), [])])
    if (group, option) == ("guidance", "autoguidance"):  # its guide: a checkpoint of the same (2-D) data
        cfg.guidance.guide = str(tiny_ckpts["toy"])
    assert OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    OmegaConf.resolve(copy.deepcopy(cfg))  # and in place, as `train.py --cfg job --resolve` does: none to a dict
    if group == "data" and option in NEEDS_FILES:
        patch = {"image_folder": {"root": "/nonexistent"}, "hf": {"path": "/nonexistent", "from_disk": True}}.get(
            option, {"download": False})
        with pytest.raises(Exception) as err:  # no files here: a clear one-line DataError, not a crash
            instantiate(OmegaConf.merge(cfg.data, {"dataset": patch}))
        assert isinstance(err.value.__cause__, DataError) and user_error(err.value).startswith("data.dataset: ")
        return
    if group == "trainer" and cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("composes (checked above); a GPU trainer cannot be built without CUDA")
    if group == "trainer":
        assert instantiate(cfg.trainer, logger=False).max_steps == cfg.trainer.max_steps
        return
    module, datamodule = build(cfg)
    for c in (cfg.logger or {}).values():
        instantiate(c)
    for c in (cfg.callbacks or {}).values():
        instantiate(c)
    x = datamodule.dataset[0]
    x = x[0] if isinstance(x, tuple) else x
    if hasattr(module, "vae"):  # latent diffusion: the denoiser works on the VAE's latents of the data
        x = module.vae.mean_latent(x[None])[0]
    cond = torch.zeros(1, dtype=torch.long) if module.objective.num_classes else None
    assert module.objective(x[None], torch.tensor([1.0]), cond).shape == x[None].shape


def test_default_training_lowers_loss_and_writes_checkpoint_config_and_samples(compose_cfg, tmp_path):
    cfg = compose_cfg([*FAST, "trainer.max_steps=200", "trainer.val_check_interval=100",
                       "callbacks.model_checkpoint.every_n_train_steps=100", "data.epoch_size=20480"])
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 200 and ckpt["config"]["model"]["_target_"].endswith("TimeInputMLP")
    assert set(ckpt["ema_state_dict"]) == {k.removeprefix("objective.") for k in ckpt["state_dict"]}
    assert (tmp_path / "config.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["samples_step0000100.png",
                                                                            "samples_step0000200.png"]
    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert [int(r["step"]) for r in rows] == list(range(4, 200, 5))  # every trainer.log_every_n_steps=5 steps
    assert all(r["train/grad_norm"] for r in rows)
    lr_rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")) if r.get("train/lr")]
    assert [int(r["step"]) for r in lr_rows] == list(range(4, 200, 5))  # LearningRateMonitor writes rows of its own


@pytest.mark.parametrize("avx512_bf16,amx,accelerator,expected", [
    (False, False, "cpu", "32-true"), (True, False, "cpu", "bf16-mixed"), (False, True, "auto", "bf16-mixed"),
    (True, True, "mps", "32-true")])
def test_speed_fast_picks_bf16_only_where_the_device_computes_it_natively(compose_cfg, monkeypatch, avx512_bf16, amx,
                                                                          accelerator, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cfg = compose_cfg(["speed=fast", f"trainer.accelerator={accelerator}"])
    assert cfg.trainer.precision == expected
    assert cfg.optimizer.fused is True and cfg.matmul_precision == "high" and cfg.compile is False
    assert compose_cfg([]).trainer.precision == "32-true"  # the default run is untouched


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_device_that_emulates_it_gets_a_warning(compose_cfg, monkeypatch, native):
    from diffusion_lab.app.train import emulated_bf16_warning

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    warning = emulated_bf16_warning(compose_cfg(["trainer.precision=bf16-mixed"]))
    assert (warning is None) if native else warning.startswith("warning: trainer.precision=bf16-mixed on a device")
    assert emulated_bf16_warning(compose_cfg([])) is None  # 32-true


def test_bf16_run_trains_with_fused_adamw_and_samples_in_bf16_from_its_checkpoint(compose_cfg, tmp_path):
    from diffusion_lab.build import load_model

    train(compose_cfg([*FAST, "speed=fast", "trainer.precision=bf16-mixed", "trainer.max_steps=10",
                       "data.batch_size=64", "model.hidden_dims=[16,32,16]"]))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 10 and ckpt["config"]["optimizer"]["fused"] is True
    assert ckpt["optimizer_states"][0]["param_groups"][0]["fused"] is True
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values())  # autocast: weights stay fp32
    assert load_model(tmp_path / "checkpoints" / "last.ckpt").autocast is torch.bfloat16


@pytest.mark.parametrize("extra", [[], ["lr_scheduler=cosine", "lr_scheduler.total_steps=16", "lr_scheduler.warmup_steps=4",
                                     "trainer.accumulate_grad_batches=2"]],
                         ids=["plain", "cosine-accumulate2"])
def test_resume_at_epoch_boundary_is_bit_identical(compose_cfg, tmp_path, extra):
    common = [*FAST, "data.epoch_size=4096", "data.batch_size=512", "trainer.val_check_interval=8",
              "callbacks.model_checkpoint.every_n_train_steps=8", "model.hidden_dims=[16,32,16]", *extra]
    train(compose_cfg([*common, "trainer.max_steps=16"], tmp_path / "straight"))
    train(compose_cfg([*common, "trainer.max_steps=8"], tmp_path / "resumed"))
    first = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    train(compose_cfg([*common, "trainer.max_steps=16", f"ckpt_path={first}"], tmp_path / "resumed"))
    straight, resumed = tmp_path / "straight/checkpoints/last.ckpt", tmp_path / "resumed/checkpoints/last.ckpt"
    assert_same_training_state(straight, resumed)
    a, b = (torch.load(p, weights_only=False) for p in (straight, resumed))
    assert a["global_step"] == 16 and a["lr_schedulers"] == b["lr_schedulers"]


def resolved(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def test_resume_refuses_another_module_and_takes_configs_that_state_the_defaults(compose_cfg):
    latent = ["module=latent", *EXTRA[("module", "latent")]]
    saved = resolved(compose_cfg([o for o in latent if not o.startswith("module")]))
    with pytest.raises(ConfigError, match=r"module._target_ is '[\w.]+\.DiffusionModule' in the checkpoint"):
        check_resume_config(saved, resolved(compose_cfg(latent)), "last.ckpt")
    current = resolved(compose_cfg(["data=swissroll3d", "+model.sigma_scale=0.25"]))  # the MLP of those days
    # as saved before module was a group and before configs left defaults to the constructors, read as today's

    def older(n_samples: int) -> dict:
        saved = {k: v for k, v in current.items() if k != "module"}
        saved["data"] = {**current["data"], "num_workers": 0,
                         "dataset": {**current["data"]["dataset"], "n_samples": n_samples}}
        return upgrade_checkpoint({"config": saved, "state_dict": {}})["config"]

    assert check_resume_config(older(10000), current, "last.ckpt") == {}
    with pytest.raises(ConfigError, match="data.dataset.n_samples is 5000 in the checkpoint but 10000 now"):
        check_resume_config(older(5000), current, "last.ckpt")


def test_ckpt_path_last_resumes_the_run_directory(compose_cfg, tmp_path):
    train(compose_cfg([*FAST, "trainer.max_steps=10"]))
    train(compose_cfg([*FAST, "trainer.max_steps=20", "ckpt_path=last"]))
    assert global_step(tmp_path / "checkpoints/last.ckpt") == 20


def test_wandb_offline_run_holds_metrics_and_images(compose_cfg, tmp_path):
    import wandb

    train(compose_cfg([*FAST, "logger=wandb", "logger.wandb.offline=true"]))
    wandb.teardown()  # stops wandb's writer process: its files are complete once this returns
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert len(runs) == 1, files
    log = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"train/loss" in log and b"val/swd" in log, (len(log), files)
    assert list(runs[0].glob("files/media/images/sample/grid_*.png")), files


def test_tensorboard_logger_writes_events(compose_cfg, tmp_path):
    train(compose_cfg([*FAST, "logger=tensorboard"]))
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_two_job_multirun_writes_one_directory_per_job(tmp_path):
    run_script("train.py", ["-m", "schedule=loglinear,ddpm", *FAST, "trainer.max_steps=10",
                            f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, one_thread=False, check=True)
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1"]
    for j in jobs:
        assert (tmp_path / "sweep" / j / "checkpoints" / "last.ckpt").is_file()
        assert OmegaConf.load(tmp_path / "sweep" / j / "config.yaml").schedule._target_.endswith(
            ["ScheduleLogLinear", "ScheduleDDPM"][int(j)])


def test_optuna_sweep_runs_trials_and_minimizes_the_metric(tmp_path):
    run_script("train.py", ["hparams_search=optuna", "hydra.sweeper.n_trials=2",
                            "hydra.sweeper.sampler.n_startup_trials=2", *FAST, "trainer.max_steps=10",
                            f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, one_thread=False, check=True)
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    finals = [logged_metrics(job)["val/swd"][-1] for job in jobs]  # what each trial returned: its last val/swd
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml").best_value
    assert len(jobs) == 2 and best == pytest.approx(min(finals)) and finals[0] != finals[1]


def test_package_entry_point_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "diffusion_lab.app.train", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "data:" in r.stdout, r.stderr[-2000:]

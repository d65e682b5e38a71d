"""What reaches the loggers (config, parameter counts, run directory, learning rate), wandb names, the progress bar."""
import contextlib
import csv
import math

import lightning as L
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch import callbacks
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf, open_dict

from diffusion_lab.app.config import CONFIG_DIR
from diffusion_lab.app.train import build, hyperparameters, train
from diffusion_lab.training import LearningRateMonitor, StepProgressBar
from tests.helpers import FAST, compose_train, logged_metrics, run_script


# Linear warmup over 10 steps, then a cosine down to 0 at step 20 (diffusion_lab.training.WarmupCosine).
COSINE = ["lr_scheduler=cosine", "lr_scheduler.warmup_steps=10", "lr_scheduler.total_steps=20"]
SWEEP = "outputs/digits_dit/multirun/2026-11-23_17-30-00"


class BarProbe(L.Callback):
    """Records (global step, bar position, bar total, description) after each batch, once the bar has drawn."""

    seen: list = []

    def on_train_batch_end(self, trainer, *args) -> None:
        bar = trainer.progress_bar_callback.train_progress_bar
        BarProbe.seen.append((trainer.global_step, bar.n, bar.total, bar.desc))


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    """The run directory of a 20-step run (logged every 5 steps, 2 batches a step) with the cosine schedule and the
    progress bar on."""
    out = tmp_path_factory.mktemp("cosine")
    BarProbe.seen.clear()
    train(compose_train([*FAST, *COSINE, "trainer.accumulate_grad_batches=2", "trainer.enable_progress_bar=true",
                         "+callbacks.probe._target_=tests.test_logging.BarProbe"], out))
    return out


def csv_rows(run_dir) -> list[dict]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_hparams_yaml_holds_the_config_parameter_counts_and_run_dir(cosine_run):
    hparams = yaml.safe_load((cosine_run / "csv" / "version_0" / "hparams.yaml").read_text())
    config = OmegaConf.to_container(OmegaConf.load(cosine_run / "config.yaml"))
    assert {k: hparams.get(k) for k in config} == config
    module, _ = build(compose_train([*FAST, *COSINE], cosine_run))
    n = sum(p.numel() for p in module.objective.parameters())
    assert n > 0 and hparams["num_params"] == {"model": {"total": n, "trainable": n},
                                               "module": {"total": n, "trainable": n}}
    assert hparams["run_dir"] == str(cosine_run)


def test_parameter_counts_of_latent_diffusion_cover_the_vae_and_the_stage_trained(tmp_path):
    module, _ = build(compose_train(["module=latent", "data=digits", "data.input_dims=[1,16,16]", "model=unet",
                                     "model.in_dim=4", "model.channels=2", "model.ch=8", "model.ch_mult=[1,2]",
                                     "model.attn_levels=[1]", "module.vae.ch=8", "module.classifier.ch=8"],
                                    tmp_path))
    count = {name: sum(p.numel() for p in getattr(module, name).parameters())
             for name in ("objective", "vae", "classifier")}
    counts = hyperparameters(module, tmp_path)["num_params"]
    assert counts["model"] == {"total": count["objective"], "trainable": 0}  # stage reconstruction trains the VAE
    assert counts["module"] == {"total": sum(count.values()), "trainable": count["vae"]}


def test_train_lr_is_the_schedules_learning_rate_at_each_logged_step(cosine_run):
    rows = csv_rows(cosine_run)
    lr = [(int(r["step"]), float(r["train/lr"])) for r in rows if r["train/lr"]]  # once a step, not once a batch
    base = OmegaConf.load(cosine_run / "config.yaml").optimizer.lr
    # the rate step s trains with: warmup (s + 1) / 10, then 0.5 * (1 + cos(pi * (s - 10) / 10))
    expected = {4: 0.5, 9: 1.0, 14: 0.5 * (1 + math.cos(0.4 * math.pi)), 19: 0.5 * (1 + math.cos(0.9 * math.pi))}
    assert [s for s, _ in lr] == [int(r["step"]) for r in rows if r["train/loss"]] == list(expected)
    assert [v for _, v in lr] == pytest.approx([base * f for f in expected.values()], rel=1e-6)


def test_progress_bar_counts_optimizer_steps_to_max_steps_redrawn_every_log_interval(cosine_run):
    assert [s for s, *_ in BarProbe.seen] == [(i + 1) // 2 for i in range(40)]  # 2 batches an optimizer step
    assert {(total, desc) for _, _, total, desc in BarProbe.seen} == {(20, "train: ")}  # not `Epoch 0/-2`
    assert [n for _, n, _, _ in BarProbe.seen] == [5 * (s // 5) for s, *_ in BarProbe.seen]


def test_progress_bar_follows_the_trainer_settings(compose_cfg):
    on = compose_cfg(["trainer.log_every_n_steps=7"])
    bars = [c for c in map(instantiate, on.callbacks.values()) if isinstance(c, callbacks.ProgressBar)]
    assert [type(b) for b in bars] == [StepProgressBar] and bars[0].refresh_rate == 7
    off = compose_cfg(["trainer.enable_progress_bar=false"])
    built = [instantiate(c) for c in off.callbacks.values()]
    assert not any(isinstance(c, callbacks.ProgressBar) for c in built)
    # Lightning refuses a bar callback when enable_progress_bar is false
    assert instantiate(off.trainer, callbacks=built, logger=False).progress_bar_callback is None
    default = compose_cfg(["callbacks=none"])  # Lightning's own bar
    assert instantiate(default.trainer, logger=False).progress_bar_callback is not None


def test_lr_monitor_without_loggers_is_skipped_where_lightnings_refuses():
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_checkpointing=False)
    with pytest.raises(MisconfigurationException, match="no logger"):
        callbacks.LearningRateMonitor().on_train_start(trainer)
    LearningRateMonitor().on_train_start(trainer)  # logger=none with callbacks=default


def test_every_logger_gets_the_config_and_train_lr_is_constant_without_a_schedule(compose_cfg, tmp_path):
    import wandb
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    train(compose_cfg([*FAST, "~lr_scheduler", "optimizer.lr=0.002", "logger=[csv,tensorboard,wandb]",
                       "logger.wandb.offline=true"]))
    wandb.teardown()  # its files are complete once this returns
    assert logged_metrics(tmp_path)["train/lr"] == [0.002] * 4
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tab = HParamsPluginData.FromString(events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content)
    hparams = tab.session_start_info.hparams  # TensorBoard's hparams tab: the config flattened, lists as strings
    assert hparams["optimizer/lr"].number_value == 0.002 and hparams["run_dir"].string_value == str(tmp_path)
    assert hparams["num_params/model/total"].number_value > 0
    assert hparams["model/hidden_dims"].string_value.startswith("[")
    run = next((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    assert f"train {tmp_path.name}".encode() in run  # the run's name: the task and the run directory's name
    assert b'"lr":0.002' in run and b"num_params" in run and b"run_dir" in run  # its config panel


@contextlib.contextmanager
def hydra_job(mode: RunMode, overrides: list[str]):
    """Hydra's runtime set as in a job (job 3 of a multirun swept into SWEEP); yields the job's config."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode, cfg.hydra.job.num, cfg.hydra.sweep.dir = mode, 3, SWEEP
        cfg.paths.output_dir = f"{SWEEP}/3" if mode == RunMode.MULTIRUN else "outputs/digits_dit/2026-11-23_17-30-00"
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = previous


def test_wandb_names_a_multirun_job_by_number_and_overrides_and_groups_it_by_sweep():
    with hydra_job(RunMode.MULTIRUN, ["experiment=digits_dit", "logger=wandb", "optimizer.lr=0.01"]) as cfg:
        assert cfg.logger.wandb.name == "digits_dit #3 experiment=digits_dit,logger=wandb,optimizer.lr=0.01"
        assert cfg.logger.wandb.group == "2026-11-23_17-30-00"


def test_wandb_names_a_single_run_by_its_directory_with_no_group(tmp_path):
    with hydra_job(RunMode.RUN, ["experiment=digits_dit", "logger=wandb"]) as cfg:
        assert cfg.logger.wandb.name == "digits_dit 2026-11-23_17-30-00" and cfg.logger.wandb.group is None
    cfg = compose_train(["logger=wandb"], tmp_path / "train" / "2026-11-23_17-30-00")  # compose API: no Hydra runtime
    assert cfg.logger.wandb.name == "train 2026-11-23_17-30-00" and cfg.logger.wandb.group is None
    assert cfg.logger.wandb.id == compose_train(["logger=wandb", "seed=1"], cfg.paths.output_dir).logger.wandb.id


@pytest.mark.slow
def test_multirun_jobs_log_to_wandb_named_by_overrides_in_one_group(tmp_path):
    run_script("train.py", ["-m", "schedule=loglinear,ddpm", "logger=wandb", *FAST, "trainer.max_steps=2",
                            f"hydra.sweep.dir={tmp_path}/lr_sweep"], cwd=tmp_path, one_thread=False, check=True)
    for job, schedule in enumerate(["loglinear", "ddpm"]):
        run = next((tmp_path / "lr_sweep" / str(job) / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        assert f"train #{job} ".encode() in run and f"schedule={schedule}".encode() in run and b"lr_sweep" in run

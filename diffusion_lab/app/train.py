"""Train a diffusion model from the Hydra config: `python train.py model=dit data=fashion_mnist`.

Also `python -m diffusion_lab.app.train ...` and the `diffusion-lab-train` command. Composes configs/train.yaml,
instantiates every group and runs Lightning's Trainer; returns the metric named by `optimized_metric` for sweeps.
"""
import signal
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.app.config import CONFIG_DIR, check_plugins, quick_help, report_user_errors
from diffusion_lab.errors import ConfigError

# torch and Lightning are imported when a run starts, so that `train.py --help` answers at once.


def build(cfg: DictConfig):
    """The LightningModule and DataModule of a composed config: the model's parts by `build_model` (the builder that
    sampling and evaluation use too), the training-only objects by Hydra's instantiate."""
    from hydra.utils import instantiate

    from diffusion_lab.build import LATENT_PARTS, build_model

    config = OmegaConf.to_container(cfg, resolve=True)
    model = build_model(config)
    datamodule = instantiate(cfg.data)
    latent = {p: getattr(model, p) for p in LATENT_PARTS if getattr(model, p) is not None}
    # Built objects replace the module config's own nodes (a latent module's vae and classifier); the config stays
    # a plain dict (_convert_) that Hydra does not instantiate (_recursive_).
    module = instantiate(cfg.module, _recursive_=False, _convert_="all", objective=model.objective,
                         schedule=model.schedule, sampler=model.sampler, guidance=model.guidance,
                         optimizer=instantiate(cfg.optimizer), train_config=config, **latent,
                         lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None)
    check_input_shape(module, datamodule)
    return module, datamodule


def check_input_shape(module, datamodule) -> None:
    """Refuses, in one line naming the key, a module whose first network does not take the data's shape (the VAE
    for latent diffusion, which checks the denoiser against its latents itself; else the denoiser), or a
    conditional network on data of other classes."""
    from diffusion_lab.training import LatentDiffusionModule

    data = list(datamodule.input_dims)
    if isinstance(module, LatentDiffusionModule):
        if list(module.vae.input_dims) != data:
            raise ConfigError(f"module.vae: VAE takes images of shape {list(module.vae.input_dims)} but data gives "
                              f"{data}; module.vae.channels and module.vae.in_dim must match data.input_dims")
    elif list(module.objective.input_dims) != data:
        raise ConfigError(f"model: {type(module.objective.net).__name__} takes inputs of shape "
                          f"{list(module.objective.input_dims)} but data gives {data}; pick a model for this data "
                          "(e.g. model=dit for images)")
    classes = module.objective.num_classes
    if classes and classes != datamodule.num_classes:
        has = f"{datamodule.num_classes} classes" if datamodule.num_classes else "no labels"
        raise ConfigError(f"model: num_classes={classes} but the data has {has}; a conditional model takes the "
                          "data's labels: model.num_classes=${data.num_classes}")


def available_memory(accelerator: str) -> tuple[str, int | None]:
    """(device name, free bytes) of what trains: CUDA's free memory, or for CPUs the smaller of the kernel's
    MemAvailable and the cgroup's remaining limit (containers, SLURM); None when it cannot be read."""
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "the GPU", torch.cuda.mem_get_info()[0]
    if accelerator not in ("cpu", "auto"):
        return accelerator, None
    free = []
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free.append(int(meminfo["MemAvailable"].split()[0]) * 1024)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, KeyError, ValueError):
        pass
    return "this machine", min(free) if free else None


def emulated_bf16_warning(cfg: DictConfig) -> str | None:
    """A warning for bf16 precision on a device that only emulates bf16 (an AVX2 CPU: steps about 20x slower)."""
    from diffusion_lab.machine import native_bf16

    precision = str(cfg.trainer.get("precision"))
    if not precision.startswith("bf16") or native_bf16(str(cfg.trainer.get("accelerator", "auto"))):
        return None
    return (f"warning: trainer.precision={precision} on a device without native bf16 (no AVX512-BF16 or AMX on this "
            "CPU): bf16 is emulated and a step can be 20 times slower than 32-true; speed=fast picks 32-true here")


def check_memory(cfg: DictConfig, net) -> None:
    """Refuses in one line, before the first batch is allocated, a run whose training step needs more memory than
    the device has free (models.memory.training_memory's lower bound, so a refused run would not fit; a run just
    under it may still run out); memory_check=false skips it."""
    from diffusion_lab.models.memory import training_memory

    device, free = available_memory(str(cfg.trainer.accelerator))
    if free is None:
        return
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) and device == "this machine" else 1
    ema = (cfg.get("callbacks") or {}).get("ema")
    averages = 1 + len(ema.get("power_stds") or []) if ema else 0  # the EMA and post-hoc EMA's profiles
    need = training_memory(net, int(cfg.data.batch_size), averages=averages)
    if need.total * devices > free:
        gib = 2 ** 30
        raise ConfigError(
            f"this run needs at least {need.total * devices / gib:.1f} GiB ({need.num_params / 1e6:.1f}M parameters: "
            f"{need.state / gib:.1f} GiB of weights, gradients, optimizer state"
            f"{f' and {averages} weight averages' if averages else ''}, "
            f"{need.activations / gib:.1f} GiB of activations at data.batch_size={cfg.data.batch_size}"
            f"{f', x{devices} processes' if devices > 1 else ''}) but {device} has {free / gib:.1f} GiB free; "
            "lower data.batch_size, use a smaller model or a GPU (the experiment file says what it is sized for), "
            "or set memory_check=false to train anyway")


def train(cfg: DictConfig) -> float | None:
    """Builds everything from cfg and fits; returns cfg.optimized_metric from the final metrics."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from diffusion_lab.app.config_checks import check_config
    from diffusion_lab.app.runs import RunDirectory, check_resume_config, resolve_ckpt_path
    from diffusion_lab.checkpoints import load_weights, read_checkpoint, weights
    from diffusion_lab.training import AtomicCheckpointIO
    from diffusion_lab.training.environment import skip_nvml_cuda_check

    check_config(cfg)
    # DiffusionDataModule restores the data position itself (state_dict), which Lightning cannot see.
    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")  # inside Lightning, not ours
    skip_nvml_cuda_check()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    module, datamodule = build(cfg)
    if cfg.get("memory_check", True):
        check_memory(cfg, module.objective.net)
    if warning := emulated_bf16_warning(cfg):
        print(warning, file=sys.stderr)
    ckpt = read_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt and "posthoc_ema" in ckpt:
        raise ConfigError(f"ckpt_path={ckpt_path}: a post-hoc EMA reconstruction holds weights to sample, not a "
                          "training state; resume from the run's checkpoints/last.ckpt")
    if ckpt:  # refuse a corrupt or foreign checkpoint, or a change of model, data or schedule, in one line
        check_resume_config(ckpt["config"], module.train_config, ckpt_path)
        load_weights(module.objective, weights(ckpt, "objective"), Path(ckpt_path))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
    if ckpt and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
        trainer.strategy.checkpoint_io.hand_over(ckpt_path, ckpt)  # Lightning restores from it: read once
    if cfg.get("compile"):
        module.objective.net.forward = torch.compile(module.objective.net.forward)
    with RunDirectory(run_dir, ckpt_path, auto=cfg.get("ckpt_path") in ("auto", "last"), writer=trainer.is_global_zero):
        if trainer.is_global_zero:
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
            hparams = hyperparameters(module, run_dir)
            for logger in trainer.loggers:  # wandb's config panel, TensorBoard's hparams tab, CSV's hparams.yaml
                logger.log_hyperparams(hparams)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        finally:
            for logger in trainer.loggers:
                if type(logger).__name__ == "WandbLogger":
                    logger.experiment.finish()  # flush the run (offline runs are then ready for `wandb sync`)
    return optimized_metric(cfg, trainer)


def hyperparameters(module, run_dir: Path) -> dict:
    """What the loggers record of a run: its resolved config, the parameter counts of the denoiser (`model`) and of
    the whole LightningModule (with latent diffusion's VAE and classifier), and the run directory."""
    def counts(net) -> dict[str, int]:
        params = list(net.parameters())
        return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}

    return {**module.train_config, "num_params": {"model": counts(module.objective), "module": counts(module)},
            "run_dir": str(run_dir)}


def optimized_metric(cfg: DictConfig, trainer) -> float | None:
    """cfg.optimized_metric's final value; a sweep that optimizes a metric never logged is a config error.

    `auto` is the first metric of the evaluation callback (callbacks.evaluate), else val/loss.
    """
    from hydra.core.hydra_config import HydraConfig

    from diffusion_lab.training import SampleQuality

    name, metrics = cfg.get("optimized_metric"), trainer.callback_metrics
    if name == "auto":
        quality = [c.metrics[0] for c in trainer.callbacks if isinstance(c, SampleQuality) and c.metrics]
        name = f"val/{quality[0]}" if quality else "val/loss"
    if name and name in metrics:
        return float(metrics[name])
    if name and HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("hparams_search"):
        raise ConfigError(f"optimized_metric={name} was never logged, so the sweep has nothing to optimize; "
                          f"logged: {sorted(metrics)}")
    return None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@report_user_errors
def run(cfg: DictConfig) -> float | None:
    """Hydra's task: trains; a run stopped by a signal exits as that signal would, having saved."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from diffusion_lab.training.checkpointing import RunInterrupted

    try:
        return train(cfg)
    except RunInterrupted as stop:  # the run is saved; exit as a process killed by that signal would, non-zero
        print(stop, file=sys.stderr)
        sys.exit(128 + stop.signum)
    except SIGTERMException:  # Lightning's own handling, when no RunCheckpoint is configured (callbacks=none)
        print("stopped by SIGTERM (no checkpoint callback configured, nothing saved)", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


def main() -> None:
    """The command line: a bare --help answers without composing every config; a missing plugin is one line."""
    if sys.argv[1:] in (["--help"], ["-h"]):
        print(quick_help(__doc__))
        return
    check_plugins(sys.argv[1:])
    run()


if __name__ == "__main__":
    main()

"""Runs of train.py loaded for sampling: the model, sampler and guidance rebuilt from a checkpoint's saved config.

    run = load_run("outputs/.../checkpoints/last.ckpt")        # EMA weights; ema=False for the raw ones
    setup = sampling_setup(run, steps=10, cfg_scale=2.0)       # the checkpoint's sampler with overrides
"""
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_object, instantiate
from torch import nn

from diffusion_lab.core import ClassifierFreeGuidance, Guidance
from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.models.weights import load_weights, model_state, read_checkpoint
from diffusion_lab.sampling import SamplingSetup

SAMPLER_SHORTCUTS = ("steps", "gam", "mu", "eta")
CFG_TARGET = "diffusion_lab.core.ClassifierFreeGuidance"


@dataclass
class Run:
    """A trained denoiser (eval mode) and the resolved train config it was saved with."""

    model: nn.Module
    config: dict
    path: Path


def load_run(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> Run:
    """The denoiser of a train.py checkpoint, rebuilt from its saved config, in eval mode on device."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    config = ckpt["config"]
    try:
        model = instantiate(config["parameterization"], net=instantiate(config["model"]))
    except Exception as err:  # noqa: BLE001 - a config from another version of the code
        while err.__cause__ is not None:  # Hydra wraps the constructor's own error
            err = err.__cause__
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"ckpt={path}: cannot rebuild the model from its saved config ({why})") from None
    load_weights(model, model_state(ckpt, ema, path), path)
    return Run(model=model.to(device).eval(), config=config, path=path)


def sampler_config(base: dict, **shortcuts) -> dict:
    """base (a sampler config) with the shortcuts that are not None set; each must be a setting of that sampler.

    The sampler constructor checks the values. A config saved before EulerSampler existed
    (HeunSampler with second_order) is read as the EulerSampler or HeunSampler it meant.
    """
    cfg = dict(base)
    if "second_order" in cfg and not cfg.pop("second_order"):
        cfg["_target_"] = "diffusion_lab.core.EulerSampler"
    for key, value in shortcuts.items():
        if value is None:
            continue
        if key not in cfg:
            kind = str(cfg.get("_target_", "?")).rsplit(".", 1)[-1]
            settings = [k for k in cfg if k in SAMPLER_SHORTCUTS]
            raise ConfigError(f"{key}={value}: the sampler {kind} has no {key} (its settings: {settings}); "
                              "pick one that has it, e.g. sampler=generalized for gam/mu, sampler=ddim for eta")
        cfg[key] = value
    return cfg


def build_guidance(base: dict | None, cfg_scale: float | None, num_classes: int) -> Guidance:
    """The guidance of config base with its scale set to cfg_scale; the model must be conditional.

    A plain Guidance (configs/guidance/none.yaml), {} or None (older checkpoints) is no guidance;
    cfg_scale turns classifier-free guidance on there.
    """
    cfg = dict(base or {})
    if "_target_" in cfg and get_object(cfg["_target_"]) is Guidance:
        cfg = {}
    if cfg_scale is not None:
        if not num_classes:
            raise ConfigError(f"cfg_scale={cfg_scale}: the checkpoint's model is unconditional (num_classes=0); "
                              "classifier-free guidance needs a model trained with conditional=true")
        cfg = {"_target_": CFG_TARGET, **cfg, "scale": cfg_scale}
    guidance = instantiate(cfg) if cfg else Guidance()
    if isinstance(guidance, ClassifierFreeGuidance) and not num_classes:
        raise ConfigError("guidance=cfg needs a conditional model; this checkpoint's model has num_classes=0")
    return guidance


def sampling_setup(run: Run, sampler: dict | None = None, schedule: dict | None = None, guidance: dict | None = None,
                   cfg_scale: float | None = None, **shortcuts) -> SamplingSetup:
    """The checkpoint's schedule, sampler and guidance, each replaced by the given config when not None.

    shortcuts (steps, gam, mu, eta) set single settings of the sampler; cfg_scale sets the
    classifier-free guidance scale (turning guidance on for a conditional model).
    """
    unknown = set(shortcuts) - set(SAMPLER_SHORTCUTS)
    if unknown:
        raise ConfigError(f"unknown sampler settings {sorted(unknown)}; allowed: {list(SAMPLER_SHORTCUTS)}")
    cfg = run.config
    num_classes = getattr(run.model, "num_classes", 0)
    guide = build_guidance(cfg.get("guidance") if guidance is None else guidance, cfg_scale, num_classes)
    return SamplingSetup(model=run.model, schedule=instantiate(schedule or cfg["schedule"]),
                         sampler=instantiate(sampler_config(sampler or cfg["sampler"], **shortcuts)), guidance=guide)


def build_dataset(config: dict):
    """The training data set named in a saved train config (torch Dataset, no DataModule)."""
    return instantiate(config["data"]["dataset"])


def setup_overrides(cfg) -> dict:
    """The keyword arguments of `sampling_setup` from a sample/evaluate config: groups and shortcuts, None = keep."""
    from omegaconf import OmegaConf

    def group(key: str) -> dict | None:
        value = cfg.get(key)
        return None if value is None else OmegaConf.to_container(value, resolve=True)

    shortcuts = {k: cfg.get(k) for k in SAMPLER_SHORTCUTS}
    return dict(sampler=group("sampler"), schedule=group("schedule"), guidance=group("guidance"),
                cfg_scale=cfg.get("cfg_scale"), **shortcuts)


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when available, else cpu; ConfigError for a device this machine lacks.

    Under torchrun (LOCAL_RANK set), `auto` and a bare `cuda` mean cuda:LOCAL_RANK, so that the processes
    of a node each take their own GPU; an explicit index (`cuda:1`) is kept as given.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device here; use device=cpu or device=auto")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", _local_gpu(os.environ["LOCAL_RANK"]))
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA devices (0 to "
                          f"{torch.cuda.device_count() - 1})")
    return device


def _local_gpu(local_rank: str) -> int:
    """The GPU index of torchrun's process LOCAL_RANK on its node; 0 where each process sees a single GPU."""
    try:
        rank = int(local_rank)
    except ValueError:
        raise ConfigError(f"LOCAL_RANK={local_rank!r} must be an integer (torchrun sets it)") from None
    count = torch.cuda.device_count()
    if count == 1:  # e.g. SLURM or CUDA_VISIBLE_DEVICES giving each process its own single GPU
        return 0
    if not 0 <= rank < count:
        raise ConfigError(f"LOCAL_RANK={rank} but this node has {count} GPUs: start at most {count} processes per "
                          f"node (torchrun --nproc_per_node={count}) or set device=cuda:INDEX")
    return rank

"""What scripts/sample.py and scripts/evaluate.py share: a checkpoint's model with the command line's sampler,
schedule, guidance and precision, on the device asked for.

    model = load_model(checkpoint_path(cfg), ema=cfg.ema, device=resolve_device(cfg.device), precision=cfg.precision)
    model = with_overrides(model, **overrides(cfg))      # sampler=ddim steps=10 cfg_scale=2 classifier_scale=3 ...
"""
import inspect
import os

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.build import check_guidance, instantiate, locate
from diffusion_lab.core import ClassifierFreeGuidance, ClassifierGuidance, Guidance
from diffusion_lab.errors import ConfigError
from diffusion_lab.sampling import DiffusionModel

METHOD_SETTINGS = ("gam", "mu", "eta")  # command-line shortcuts for settings of the sampler's function
CFG_TARGET = "diffusion_lab.core.ClassifierFreeGuidance"


def sampler_config(base: dict, steps: int | None = None, **settings) -> dict:
    """A sampler config with steps and the given settings of its function set (None: keep); each setting must be
    one the function takes."""
    cfg = {**base, "method": dict(base["method"])}
    if steps is not None:
        cfg["steps"] = steps
    function = locate(cfg["method"]["_target_"])
    takes = [p for p in inspect.signature(function).parameters if p in METHOD_SETTINGS]
    for key, value in settings.items():
        if value is None:
            continue
        if key not in takes:
            raise ConfigError(f"{key}={value}: the sampler's {function.__name__} has no {key} (its settings among "
                              f"{list(METHOD_SETTINGS)}: {takes}); pick one that has it, e.g. sampler=generalized for "
                              "gam/mu, sampler=ddim for eta")
        cfg["method"][key] = value
    return cfg


def guidance_config(base: dict | None, cfg_scale: float | None = None, guidance_scale: float | None = None) -> dict | None:
    """The guidance config base with classifier-free guidance at cfg_scale, or with its own scale set to
    guidance_scale (None: keep base)."""
    if cfg_scale is not None:
        base = base if base and locate(base["_target_"]) is ClassifierFreeGuidance else {"_target_": CFG_TARGET}
        base = {**base, "scale": cfg_scale}
    if guidance_scale is None:
        return base
    target = locate(base["_target_"]) if base else None
    if target is None or "scale" not in inspect.signature(target).parameters:
        name = getattr(target, "__name__", "none")
        raise ConfigError(f"guidance_scale={guidance_scale}: the guidance ({name}) has no scale; pick guidance=cfg or "
                          "guidance=autoguidance guidance.guide=PATH")
    return {**base, "scale": guidance_scale}


def classifier_guidance(model: DiffusionModel, base: Guidance, scale: float | None) -> Guidance:
    """base under guidance by the model's classifier at scale (Dhariwal & Nichol 2021); None or 0: base."""
    if scale is None or scale == 0:
        return base
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:  # `not >` also catches nan
        raise ConfigError(f"classifier_scale={scale} must be a number >= 0 (0 or null: no classifier guidance)")
    if model.classifier is None:
        raise ConfigError(f"classifier_scale={scale}: the checkpoint has no trained classifier; classifier guidance "
                          "needs a latent-diffusion checkpoint of stage joint or classifier (experiment=mnist_latent)")
    return ClassifierGuidance(model.classifier, float(scale), base=base)


def with_overrides(model: DiffusionModel, sampler: dict | None = None, schedule: dict | None = None,
                   guidance: dict | None = None, cfg_scale: float | None = None,
                   guidance_scale: float | None = None, classifier_scale: float | None = None,
                   steps: int | None = None, **settings) -> DiffusionModel:
    """model with the given sampler, schedule and guidance configs (None: the checkpoint's), steps and settings of
    the sampler's function (gam, mu, eta), a classifier-free guidance scale (which turns it on), the scale of the
    guidance in use, and classifier guidance by a latent run's classifier (labels 0..K-1 are then drawn even for an
    unconditional denoiser)."""
    config = model.config
    sampler = instantiate(sampler_config(sampler or config["sampler"], steps, **settings), "sampler")
    guide = instantiate(guidance_config(guidance if guidance is not None else config.get("guidance"), cfg_scale,
                                        guidance_scale), "guidance") or Guidance()
    check_guidance(guide, model.objective, f"cfg_scale={cfg_scale}" if cfg_scale is not None else "guidance")
    return model.replace(sampler=sampler, schedule=instantiate(schedule, "schedule") if schedule else model.schedule,
                         guidance=classifier_guidance(model, guide, classifier_scale))


def overrides(cfg: DictConfig) -> dict:
    """The keyword arguments of `with_overrides` from a sample/evaluate config: groups and shortcuts, None = keep."""
    def group(key: str) -> dict | None:
        value = cfg.get(key)
        return None if value is None else OmegaConf.to_container(value, resolve=True)

    return dict(sampler=group("sampler"), schedule=group("schedule"), guidance=group("guidance"),
                cfg_scale=cfg.get("cfg_scale"), guidance_scale=cfg.get("guidance_scale"),
                classifier_scale=cfg.get("classifier_scale"), steps=cfg.get("steps"),
                **{k: cfg.get(k) for k in METHOD_SETTINGS})


def build_dataset(config: dict):
    """The training data set named in a saved train config (torch Dataset, no DataModule); None for an exported
    model, whose config keeps only the data's name and shape."""
    dataset = (config.get("data") or {}).get("dataset")
    return instantiate(dataset, "data.dataset") if isinstance(dataset, dict) else None


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

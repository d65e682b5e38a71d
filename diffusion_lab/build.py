"""Objects from configs: the one builder that train, sample, evaluate and the scripts share, and `load_model`.

    model = build_model(config)            # a DiffusionModel from a resolved train config (a plain dict)
    model = load_model("outputs/.../checkpoints/last.ckpt")    # the same, with the run's weights
    x = model.sample(16, seed=0)

A config node with `_target_` names a class or function and its keys are the arguments (`_partial_: true` binds
them without calling). `instantiate` builds such nodes from plain dicts without Hydra, so a trained model loads in
a plain Python session; Hydra's own instantiate builds the training-only objects (data module, trainer, callbacks).
A constructor's error is re-raised naming the config key it came from.
"""
import functools
import importlib
import logging
from pathlib import Path
from typing import Any

import torch

from diffusion_lab.checkpoints import PARTS_KEY, has_ema, load_weights, read_checkpoint, weights
from diffusion_lab.core import ClassifierFreeGuidance, Guidance
from diffusion_lab.errors import CheckpointError, ConfigError, DiffusionLabError, first_line
from diffusion_lab.sampling import DiffusionModel, autocast_dtype

log = logging.getLogger(__name__)
RESERVED = ("_target_", "_partial_", "_recursive_", "_convert_")
LATENT_PARTS = ("vae", "classifier")  # built from the config's module node, as LatentDiffusionModule takes them
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


def locate(path: str) -> Any:
    """The object a dotted path names: `diffusion_lab.core.PredV`, `torch.optim.AdamW`."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"_target_: cannot find {path!r} ({first_line(err)})") from None


def instantiate(node: Any, key: str = "", **kwargs) -> Any:
    """node built: a `_target_` node called with its built arguments (kwargs override them), a partial with
    `_partial_: true`; lists and dicts element by element; anything else as it is."""
    if isinstance(node, list):
        return [instantiate(v, f"{key}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    args = {k: instantiate(v, f"{key}.{k}".lstrip(".")) for k, v in node.items() if k not in RESERVED}
    if "_target_" not in node:
        return args
    target, args = locate(node["_target_"]), {**args, **kwargs}
    if node.get("_partial_"):
        return functools.partial(target, **args)
    try:
        return target(**args)
    except DiffusionLabError as err:
        raise type(err)(f"{key}: {first_line(err, 500)}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: {type(err).__name__}: {first_line(err, 500)}") from None


def check_guidance(guidance: Guidance, objective: torch.nn.Module, key: str = "guidance") -> None:
    """Classifier-free guidance needs a label-conditional network; the error names `key`."""
    if isinstance(guidance, ClassifierFreeGuidance) and not getattr(objective, "num_classes", 0):
        raise ConfigError(f"{key}: classifier-free guidance needs a conditional model, and this one has "
                          "num_classes=0 (train one with model.num_classes=${data.num_classes})")


def build_model(config: dict) -> DiffusionModel:
    """The objective (its network inside), schedule, sampler and guidance of a resolved train config, and a latent
    run's VAE and classifier (config["module"]); untrained, in training mode."""
    objective = instantiate(config["objective"], "objective", net=instantiate(config["model"], "model"))
    guidance = instantiate(config.get("guidance"), "guidance") or Guidance()
    check_guidance(guidance, objective)
    module = config.get("module") or {}
    parts = {p: instantiate(module[p], f"module.{p}") for p in LATENT_PARTS if module.get(p)}
    return DiffusionModel(objective, instantiate(config["schedule"], "schedule"),
                          instantiate(config["sampler"], "sampler"), guidance, config=config, **parts)


def trained_parts(ckpt: dict, path: Path) -> list[str]:
    """The parts a checkpoint holds trained weights of; CheckpointError for a latent one whose denoiser never
    trained (stage=reconstruction)."""
    parts = ckpt.get(PARTS_KEY, ["objective"])
    if "objective" not in parts:
        stage = (ckpt["config"].get("module") or {}).get("stage", "?")
        raise CheckpointError(f"ckpt={path}: its denoiser was never trained (latent diffusion stage={stage}, trained "
                              f"parts: {parts}); use a checkpoint of stage diffusion or joint")
    return parts


def load_model(path: str | Path, ema: bool = True, device: str | torch.device = "cpu",
               precision: str | None = "auto") -> DiffusionModel:
    """The DiffusionModel of a train.py checkpoint with its weights, in eval mode on device.

    ema: the objective's EMA weights (a run trained without EMA gives its raw weights, with a warning on the log).
    precision: `auto` samples in the run's training precision (bf16 autocast after bf16-mixed training), or a
    Lightning precision (32-true, bf16-mixed, 16-mixed). A latent run brings its VAE, and its classifier when a
    stage trained it.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    parts = trained_parts(ckpt, path)
    try:
        model = build_model(ckpt["config"])
    except DiffusionLabError as err:  # a config from another version of the code
        raise CheckpointError(f"ckpt={path}: cannot rebuild its model from the saved config ({first_line(err)})") \
            from None
    if ema and not has_ema(ckpt):
        log.warning(f"ckpt={path}: no EMA weights (trained without callbacks.ema); sampling with the raw training "
                    "weights")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} must be one of {list(PRECISIONS)}")
    load_weights(model.objective, weights(ckpt, "objective", ema=ema), path)
    for part in LATENT_PARTS:
        if getattr(model, part) is not None and part in parts:
            load_weights(getattr(model, part), weights(ckpt, part), path)
    if "classifier" not in parts:  # an untrained classifier must not guide
        model.classifier = None
    if precision == "auto":
        precision = (ckpt["config"].get("trainer") or {}).get("precision")
    return model.replace(autocast=autocast_dtype(precision)).to(device)

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

from diffusion_lab.checkpoints import PARTS_KEY, has_ema, load_weights, read_checkpoint, strip_prefixes, weights
from diffusion_lab.core import AutoGuidance, ClassifierFreeGuidance, Guidance
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
    """Classifier-free guidance needs a label-conditional network; an autoguidance guide takes the model's inputs and,
    when conditional, its labels. The error names `key`."""
    classes = getattr(objective, "num_classes", 0)
    if isinstance(guidance, ClassifierFreeGuidance) and not classes:
        raise ConfigError(f"{key}: classifier-free guidance needs a conditional model, and this one has "
                          "num_classes=0 (train one with model.num_classes=${data.num_classes})")
    if isinstance(guidance, AutoGuidance):
        guide = guidance.guide
        if list(guide.input_dims) != list(objective.input_dims):
            raise ConfigError(f"{key}.guide: the guide takes inputs of shape {list(guide.input_dims)}, the model "
                              f"{list(objective.input_dims)}; guide with a model of the same data")
        if guide.num_classes not in (0, classes):
            raise ConfigError(f"{key}.guide: the guide is conditional on {guide.num_classes} classes, the model on "
                              f"{classes}; guide with an unconditional model or one of the same classes")


@functools.cache
def _guide(path: Path, mtime: float, ema: bool) -> torch.nn.Module:
    return load_model(path, ema=ema, precision="32-true").objective


def autoguidance(guide: str, scale: float = 2.0, ema: bool = True) -> AutoGuidance:
    """AutoGuidance by the objective of the checkpoint, exported folder or Hub id `guide` (its EMA weights unless
    ema=false), read once per process however many samplers or grid points use it."""
    path = locate_model(guide).resolve()
    if not path.exists():
        raise ConfigError(f"guide={guide}: no such checkpoint or exported model")
    return AutoGuidance(_guide(path, path.stat().st_mtime, ema), scale)


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


def locate_model(source: str | Path) -> Path:
    """A local checkpoint or exported folder, or a Hugging Face Hub id ("user/repo") fetched through the hub's cache
    (huggingface_hub; offline with HF_HUB_OFFLINE=1 once cached)."""
    path = Path(source)
    if path.exists() or path.suffix == ".ckpt" or str(source).count("/") != 1 or str(source).startswith((".", "/")):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(f"{source}: no such file, and as a Hugging Face Hub id it needs huggingface_hub: "
                          'pip install "diffusion_lab[hub]"') from None
    try:
        return Path(snapshot_download(repo_id=str(source)))
    except Exception as err:  # noqa: BLE001 - the hub's errors for a missing repo, no network, no cache
        raise CheckpointError(f"{source}: no such file, and the Hugging Face Hub has no model of that id here "
                              f"({type(err).__name__}: {first_line(err)})") from None


def load_model(source: str | Path, ema: bool = True, device: str | torch.device = "cpu",
               precision: str | None = "auto") -> DiffusionModel:
    """The DiffusionModel of a train.py checkpoint, an exported folder (diffusion_lab.export) or a Hub id, with its
    weights, in eval mode on device.

    ema: the objective's EMA weights of a checkpoint (a run trained without EMA gives its raw weights, with a
    warning on the log; an exported folder holds the weights it was exported with). precision: `auto` samples in
    the run's training precision (bf16 autocast after bf16-mixed training), or a Lightning precision (32-true,
    bf16-mixed, 16-mixed). A latent run brings its VAE, and its classifier when a stage trained it.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} must be one of {list(PRECISIONS)}")
    path = locate_model(source)
    if path.is_dir():
        from diffusion_lab.export import read_exported

        config, state = read_exported(path)
        parts, part_weights = config["parts"], lambda part: strip_prefixes(state, part + ".")
    else:
        ckpt = read_checkpoint(path)
        config, parts = ckpt["config"], trained_parts(ckpt, path)
        if ema and not has_ema(ckpt):
            log.warning(f"ckpt={path}: no EMA weights (trained without callbacks.ema); sampling with the raw "
                        "training weights")
        part_weights = lambda part: weights(ckpt, part, ema=ema)  # noqa: E731
    try:
        model = build_model(config)
    except DiffusionLabError as err:  # a config from another version of the code
        raise CheckpointError(f"{path}: cannot rebuild its model from the saved config ({first_line(err)})") from None
    load_weights(model.objective, part_weights("objective"), path)
    for part in LATENT_PARTS:
        if getattr(model, part) is not None and part in parts:
            load_weights(getattr(model, part), part_weights(part), path)
    if "classifier" not in parts:  # an untrained classifier must not guide
        model.classifier = None
    if precision == "auto":
        precision = (config.get("trainer") or {}).get("precision")
    return model.replace(autocast=autocast_dtype(precision)).to(device)

"""Runs of train.py loaded for sampling: the model, sampler and guidance rebuilt from a checkpoint's saved config.

    run = load_run("outputs/.../checkpoints/last.ckpt")        # EMA weights (raw if the run kept none); ema=False: raw
    setup = sampling_setup(run, steps=10, cfg_scale=2.0)       # the checkpoint's sampler with overrides

A latent-diffusion checkpoint (module=latent, experiment=mnist_latent) also brings its VAE: the denoiser samples
latents and setup.decode turns them into images; `classifier_scale` guides with its classifier when a stage
trained one (stage=joint or classifier).
"""
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_object, instantiate
from torch import nn

from diffusion_lab.core import ClassifierFreeGuidance, ClassifierGuidance, Guidance
from diffusion_lab.errors import CheckpointError, ConfigError, first_line
from diffusion_lab.models.weights import has_ema, load_weights, model_state, part_state, read_checkpoint
from diffusion_lab.sampling import SamplingSetup, autocast_dtype

SAMPLER_SHORTCUTS = ("steps", "gam", "mu", "eta")
CFG_TARGET = "diffusion_lab.core.ClassifierFreeGuidance"
PARTS_KEY = "latent_parts"  # the parts a latent run trained, written by training.LatentDiffusionModule


@dataclass
class Run:
    """A trained denoiser (eval mode) and the resolved train config it was saved with.

    ema: whether model holds the EMA weights. A latent-diffusion run also has its VAE (the denoiser works on its
    latents), its noise-aware classifier when a stage trained it, and parts: the parts trained (None: not latent).
    """

    model: nn.Module
    config: dict
    path: Path
    ema: bool = False
    vae: nn.Module | None = None
    classifier: nn.Module | None = None
    parts: list[str] | None = None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] from latents z (B, c, h, w), as LatentDiffusionModule.sampling_setup decodes them."""
        return self.vae.decode(z).clamp(-1, 1)


def load_run(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> Run:
    """The denoiser of a train.py checkpoint (and a latent run's VAE and classifier), in eval mode on device.

    ema: the denoiser's EMA weights; for a run trained without EMA (callbacks.ema=null) the raw weights are
    loaded instead, with a one-line note on stderr. A latent checkpoint whose denoiser was never trained
    (stage=reconstruction) is a CheckpointError.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    config = ckpt["config"]
    parts = latent_parts(ckpt, path)
    model = _rebuild(path, "model", config["parameterization"], net=_rebuild(path, "model", config["model"]))
    use_ema = ema and has_ema(ckpt)
    if ema and not use_ema and os.environ.get("RANK", "0") == "0":  # one note, not one per torchrun process
        print(f"note: ckpt={path}: no EMA weights (trained without callbacks.ema); sampling with the raw training "
              "weights", file=sys.stderr)
    load_weights(model, model_state(ckpt, use_ema, path), path)
    run = Run(model=model, config=config, path=path, ema=use_ema, parts=parts)
    for part in ("vae", "classifier") if parts is not None else ():
        if part in parts:
            net = _rebuild(path, f"module.{part}", config["module"][part])
            load_weights(net, part_state(ckpt, part), path)
            setattr(run, part, net)
    for net in (run.model, run.vae, run.classifier):
        if net is not None:
            net.to(device).eval()
    return run


def latent_parts(ckpt: dict, path: Path) -> list[str] | None:
    """The parts a latent-diffusion checkpoint's stages trained (None: not latent); CheckpointError if not samplable."""
    module = ckpt["config"].get("module") or {}
    if PARTS_KEY not in ckpt and "vae" not in module:
        return None
    parts = ckpt.get(PARTS_KEY)
    if not isinstance(parts, list) or "vae" not in module:
        raise CheckpointError(f"ckpt={path}: a latent-diffusion checkpoint without its {PARTS_KEY} list or "
                              "module.vae config; use a last.ckpt written by train.py module=latent")
    if not {"model", "vae"} <= set(parts):
        raise CheckpointError(f"ckpt={path}: its denoiser was never trained (latent diffusion stage="
                              f"{module.get('mode', '?')}, trained parts: {parts}); use a checkpoint of stage "
                              "diffusion or joint")
    return list(parts)


def _rebuild(path: Path, what: str, config: dict, **parts) -> nn.Module:
    """instantiate(config, **parts); CheckpointError naming `what` when the saved config no longer builds."""
    try:
        return instantiate(config, **parts)
    except Exception as err:  # noqa: BLE001 - a config from another version of the code
        while err.__cause__ is not None:  # Hydra wraps the constructor's own error
            err = err.__cause__
        why = first_line(err)
        raise CheckpointError(f"ckpt={path}: cannot rebuild the {what} from its saved config ({why})") from None


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


def classifier_guidance(run: Run, base: Guidance, scale: float | None) -> Guidance:
    """base under classifier guidance by the run's classifier at scale (Dhariwal & Nichol 2021); None or 0: base."""
    if scale is None:
        return base
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:  # `not >=` also catches nan
        raise ConfigError(f"classifier_scale={scale} must be a number >= 0 (0 or null: no classifier guidance)")
    if scale == 0:
        return base
    if run.parts is None:
        raise ConfigError(f"classifier_scale={scale}: ckpt={run.path} is not a latent-diffusion checkpoint; classifier "
                          "guidance needs one whose classifier was trained (experiment=mnist_latent stage=joint)")
    if run.classifier is None:
        raise ConfigError(f"classifier_scale={scale}: the classifier of ckpt={run.path} was never trained (trained "
                          f"parts: {run.parts}); use a checkpoint of stage joint or classifier")
    return ClassifierGuidance(run.classifier, float(scale), base=base)


def sampling_setup(run: Run, sampler: dict | None = None, schedule: dict | None = None, guidance: dict | None = None,
                   cfg_scale: float | None = None, classifier_scale: float | None = None, precision: str = "auto",
                   **shortcuts) -> SamplingSetup:
    """The checkpoint's schedule, sampler and guidance, each replaced by the given config when not None.

    shortcuts (steps, gam, mu, eta) set single settings of the sampler; cfg_scale sets the
    classifier-free guidance scale (turning guidance on for a conditional model); classifier_scale > 0
    adds classifier guidance by a latent run's classifier on top (labels 0..K-1 then, even for an
    unconditional denoiser). A latent run's setup decodes the sampled latents to images. precision: `auto` samples
    in the run's training precision (bf16 autocast after bf16-mixed training), or a Lightning precision setting
    (32-true, bf16-mixed, 16-mixed).
    """
    unknown = set(shortcuts) - set(SAMPLER_SHORTCUTS)
    if unknown:
        raise ConfigError(f"unknown sampler settings {sorted(unknown)}; allowed: {list(SAMPLER_SHORTCUTS)}")
    cfg = run.config
    num_classes = getattr(run.model, "num_classes", 0)
    guide = build_guidance(cfg.get("guidance") if guidance is None else guidance, cfg_scale, num_classes)
    return SamplingSetup(model=run.model, schedule=instantiate(schedule or cfg["schedule"]),
                         sampler=instantiate(sampler_config(sampler or cfg["sampler"], **shortcuts)),
                         guidance=classifier_guidance(run, guide, classifier_scale),
                         decode=None if run.vae is None else run.decode, autocast=sampling_precision(run, precision))


PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


def sampling_precision(run: Run, precision: str) -> torch.dtype | None:
    """The autocast dtype of sampling: `auto` is the run's training precision (trainer.precision of its config)."""
    if str(precision) not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} must be one of {list(PRECISIONS)}")
    if precision == "auto":
        precision = run.config.get("trainer", {}).get("precision")
    return autocast_dtype(precision)


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
                cfg_scale=cfg.get("cfg_scale"), classifier_scale=cfg.get("classifier_scale"),
                precision=cfg.get("precision", "auto"), **shortcuts)


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

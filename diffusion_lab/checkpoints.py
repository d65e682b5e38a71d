"""Checkpoints on disk: read with one-line errors, upgraded from earlier layouts, weights loaded by part.

    ckpt = read_checkpoint("outputs/.../checkpoints/last.ckpt")      # today's layout, whatever wrote it
    load_weights(objective, weights(ckpt, "objective", ema=True), path)  # EMA when the run kept one
    load_weights(vae, weights(ckpt, "vae"), path)                        # a latent run's other parts

A checkpoint holds Lightning's keys, the LightningModule's `state_dict` (parts prefixed `objective.`, `vae.`,
`classifier.`), `ema_state_dict` (the objective's EMA weights, unprefixed) and `config` (the resolved train config).
`upgrade_checkpoint` rewrites what earlier versions wrote, one function per change, so every reader sees one layout.
"""
from pathlib import Path

import torch
from torch import nn

from diffusion_lab.errors import CheckpointError, first_line

PREFIXES = ("module.", "_orig_mod.")  # added by DDP / DataParallel and torch.compile
PARTS_KEY = "latent_parts"  # the parts a latent-diffusion run has trained (training.LatentDiffusionModule)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at path, upgraded to today's layout; CheckpointError if it is missing, unreadable or
    not from diffusion_lab."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt={path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a truncated or foreign file
        raise CheckpointError(f"ckpt={path}: cannot read the file, it is truncated or not a torch checkpoint "
                              f"({first_line(err)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt={path}: not a diffusion_lab checkpoint (no saved config or state_dict); "
                              "use a .ckpt written by train.py")
    return upgrade_checkpoint(ckpt)


def strip_prefixes(state: dict, prefix: str = "") -> dict:
    """Keys under `prefix` with it and any `module.` / `_orig_mod.` removed; other keys dropped."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        out[key.replace("._orig_mod.", ".")] = value
    return out


def has_ema(ckpt: dict) -> bool:
    """Whether the checkpoint holds EMA weights of the objective (a run trained with callbacks.ema)."""
    return "ema_state_dict" in ckpt


def weights(ckpt: dict, part: str, ema: bool = False) -> dict:
    """The weights of the LightningModule's submodule `part` (objective, vae, classifier): the objective's EMA
    average when ema and the run kept one, else the raw training weights."""
    if ema and part == "objective" and has_ema(ckpt):
        return strip_prefixes(ckpt["ema_state_dict"])
    return strip_prefixes(ckpt["state_dict"], part + ".")


def load_weights(model: nn.Module, state: dict, path: Path) -> None:
    """Loads state into model; CheckpointError naming the first mismatch when the checkpoint is of another model."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    name = type(getattr(model, "net", model)).__name__
    if shapes:
        k = shapes[0]
        raise CheckpointError(f"ckpt={path}: weights do not fit {name} built from its config: {k} has shape "
                              f"{list(state[k].shape)} in the file, {list(own[k].shape)} in the model "
                              f"({len(shapes)} mismatched)")
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(f"ckpt={path}: weights do not fit {name} built from its config: {detail} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    model.load_state_dict(state)


# Earlier layouts, oldest first. Each function rewrites a checkpoint in place (Lightning's loading keeps the dict it
# hands to on_load_checkpoint), returns it, and leaves today's layout as it is.

PREDICTIONS = {"eps": "PredEps", "x0": "PredX0", "v": "PredV", "flow": "PredFlow", "edm": "PredEDM"}


def _objective_from_parameterization(ckpt: dict) -> dict:
    """Before issue 27: `parameterization` built a `Denoiser(prediction=..., loss_weight='uniform' | 'min_snr' |
    'edm', snr_gamma, sigma_data)` held as the module's `model`."""
    config = ckpt["config"]
    if "parameterization" not in config:
        return ckpt
    old = config.pop("parameterization")
    prediction, sigma_data = old.get("prediction", "eps"), old.get("sigma_data", 0.5)
    new = {"_target_": f"diffusion_lab.core.{PREDICTIONS[prediction]}"}
    if prediction in ("eps", "x0", "v"):
        new["scaled_input"] = old.get("scaled_input", False)
    if prediction == "edm":
        new["sigma_data"] = sigma_data
    weight = old.get("loss_weight", "uniform")
    if weight == "min_snr":
        new["loss_weight"] = {"_target_": "diffusion_lab.core.MinSNRWeight", "gamma": old.get("snr_gamma", 5.0)}
    elif weight == "edm":
        new["loss_weight"] = {"_target_": "diffusion_lab.core.EDMWeight", "sigma_data": sigma_data}
    new["train_sigmas"] = old.get("train_sigmas")
    config["objective"] = new
    ckpt["state_dict"] = {("objective." + k[len("model."):] if k.startswith("model.") else k): v
                          for k, v in ckpt["state_dict"].items()}
    if isinstance(ckpt.get(PARTS_KEY), list):
        ckpt[PARTS_KEY] = sorted("objective" if p == "model" else p for p in ckpt[PARTS_KEY])
    return ckpt


CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
SAMPLER_CLASSES = {  # class -> (function, its settings, the class's default steps)
    "GeneralizedSampler": ("sample_generalized", ("gam", "mu"), 20), "DDIMSampler": ("sample_ddim", ("eta",), 50),
    "DDPMSampler": ("sample_ddpm", (), 20), "EulerSampler": ("sample_euler", CHURN, 20),
    "HeunSampler": ("sample_heun", CHURN, 20), "DPMSolverSampler": ("sample_dpmpp", ("order", "sde"), 20)}


def _sampler_from_class(ckpt: dict) -> dict:
    """Before issue 27: a Sampler subclass per function restated its settings (GeneralizedSampler(steps, gam, mu,
    schedule), ...); a HeunSampler with second_order=false was Euler."""
    config, old = ckpt["config"], ckpt["config"].get("sampler") or {}
    name = str(old.get("_target_", "")).rsplit(".", 1)[-1]
    if name not in SAMPLER_CLASSES:
        return ckpt
    if name == "HeunSampler" and not old.get("second_order", True):
        name = "EulerSampler"
    function, settings, steps = SAMPLER_CLASSES[name]
    method = {"_target_": f"diffusion_lab.core.{function}", "_partial_": True, **{k: old[k] for k in settings if k in old}}
    config["sampler"] = {"_target_": "diffusion_lab.core.Sampler", "steps": old.get("steps", steps),
                         "method": method, "schedule": old.get("schedule")}
    return ckpt


MODULE_KEYS = ("seed", "num_samples", "nonfinite", "max_skipped_steps")  # top-level keys the module config now names


def _module_names_its_settings(ckpt: dict) -> dict:
    """Before issue 27: the module config was a partial that train.py called with the top-level seed, conditional,
    num_samples, nonfinite and max_skipped_steps (none at all before the module was a config group); a latent run's
    stage was the module's `mode`; the data module took `labels` (conditional). Conditioning is now the network's
    num_classes alone, which the saved config already holds."""
    config = ckpt["config"]
    module = config.setdefault("module", {"_target_": "diffusion_lab.training.DiffusionModule", "_partial_": True})
    if not module.pop("_partial_", False):
        return ckpt
    if "mode" in module:
        module["stage"] = module.pop("mode")
    module.update({k: config[k] for k in MODULE_KEYS if k in config})
    config.pop("conditional", None)
    (config.get("data") or {}).pop("labels", None)
    return ckpt


def _unet_attention_by_level(ckpt: dict) -> dict:
    """Before issue 27: Unet took attn_resolutions (feature-map sizes) instead of attn_levels (levels of ch_mult)."""
    model = ckpt["config"].get("model") or {}
    if "attn_resolutions" in model:
        sizes = [model["in_dim"] // 2**k for k in range(len(model.get("ch_mult", (1, 1, 2))))]
        model["attn_levels"] = [sizes.index(r) for r in model.pop("attn_resolutions")]
    return ckpt


def _toy_mlp_features(ckpt: dict) -> dict:
    """Before issue 28: the toy MLPs' sigma features were (sin, cos) of log(sigma)/4 (smalldiffusion's are of
    log(sigma)/2), and ConditionalMLP's label embedding had no MLP after it."""
    model = ckpt["config"].get("model") or {}
    name = str(model.get("_target_", "")).rsplit(".", 1)[-1]
    if name in ("TimeInputMLP", "ConditionalMLP") and "sigma_scale" not in model:
        model["sigma_scale"] = 0.25
        if name == "ConditionalMLP":
            model["label_mlp"] = False
    return ckpt


# (the layout each upgrade leads to, the upgrade); a checkpoint records its layout under LAYOUT_KEY (none: 0).
UPGRADES = ((1, _objective_from_parameterization), (1, _sampler_from_class), (1, _module_names_its_settings),
            (1, _unet_attention_by_level), (2, _toy_mlp_features))
LAYOUT_KEY, LAYOUT = "diffusion_lab_layout", max(version for version, _ in UPGRADES)


def upgrade_checkpoint(ckpt: dict) -> dict:
    """ckpt in today's layout: the upgrades past the layout it records, applied in place, and its layout set."""
    layout = ckpt.get(LAYOUT_KEY, 0)
    for version, upgrade in UPGRADES:
        if version > layout:
            ckpt = upgrade(ckpt)
    ckpt[LAYOUT_KEY] = LAYOUT
    return ckpt

"""Weights on disk: reading a train.py checkpoint with one-line errors and loading a model's weights from it.

    ckpt = read_checkpoint("outputs/.../checkpoints/last.ckpt")
    load_weights(model, model_state(ckpt, ema=has_ema(ckpt), path=path), path)   # EMA when the run kept one
    load_weights(vae, part_state(ckpt, "vae"), path)                                # a latent run's other parts
"""
from pathlib import Path

import torch
from torch import nn

from diffusion_lab.errors import CheckpointError, first_line

PREFIXES = ("module.", "_orig_mod.")  # added by DDP / DataParallel and torch.compile


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at path; CheckpointError if it is missing, unreadable or not from diffusion_lab."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt={path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a truncated or foreign file
        why = first_line(err)
        raise CheckpointError(f"ckpt={path}: cannot read the file, it is truncated or not a torch checkpoint "
                              f"({why})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt={path}: not a diffusion_lab checkpoint (no saved config or state_dict); "
                              "use a .ckpt written by train.py")
    return ckpt


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
    """Whether the checkpoint holds EMA weights of the denoiser (a run trained with callbacks.ema)."""
    return "ema_state_dict" in ckpt


def part_state(ckpt: dict, part: str) -> dict:
    """The raw training weights of the training module's submodule `part` (model, vae, classifier)."""
    return strip_prefixes(ckpt["state_dict"], part + ".")


def model_state(ckpt: dict, ema: bool, path: Path) -> dict:
    """The denoiser's weights: the EMA average (ema; CheckpointError when the run kept none) or the raw ones."""
    if not ema:
        return part_state(ckpt, "model")
    if not has_ema(ckpt):
        raise CheckpointError(f"ckpt={path}: holds no EMA weights (trained without callbacks.ema); "
                              "load the raw training weights (ema=False)")
    return strip_prefixes(ckpt["ema_state_dict"])


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

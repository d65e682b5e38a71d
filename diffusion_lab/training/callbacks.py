"""Callbacks: EMA of the weights (torch-ema), sample pictures, atomic checkpoint files."""
import os
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from torch_ema import ExponentialMovingAverage

from diffusion_lab.errors import ConfigError
from diffusion_lab.plotting import save_samples


class EMA(Callback):
    """Keeps an exponential moving average of the model's weights (torch-ema).

    Validation and sampling see the EMA weights; training always continues on the raw ones. With
    warmup, the decay ramps as min(decay, (1 + n) / (10 + n)) over the first updates. The EMA state
    lives in the checkpoint (callback state) and the averaged weights are also exported under
    checkpoint["ema_state_dict"], keyed like `model.state_dict()` (no `module.` or `_orig_mod.` prefix).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, update_every: int = 1):
        if not 0 <= decay < 1:
            raise ConfigError(f"callbacks.ema.decay={decay} must be in [0, 1)")
        if update_every < 1:
            raise ConfigError(f"callbacks.ema.update_every={update_every} must be >= 1")
        self.decay, self.warmup, self.update_every = decay, warmup, update_every
        self.ema: ExponentialMovingAverage | None = None
        self._pending: dict | None = None
        self._swapped = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.ema is None:
            self.ema = ExponentialMovingAverage(pl_module.model.parameters(), decay=self.decay,
                                                use_num_updates=self.warmup)
        if self._pending is not None:
            self.ema.load_state_dict(self._pending)
            self._pending = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ema.to(pl_module.device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step  # restored by now, unlike at on_fit_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step counts optimizer steps, so accumulation and skipped steps update only after a real step.
        step = trainer.global_step
        if step != self._last_step and step % self.update_every == 0:
            self.ema.update(pl_module.model.parameters())
        self._last_step = step

    def swap_in(self, pl_module: L.LightningModule) -> None:
        """Puts the EMA weights into the model, keeping the raw ones aside."""
        if self.ema is not None and not self._swapped:
            self.ema.store(pl_module.model.parameters())
            self.ema.copy_to(pl_module.model.parameters())
            self._swapped = True

    def swap_out(self, pl_module: L.LightningModule) -> None:
        """Restores the raw weights."""
        if self._swapped:
            self.ema.restore(pl_module.model.parameters())
            self._swapped = False

    def on_validation_start(self, trainer, pl_module) -> None:
        self.swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.swap_out(pl_module)

    def state_dict(self) -> dict:
        return self.ema.state_dict() if self.ema is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.ema is None:
            self._pending = state_dict
        else:
            self.ema.load_state_dict(state_dict)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        names = [n for n, p in pl_module.model.named_parameters() if p.requires_grad]
        state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        for name, shadow in zip(names, self.ema.shadow_params):
            state[name] = shadow.detach().clone()
        checkpoint["ema_state_dict"] = state


class SampleImages(Callback):
    """After each validation, saves the module's samples as a picture in the run directory and logs it."""

    def __init__(self, dirpath: str, data_reference: bool = True):
        self.dirpath = Path(dirpath)
        self.data_reference = data_reference

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        x = getattr(pl_module, "last_samples", None)
        if x is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        ref = getattr(pl_module, "_reference", None) if self.data_reference else None
        path = save_samples(x, self.dirpath / f"samples_step{trainer.global_step:07d}.png", reference=ref,
                            title=f"step {trainer.global_step}")
        for logger in trainer.loggers:
            _log_image(logger, "sample/grid", path, trainer.global_step)
        pl_module.last_samples = None


def _log_image(logger, key: str, path: Path, step: int) -> None:
    """Sends a PNG to loggers that take images (wandb, tensorboard); the CSV logger keeps the file only."""
    if hasattr(logger, "log_image"):  # WandbLogger
        logger.log_image(key=key, images=[str(path)], step=step)
    elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoardLogger
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))
        logger.experiment.add_image(key, image, step, dataformats="HWC")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, flushes it, then renames it into place.

    A kill during a save leaves the previous checkpoint intact; a leftover temporary file from a
    killed save is removed at the next save.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

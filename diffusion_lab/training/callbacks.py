"""Callbacks: EMA of the weights (torch-ema, and power-function profiles for post-hoc EMA) and sample pictures."""
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch_ema import ExponentialMovingAverage

from diffusion_lab.errors import ConfigError
from diffusion_lab.evaluation.plotting import save_samples
from diffusion_lab.posthoc_ema import PowerEMA, save_snapshot
from diffusion_lab.utils import split_batch


class EMA(Callback):
    """Keeps an exponential moving average of the model's weights (torch-ema).

    Validation and sampling see the EMA weights; training always continues on the raw ones. With
    warmup, the decay ramps as min(decay, (1 + n) / (10 + n)) over the first updates. The averaged weights
    are stored once, under checkpoint["ema_state_dict"] keyed like `objective.state_dict()` (no `module.` or
    `_orig_mod.` prefix; buffers are the model's own); the callback state holds only the update count. A
    resumed run averages with the decay of its config.

    Post-hoc EMA (Karras et al. 2024): with power_stds, power-function EMA profiles of those relative standard
    deviations are also tracked at every optimizer step (in the callback state, so a resume continues them exactly)
    and written every snapshot_every steps to snapshot_dir (the newest keep_snapshots files are kept; -1 keeps all),
    from which scripts/reconstruct_ema.py builds the EMA of any std (diffusion_lab.posthoc_ema).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, update_every: int = 1, power_stds=(),
                 snapshot_every: int = 1000, snapshot_dir: str | None = None, keep_snapshots: int = -1):
        if not 0 <= decay < 1:
            raise ConfigError(f"decay={decay} must be in [0, 1)")
        if update_every < 1:
            raise ConfigError(f"update_every={update_every} must be >= 1")
        if power_stds and (snapshot_every < 1 or snapshot_dir is None):
            raise ConfigError(f"snapshot_every={snapshot_every}, snapshot_dir={snapshot_dir}: power_stds needs "
                              "snapshots every >= 1 steps into a folder")
        if keep_snapshots == 0 or keep_snapshots < -1:
            raise ConfigError(f"keep_snapshots={keep_snapshots} must be -1 (all) or >= 1")
        self.decay, self.warmup, self.update_every = decay, warmup, update_every
        self.power_stds, self.snapshot_every, self.keep_snapshots = list(power_stds or ()), snapshot_every, keep_snapshots
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        PowerEMA([], self.power_stds)  # checks the stds now, not at the first step
        self.power: PowerEMA | None = None
        self.ema: ExponentialMovingAverage | None = None
        self._pending: dict | None = None
        self._exported: dict | None = None  # checkpoint["ema_state_dict"] while a checkpoint is being loaded
        self._swapped = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.ema is None:
            self.ema = ExponentialMovingAverage(pl_module.objective.parameters(), decay=self.decay,
                                                use_num_updates=self.warmup)
            self._names = [name for name, _ in pl_module.objective.named_parameters()]
            if self.power_stds:
                self.power = PowerEMA(pl_module.objective.parameters(), self.power_stds)
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ema.to(pl_module.device)
        if self.power is not None:
            self.power.to(pl_module.device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step  # restored by now, unlike at on_fit_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step counts optimizer steps, so accumulation and skipped steps update only after a real step.
        step = trainer.global_step
        if step != self._last_step and step % self.update_every == 0:
            self.ema.update(pl_module.objective.parameters())
        if step != self._last_step and self.power is not None:
            self.power.update(pl_module.objective.parameters())
            if step % self.snapshot_every == 0 and trainer.is_global_zero:
                self.write_snapshot(pl_module, step)
        self._last_step = step

    def write_snapshot(self, pl_module: L.LightningModule, step: int) -> None:
        """Every power profile at this step as the objective's state_dict (its buffers the model's own)."""
        averaged = set(self._names)
        buffers = {k: v.detach().cpu().clone() for k, v in pl_module.objective.state_dict().items() if k not in averaged}
        states = [{**buffers, **{n: a.detach().cpu().clone() for n, a in zip(self._names, average, strict=True)}}
                  for average in self.power.averages]
        save_snapshot(self.snapshot_dir / f"phema_step{step:07d}.pt", step, self.power.stds, states, self._names)
        if self.keep_snapshots > 0:
            for old in sorted(self.snapshot_dir.glob("phema_step*.pt"))[:-self.keep_snapshots]:
                old.unlink()

    def swap_in(self, pl_module: L.LightningModule) -> None:
        """Puts the EMA weights into the model, keeping the raw ones aside."""
        if self.ema is not None and not self._swapped:
            self.ema.store(pl_module.objective.parameters())
            self.ema.copy_to(pl_module.objective.parameters())
            self._swapped = True

    def swap_out(self, pl_module: L.LightningModule) -> None:
        """Restores the raw weights."""
        if self._swapped:
            self.ema.restore(pl_module.objective.parameters())
            self._swapped = False

    def on_validation_start(self, trainer, pl_module) -> None:
        self.swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.swap_out(pl_module)

    def state_dict(self) -> dict:
        state = {"num_updates": self.ema.num_updates} if self.ema is not None else {}
        return {**state, "power": self.power.state_dict()} if self.power is not None else state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._exported = checkpoint.get("ema_state_dict")  # Lightning calls load_state_dict next

    def load_state_dict(self, state_dict: dict) -> None:
        if self.ema is None:
            self._pending = state_dict
        else:
            self._load(state_dict)

    def _load(self, state: dict) -> None:
        state = dict(state)
        power = state.pop("power", None)
        if (power is None) != (self.power is None):
            saved = f"callbacks.ema.power_stds={power['stds']}" if power else "callbacks.ema.power_stds=[]"
            raise ConfigError(f"callbacks.ema.power_stds={self.power_stds}: the checkpoint's run tracked "
                              f"{'no post-hoc EMA' if power is None else power['stds']}; resume with {saved}")
        if power is not None:
            self.power.load_state_dict(power)
        if "shadow_params" not in state:  # the averaged weights are in ema_state_dict, by name
            exported = self._exported or {}
            if any(n not in exported for n in self._names):
                raise ConfigError("ckpt_path: the checkpoint's ema_state_dict does not hold this model's parameters")
            state = {"num_updates": state.get("num_updates"), "collected_params": None,
                     "shadow_params": [exported[n] for n in self._names]}
        self.ema.load_state_dict({**state, "decay": self.decay})
        self._exported = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # torch-ema keeps one shadow per parameter, frozen ones included, in named_parameters() order.
        state = {k: v.detach().clone() for k, v in pl_module.objective.state_dict().items()}
        for (name, _), shadow in zip(pl_module.objective.named_parameters(), self.ema.shadow_params, strict=True):
            state[name] = shadow.detach().clone()
        checkpoint["ema_state_dict"] = state


class SampleImages(Callback):
    """After each validation, draws the module's validation samples in the run directory and logs the picture: a
    grid of the first max_images images, or every point over real data points (data_reference)."""

    def __init__(self, dirpath: str, max_images: int = 100, data_reference: bool = True):
        if max_images < 1:
            raise ConfigError(f"max_images={max_images} must be >= 1")
        self.dirpath, self.max_images, self.data_reference = Path(dirpath), max_images, data_reference
        self._reference = None

    def reference(self, trainer: L.Trainer, n: int):
        """Up to n real items beside point samples: the first validation batch's (fixed), else None."""
        if self._reference is None and self.data_reference and trainer.datamodule is not None:
            self._reference, _ = split_batch(next(iter(trainer.datamodule.val_dataloader())))
        return None if self._reference is None else self._reference[:n]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples = pl_module.validation_samples
        if samples is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        x = samples.x[: self.max_images] if samples.x.ndim == 4 else samples.x
        ref = self.reference(trainer, len(x)) if x.ndim == 2 else None
        path = save_samples(x, self.dirpath / f"samples_step{trainer.global_step:07d}.png", reference=ref,
                            title=f"step {trainer.global_step}")
        for logger in trainer.loggers:
            _log_image(logger, "sample/grid", path, trainer.global_step)


def _log_image(logger, key: str, path: Path, step: int) -> None:
    """Sends a PNG to loggers that take images (wandb, tensorboard); the CSV logger keeps the file only."""
    if hasattr(logger, "log_image"):  # WandbLogger
        logger.log_image(key=key, images=[str(path)], step=step)
    elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoardLogger
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))
        logger.experiment.add_image(key, image, step, dataformats="HWC")

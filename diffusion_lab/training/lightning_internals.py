"""The parts of Lightning that are not public API and that diffusion_lab relies on, each in one function.

tests/test_lightning_internals.py checks every name and signature used here against the installed Lightning, so an
upgrade that moves one fails there, loudly, instead of somewhere inside a run.
"""
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

# ModelCheckpoint methods that RunCheckpoint overrides or calls, with their parameters after self.
CHECKPOINT_METHODS = {"_save_topk_checkpoint": ("trainer", "monitor_candidates"),
                      "_save_last_checkpoint": ("trainer", "monitor_candidates"),
                      "_monitor_candidates": ("trainer",), "_remove_checkpoint": ("trainer", "filepath")}


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The module's trainer, or None outside a fit (the public `module.trainer` raises then)."""
    return module._trainer


def batches_done(trainer: L.Trainer) -> int:
    """Training batches processed in the current epoch (the data position a resume restarts from)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def last_saved_step(callback: ModelCheckpoint) -> int:
    """The global step of the checkpoint the callback saved last."""
    return callback._last_global_step_saved


def save_last(callback: ModelCheckpoint, trainer: L.Trainer) -> None:
    """Writes the callback's last.ckpt now."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def remove_checkpoint(callback: ModelCheckpoint, trainer: L.Trainer, path: str) -> None:
    """Deletes a checkpoint file the way the callback's own top-k rotation does (rank 0, through the strategy)."""
    callback._remove_checkpoint(trainer, path)


def bar_due(bar: TQDMProgressBar, step: int, total: int) -> bool:
    """Whether the progress bar redraws at this step (its refresh rate)."""
    return bar._should_update(step, total)

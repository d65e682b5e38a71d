"""Checkpoints that never lose work: the final step and a stop signal always reach last.ckpt, written atomically."""
import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from diffusion_lab.checkpoints import read_checkpoint
from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.training.lightning_internals import last_saved_step, remove_checkpoint, save_last

log = logging.getLogger(__name__)
POSIX_ONLY = ("SIGUSR1", "SIGUSR2")  # absent on Windows: skipped there


class RunInterrupted(Exception):
    """Training stopped on a signal after saving the current step; the process should exit with 128 + signum."""

    def __init__(self, signum: int, step: int, path: str | None):
        self.signum, self.step, self.path = signum, step, path
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; the run is saved in {path}: resume it with ckpt_path=auto "
                         "and the same hydra.run.dir")


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (every other argument is its own) whose last.ckpt always holds the newest state.

    - Without a monitor, save_top_k=k > 1 keeps the newest k step checkpoints (Lightning allows only -1 or 1).
    - At the final step (max_steps), last.ckpt is written unless this step's is already there: a run whose
      max_steps is not a multiple of every_n_train_steps keeps its final weights, EMA, optimizer and data
      position, and can be resumed for more steps exactly.
    - `signals` (names) stop the run cleanly: the handler only notes the signal; at the end of the current
      optimizer step, once every rank has heard of it, last.ckpt is saved, the signal is passed to the handler
      that was installed before training (under the SLURM launcher, submitit's, which requeues the job), and
      training stops with RunInterrupted. A second SIGINT stops at once (KeyboardInterrupt).
    """

    def __init__(self, signals: Sequence[str] = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"), **kwargs):
        # Without a monitored metric Lightning keeps all (-1) or the newest (1); save_top_k=k keeps the newest k.
        # (monitor=step would rank them, but then Lightning defers saves at an epoch's end to a validation.)
        self.keep_newest = kwargs.get("save_top_k", 1) if kwargs.get("monitor") is None else 0
        if self.keep_newest > 1:
            kwargs["save_top_k"] = -1
        super().__init__(**kwargs)
        self._kept: list[str] = []
        unknown = [name for name in signals if not hasattr(signal, name) and name not in POSIX_ONLY]
        if unknown:
            raise ConfigError(f"signals: unknown signal {unknown[0]!r}; e.g. SIGTERM, SIGUSR1")
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.received: int | None = None
        self._outer: dict[int, object] = {}  # handlers installed before Lightning's (submitit's)
        self._replaced: dict[int, object] = {}  # handlers our own replaced at train start (Lightning's)
        self._last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._outer = {s: signal.getsignal(s) for s in self.signals}  # Lightning registers its own after setup

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_step = trainer.global_step
        if trainer.received_sigterm:  # a SIGTERM during set-up reached Lightning's handler
            self.received = signal.SIGTERM
        if threading.current_thread() is threading.main_thread():
            self._replaced = {s: signal.signal(s, self._note) for s in self.signals}

    def _note(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum
        log.warning(f"received {signal.Signals(signum).name}: saving at the end of this step, then stopping")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == self._last_step:
            return  # inside gradient accumulation: no optimizer step yet, nothing consistent to save
        self._last_step = trainer.global_step
        if 0 < trainer.max_steps <= trainer.global_step:
            # Saved here, where periodic saves are, rather than at on_train_end: by then Lightning has closed the
            # epoch, and a run resumed from that state for more steps would start the next epoch's data.
            self._save_newest(trainer)
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank stops at the same step, saving the same state
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self._save_and_stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.received is not None:  # a signal during the final validation: the run is complete; save, stop
            self._save_and_stop(trainer)
        self._save_newest(trainer)
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._restore_handlers()

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        path = self.best_model_path  # without a monitor: the newest step checkpoint, never last.ckpt
        if self.keep_newest > 1 and path and path not in self._kept:
            self._kept.append(path)
            while len(self._kept) > self.keep_newest:
                remove_checkpoint(self, trainer, self._kept.pop(0))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kept": list(self._kept)}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self._kept = state_dict.pop("kept", [])
        super().load_state_dict(state_dict)

    def _save_newest(self, trainer: L.Trainer) -> None:
        if last_saved_step(self) != trainer.global_step or not self.last_model_path:
            save_last(self, trainer)

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        self._save_newest(trainer)
        self._restore_handlers()
        signum = self.received or signal.SIGTERM  # a rank that heard nothing stops because another did
        outer = self._outer.get(signum)
        if callable(outer) and outer is not signal.default_int_handler:
            outer(signum, None)  # submitit's handler requeues the job and exits
        raise RunInterrupted(signum, trainer.global_step, self.last_model_path)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._replaced.items():
                signal.signal(signum, handler)
        self._replaced = {}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, flushes it, then renames it into place.

    A kill during a save leaves the previous checkpoint intact; a leftover temporary file from a killed save is
    removed at the next save. A failed write (a full disk) removes its temporary file and raises CheckpointError.
    Loading reads and upgrades a checkpoint as diffusion_lab.checkpoints.read_checkpoint does, or takes the one
    train.py has already read (`hand_over`), so a resume reads the file once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._handed: tuple[str, dict] | None = None

    def hand_over(self, path: str | Path, checkpoint: dict) -> None:
        """The checkpoint at path, already read: the next load of that path returns it instead of reading."""
        self._handed = (str(Path(path).resolve()), checkpoint)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        handed, self._handed = self._handed, None
        if handed is not None and handed[0] == str(Path(path).resolve()):
            return handed[1]
        return read_checkpoint(path)

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            kept = " (the previous one is intact)" if path.exists() else ""
            raise CheckpointError(f"cannot write checkpoint {path}: {err.strerror or err}{kept}") from None

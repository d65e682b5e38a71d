"""What a run shows while it trains: a progress bar counted in optimizer steps, the learning rate for the loggers."""
from typing import Any

import lightning as L
from lightning.pytorch import callbacks

from diffusion_lab.training.lightning_internals import bar_due


class StepProgressBar(callbacks.TQDMProgressBar):
    """Lightning's tqdm bar, counting optimizer steps out of trainer.max_steps, redrawn every refresh_rate steps.

    Lightning's own counts the batches of the current epoch (`Epoch 0/-2` when durations are in steps) and is
    redrawn after every batch, about 0.5 ms of CPU each: 0.70-0.82x throughput for the CPU benchmark's models.
    Set refresh_rate to trainer.log_every_n_steps, so that each redraw shows the metrics just logged; 0 hides the
    bar. With max_steps=-1 (a run measured in epochs) it is Lightning's bar.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0):
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self._drawn = -1  # the step last drawn: with gradient accumulation one step ends several batches

    def _by_steps(self) -> bool:
        return self.trainer.max_steps > 0

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        if self._by_steps():  # a resumed run starts at its step; the rate counts only this run's steps
            bar.total, bar.initial, bar.n = self.trainer.max_steps, self.trainer.global_step, self.trainer.global_step
            bar.set_description("train", refresh=False)
        return bar

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._drawn = trainer.global_step
        super().on_train_start(trainer, *args)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._by_steps():  # Lightning's resets the bar to the epoch's batches
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self._by_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step, bar = trainer.global_step, self.train_progress_bar
        if step != self._drawn and bar_due(self, step, bar.total):
            self._drawn, bar.n = step, step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._by_steps() and not self.train_progress_bar.disable:
            self.train_progress_bar.n = trainer.global_step  # drawn by close()
        super().on_train_end(trainer, *args)


def step_progress_bar(enabled: bool = True, refresh_rate: int = 1) -> callbacks.Callback:
    """The StepProgressBar, or a no-op callback when disabled (Lightning refuses a bar with enable_progress_bar
    off): what `callbacks.progress_bar` builds from the trainer's settings."""
    return StepProgressBar(refresh_rate) if enabled else callbacks.Callback()


class LearningRateMonitor(callbacks.LearningRateMonitor):
    """Lightning's LearningRateMonitor, except that a run without loggers (logger=none) skips it instead of failing,
    and that it logs once per optimizer step (Lightning's repeats the value for each batch accumulated into one)."""

    _step = -1  # the optimizer step whose first batch was seen last

    def on_train_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._step = -1
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        first_batch_of_step, self._step = trainer.global_step != self._step, trainer.global_step
        if trainer.loggers and first_batch_of_step:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)

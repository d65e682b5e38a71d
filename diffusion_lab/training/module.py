"""The LightningModule: trains any denoiser through the core library and samples from it at validation."""
import logging
import zlib
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from diffusion_lab.checkpoints import LAYOUT, LAYOUT_KEY, upgrade_checkpoint
from diffusion_lab.core import Guidance, Objective, Sampler, Schedule, diffusion_loss
from diffusion_lab.errors import ConfigError, NonFiniteError
from diffusion_lab.sampling import DiffusionModel, Samples, autocast_dtype, gather, generate
from diffusion_lab.training.lightning_internals import attached_trainer
from diffusion_lab.utils import split_batch

log = logging.getLogger(__name__)
# Scheduler state that counts progress; everything else in it is a setting the current config decides.
SCHEDULER_PROGRESS = ("last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step")


def step_seed(seed: int, step: int, rank: int = 0, micro: int = 0) -> int:
    """A seed for one training (micro-)batch that depends only on its arguments, never on process history."""
    return zlib.crc32(f"{seed}/{step}/{rank}/{micro}".encode())


def seed_device(device: torch.device, seed: int) -> None:
    """Seeds the default generator of one device (torch.manual_seed would also queue a seed for every GPU)."""
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


class DiffusionModule(L.LightningModule):
    """Trains `objective` (a network and what it predicts) on a noise `schedule`; validation samples with `sampler` and
    `guidance`.

    optimizer and lr_scheduler are partials that take the parameters / the optimizer; on resume their
    current settings (lr, weight decay, warmup, ...) replace the checkpoint's, keeping its progress. Every
    step's noise, sigmas and label dropout come from a generator seeded by (seed, global step, rank), so a
    resumed run draws exactly what an uninterrupted one would. The objective is trained on the data's labels when
    its network is conditional (num_classes > 0). nonfinite=skip drops a step with a non-finite gradient and stops
    after max_skipped_steps of them in a row. Training ends with a validation.

    Each validation draws num_samples samples (sample i from seed + i, sample_batch_size at a time, split over the
    ranks) with the EMA weights into `validation_samples`, which the callbacks read: SampleQuality scores them,
    SampleImages draws them. It is set when validation starts and cleared when it ends.
    """

    def __init__(self, objective: Objective, schedule: Schedule, sampler: Sampler, optimizer: Callable,
                 lr_scheduler: Callable | None = None, guidance: Guidance | None = None, seed: int = 0,
                 num_samples: int = 512, sample_batch_size: int = 256, nonfinite: str = "error",
                 max_skipped_steps: int = 10, train_config: dict | None = None):
        super().__init__()
        if nonfinite not in ("error", "skip"):
            raise ConfigError(f"nonfinite={nonfinite!r} must be 'error' or 'skip'")
        if max_skipped_steps < 1:
            raise ConfigError(f"max_skipped_steps={max_skipped_steps} must be >= 1")
        if num_samples < 0 or sample_batch_size < 1:
            raise ConfigError(f"num_samples={num_samples} must be >= 0 and sample_batch_size={sample_batch_size} >= 1")
        self.objective = objective
        self.schedule, self.sampler, self.guidance = schedule, sampler, guidance or Guidance()
        self.optimizer_fn, self.lr_scheduler_fn = optimizer, lr_scheduler
        self.seed, self.num_samples, self.sample_batch_size = seed, num_samples, sample_batch_size
        self.nonfinite, self.max_skipped_steps, self.skipped = nonfinite, max_skipped_steps, {"in_a_row": 0, "total": 0}
        self.train_config = train_config  # the resolved train config, saved in every checkpoint
        self.validation_samples: Samples | None = None

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.objective(x, sigma, cond)

    def _split(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x0, labels): labels only when the network is conditional."""
        x0, labels = split_batch(batch)
        return x0, labels if self.objective.num_classes else None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x0, cond = self._split(batch)
        seed_device(x0.device, step_seed(self.seed, self.global_step, self.global_rank, batch_idx))
        loss = diffusion_loss(self.objective, x0, self.schedule, cond)
        if self.logs_this_step():
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def logs_this_step(self) -> bool:
        """Whether the loggers write this optimizer step's values: once every trainer.log_every_n_steps steps.

        Values logged at other steps would never be written, and each self.log call costs about a millisecond
        of Python on a small CPU, so the training hooks log only at these steps.
        """
        return (self.trainer.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0

    def on_before_optimizer_step(self, optimizer) -> None:
        """Checks the gradients (a non-finite loss makes them non-finite too) before the step: one host read."""
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.trained_parameters() if p.grad is not None])
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # float16: it skips overflowed steps itself
        if scaler is None and not torch.isfinite(norm):
            self._on_nonfinite(optimizer)
        elif scaler is None:
            self.skipped["in_a_row"] = 0
        if self.logs_this_step():
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)  # train/lr: the lr_monitor callback
            if self.nonfinite == "skip":
                self.log("train/skipped_steps", float(self.skipped["total"]), on_step=True, on_epoch=False)

    def _on_nonfinite(self, optimizer) -> None:
        step = self.global_step
        if self.nonfinite == "error":
            raise NonFiniteError(f"training stopped: non-finite loss or gradient at step {step} "
                                 "(nonfinite=skip drops such steps instead); checkpoints on disk are from before it")
        self.skipped["in_a_row"] += 1
        self.skipped["total"] += 1
        if self.skipped["in_a_row"] >= self.max_skipped_steps:
            raise NonFiniteError(f"training stopped: {self.skipped['in_a_row']} steps in a row had a non-finite loss "
                                 f"or gradient (nonfinite=skip, max_skipped_steps={self.max_skipped_steps}), the last "
                                 f"at step {step}; lower optimizer.lr or check the data")
        log.warning(f"step {step}: non-finite gradient, step skipped ({self.skipped['in_a_row']} in a row, "
                    f"{self.skipped['total']} in all)")
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left as they are

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if 0 < self.trainer.max_steps <= self.global_step:
            self.trainer.should_stop = True  # Lightning then validates once more unless this step just did

    def trained_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates."""
        return list(self.objective.parameters())

    def validation_step(self, batch, batch_idx: int) -> None:
        x0, cond = self._split(batch)
        generator = torch.Generator(x0.device).manual_seed(step_seed(self.seed, batch_idx, -1))
        loss = diffusion_loss(self.objective, x0, self.schedule, cond, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking and self.num_samples > 0:
            self.validation_samples = self.draw_validation_samples()

    def on_validation_end(self) -> None:
        self.validation_samples = None  # the callbacks' on_validation_end has run by now

    def draw_validation_samples(self) -> Samples | None:
        """num_samples samples of this run's model, every rank's share gathered on every rank."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        show = self.trainer.is_global_zero and self.trainer.progress_bar_callback is not None
        part = generate(self.diffusion_model(), self.num_samples, self.sample_batch_size, self.seed, rank=rank,
                        world_size=world, progress=show)
        return gather(part) if world > 1 else part

    @property
    def can_sample(self) -> bool:
        """Whether the module has a denoiser to sample from (always, except early latent-diffusion stages)."""
        return True

    def diffusion_model(self) -> DiffusionModel:
        """This run's model as the samplers take it, in the trainer's mixed precision (bf16-mixed training samples
        under bf16 autocast too; Lightning's autocast covers only the steps)."""
        trainer = attached_trainer(self)
        precision = trainer.precision if trainer is not None else None
        return DiffusionModel(self.objective, self.schedule, self.sampler, self.guidance,
                              autocast=autocast_dtype(precision), config=self.train_config)

    def configure_optimizers(self):
        """The optimizer and its LR schedule, stepped per optimizer step; no lr_scheduler is a constant one, so that
        LearningRateMonitor logs the learning rate under the scheduler's name, train/lr, either way."""
        optimizer = self.optimizer_fn(params=self.trained_parameters())
        if self.lr_scheduler_fn is None:
            scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        else:
            scheduler = self.lr_scheduler_fn(optimizer=optimizer)
        lr_config = {"scheduler": scheduler, "interval": "step", "name": "train/lr"}
        return {"optimizer": optimizer, "lr_scheduler": lr_config}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["config"] = self.train_config
        checkpoint[LAYOUT_KEY] = LAYOUT
        checkpoint["skipped_steps"] = dict(self.skipped)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of an earlier layout is upgraded first (before Lightning loads its state_dict); the configured
        optimizer and LR-schedule settings replace the saved ones, keeping their progress."""
        upgrade_checkpoint(checkpoint)
        self.skipped = dict(checkpoint.get("skipped_steps", self.skipped))
        optimizer = self.optimizer_fn(params=self.trained_parameters())
        scheduler = self.lr_scheduler_fn(optimizer=optimizer) if self.lr_scheduler_fn else None
        for saved in checkpoint.get("optimizer_states", [])[:1]:
            for group, fresh in zip(saved["param_groups"], optimizer.param_groups):
                progress = group["lr"] / group["initial_lr"] if group.get("initial_lr") else 1.0
                group.update({k: v for k, v in fresh.items() if k != "params"})
                group["lr"] = fresh.get("initial_lr", fresh["lr"]) * progress
        if scheduler is not None:
            for saved in checkpoint.get("lr_schedulers", [])[:1]:
                saved.update({k: v for k, v in scheduler.state_dict().items() if k not in SCHEDULER_PROGRESS})

"""What a run cost, written when it ends: training and validation wall time (kept across resumes), peak memory, and
where it ran (diffusion_lab.machine.provenance)."""
import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from diffusion_lab.machine import peak_host_memory, provenance


class RunSummary(Callback):
    """Times training apart from validation and writes `path` (JSON) when training ends.

    At each validation, `val/train_seconds` logs the training wall time so far (validation excluded), so a metric can
    be plotted against the time that bought it. The summary holds the optimizer steps, train_seconds and
    validation_seconds (each summed over resumed runs: the counts are part of the checkpoint), peak memory (host RSS
    of rank 0's process; the CUDA allocator's peak on GPUs) and the provenance: date, commit, command, machine.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self.seconds = {"train": 0.0, "validation": 0.0}  # finished intervals, resumed runs included
        self._phase: tuple[str, float] | None = None  # (what is being timed, since when)
        self._provenance: dict = {}

    def _switch(self, phase: str | None) -> None:
        now = time.monotonic()
        if self._phase is not None:
            self.seconds[self._phase[0]] += now - self._phase[1]
        self._phase = None if phase is None else (phase, now)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._provenance = provenance(trainer.strategy.root_device, trainer.world_size)  # the code that runs
        self._switch("train")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._phase is not None:  # a validation inside fit (not trainer.validate)
            self._switch("validation")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._phase is not None and not trainer.sanity_checking:
            pl_module.log("val/train_seconds", self.seconds["train"])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._phase is not None:
            self._switch("train")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch(None)
        if not trainer.is_global_zero:
            return
        device = trainer.strategy.root_device
        summary = {
            "steps": trainer.global_step,
            "train_seconds": round(self.seconds["train"], 1),
            "validation_seconds": round(self.seconds["validation"], 1),
            "peak_host_memory_bytes": peak_host_memory(),
            "peak_cuda_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            **self._provenance,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(summary, indent=2) + "\n")

    def state_dict(self) -> dict:
        self._switch(self._phase and self._phase[0])  # count the open interval
        return {"train_seconds": self.seconds["train"], "validation_seconds": self.seconds["validation"]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seconds = {"train": float(state_dict.get("train_seconds", 0.0)),
                        "validation": float(state_dict.get("validation_seconds", 0.0))}

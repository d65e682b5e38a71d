"""Faults and probes for tests, as callbacks a subprocess run can load: `+callbacks.kill._target_=tests.crash.KillAtStep`."""
import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILLs the process at the end of the batch that reaches optimizer step `step` (no cleanup runs)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillDuringSave(Callback):
    """SIGKILLs the process halfway through writing the checkpoint of optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        real_save = torch.save

        def half_save(obj, f, *args, **kwargs):
            real_save({"partial": torch.zeros(1000)}, f)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = half_save


class DumpWeights(Callback):
    """Each rank saves its final raw weights to dirpath/rank<r>.pt, to compare ranks after DDP training."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module):
        os.makedirs(self.dirpath, exist_ok=True)
        torch.save(pl_module.model.state_dict(), os.path.join(self.dirpath, f"rank{trainer.global_rank}.pt"))

"""Faults and probes for tests, as callbacks a subprocess run can load: `+callbacks.kill._target_=tests.crash.KillAtStep`."""
import errno
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
        torch.save(pl_module.objective.state_dict(), os.path.join(self.dirpath, f"rank{trainer.global_rank}.pt"))


class SignalAtStep(Callback):
    """Sends the signal named `signame` to this process at the end of the batch that reaches optimizer step `step`
    (in a distributed run only on global rank `rank` when it is set)."""

    def __init__(self, step: int, signame: str = "SIGTERM", rank: int | None = None):
        self.step, self.signum, self.rank = step, getattr(signal, signame), rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)


class FakeRequeue(Callback):
    """Stands in for submitit under SLURM: installs its USR2 handler before training, as submitit does before it
    calls the job. The handler records the step of last.ckpt at the moment it runs, then exits with -1 like
    submitit's after `scontrol requeue`."""

    def __init__(self, marker: str, ckpt: str):
        def requeue(signum, frame):
            step = torch.load(ckpt, weights_only=False)["global_step"]
            with open(marker, "w") as f:
                f.write(f"{signal.Signals(signum).name} {step}")
            raise SystemExit(-1)

        signal.signal(signal.SIGUSR2, requeue)


class DiskFullAtStep(Callback):
    """From optimizer step `step` on, every torch.save writes a little and then fails as a full disk does."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.step:
            return

        def full_disk(obj, f, *args, **kwargs):
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        torch.save = full_disk

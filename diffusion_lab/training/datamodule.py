"""The LightningDataModule: wraps any data set, shuffles resumably and splits batches across ranks."""
from collections.abc import Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from diffusion_lab.errors import ConfigError
from diffusion_lab.training.lightning_internals import batches_done


class ResumableBatchSampler:
    """Shuffled batches whose order depends only on (seed, epoch); can skip the batches a run already used.

    An epoch is `epoch_size` examples (default: the data set once), drawn as consecutive
    permutations, so a tiny toy set can fill large batches and long epochs. Each rank takes every
    world_size-th index of the epoch's stream, so ranks see disjoint data.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, epoch_size: int | None = None, trainer=None):
        self.indices = torch.as_tensor(list(indices))
        self.epoch_size = epoch_size or len(self.indices)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.trainer = trainer  # when given, the epoch is read from trainer.current_epoch at each __iter__
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already trained on in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_indices(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        repeats = -(-self.epoch_size // len(self.indices))
        perms = [torch.randperm(len(self.indices), generator=g) if self.shuffle else torch.arange(len(self.indices))
                 for _ in range(repeats)]
        idx = self.indices[torch.cat(perms)[: self.epoch_size]]
        per_rank = -(-len(idx) // self.world_size)
        idx = torch.cat([idx, idx[: per_rank * self.world_size - len(idx)]])  # pad so every rank has as many
        return idx[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        if self.trainer is not None:
            self.epoch = self.trainer.current_epoch
        batches = self._rank_indices().split(self.batch_size)
        skip = self.resume_at[1] if self.resume_at and self.resume_at[0] == self.epoch else 0
        self.resume_at = None
        for batch in batches[skip:]:
            yield batch.tolist()

    def __len__(self) -> int:
        return -(-len(self._rank_indices()) // self.batch_size)


def _identity(batch):
    return batch


class _Batched(Dataset):
    """Lets a DataLoader fetch a whole batch with the data set's `get_batch(indices)` in one call."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]):
        return self.dataset.get_batch(indices)


class DiffusionDataModule(L.LightningDataModule):
    """Serves a data set's training batches (with labels when it has them) and a fixed validation subset.

    epoch_size: examples per training epoch (default: the data set once; more repeats small sets).

    input_dims and num_classes declare what the data set yields, so model configs can read them
    (`${data.input_dims}`, `${data.num_classes}`); they are checked against the data set.
    """

    def __init__(self, dataset: Dataset, input_dims: Sequence[int], num_classes: int = 0, batch_size: int = 128,
                 num_workers: int = 0, val_size: int = 512, seed: int = 0,
                 pin_memory: bool = False, epoch_size: int | None = None):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        if num_workers < 0:
            raise ConfigError(f"num_workers={num_workers} must be >= 0")
        self.dataset, self.input_dims, self.num_classes = dataset, tuple(input_dims), num_classes
        self.batch_size, self.num_workers, self.val_size = batch_size, num_workers, val_size
        self.seed, self.pin_memory, self.epoch_size = seed, pin_memory, epoch_size
        self._check()
        self._resume: dict | None = None
        self.train_sampler: ResumableBatchSampler | None = None

    def _check(self) -> None:
        got = tuple(getattr(self.dataset, "input_dims", self.input_dims))
        if got != self.input_dims:
            raise ConfigError(f"input_dims={list(self.input_dims)} but the data set yields {list(got)}")
        got_classes = getattr(self.dataset, "num_classes", 0)
        if got_classes != self.num_classes:
            raise ConfigError(f"num_classes={self.num_classes} but the data set has {got_classes} classes")

    def _loader(self, sampler: ResumableBatchSampler) -> DataLoader:
        batched = hasattr(self.dataset, "get_batch")
        return DataLoader(_Batched(self.dataset) if batched else self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                          collate_fn=_identity if batched else None, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.train_sampler = ResumableBatchSampler(range(len(self.dataset)), self.batch_size, True, self.seed,
                                                   rank, world, self.epoch_size, self.trainer)
        if self._resume is not None:
            self.train_sampler.resume_at = (self._resume["epoch"], self._resume["batches_done"])
            self._resume = None
        return self._loader(self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed + 1)
        n = min(self.val_size, len(self.dataset))
        indices = torch.randperm(len(self.dataset), generator=g)[:n].tolist()
        return self._loader(ResumableBatchSampler(indices, min(self.batch_size, max(n, 1)), shuffle=False))

    def state_dict(self) -> dict:
        """Where the training data stream stands: the epoch and the batches of it already trained on."""
        if self.trainer is None:
            return {}
        return {"epoch": self.trainer.current_epoch, "batches_done": batches_done(self.trainer)}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._resume = dict(state_dict)

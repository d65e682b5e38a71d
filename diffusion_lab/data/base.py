"""Shared pieces of the data sets: the in-memory base class, argument checks and batch collation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from diffusion_lab.errors import ConfigError


def check_int(name: str, value: int, minimum: int) -> int:
    """Return `value` if it is an integer >= `minimum`, else raise ConfigError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(name: str, value: float, minimum: float = 0.0, strict: bool = False) -> float:
    """Return `value` as a float if it is >= `minimum` (> when `strict`), else raise ConfigError."""
    bad_type = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad_type or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ConfigError(f"{name} must be a number {relation} {minimum}, got {value!r}")
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[object]) -> object:
    """Return `value` if it is one of `choices`, else raise ConfigError listing them."""
    if value not in choices:
        allowed = " | ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
    return value


class InMemoryDataset(Dataset):
    """A data set held as one tensor `data` (N, ...) and optional int64 `labels` (N,), batched by indexing.

    `data` is stored as float32, except uint8 images, which stay uint8 (4x less memory) and are
    converted in `transform`. `__getitem__(i)` returns `x`, or `(x, y)` when the set has labels;
    `get_batch(indices)` returns the same for a whole batch in one indexing operation.
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor | None, num_classes: int) -> None:
        super().__init__()
        self.data = (data if data.dtype == torch.uint8 else data.to(torch.float32)).contiguous()
        self.labels = None if labels is None else labels.to(torch.int64).contiguous()
        self.num_classes = num_classes if labels is not None else 0
        self.input_dims: tuple[int, ...] = tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return self.data.shape[0]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Per-batch hook applied to `x` (B, ...) = rows of `data` on the way out; identity here."""
        return x

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.transform(self.data[index].unsqueeze(0))[0]
        if self.labels is None:
            return x
        return x, self.labels[index]

    def get_batch(self, indices: list[int]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.transform(self.data[index])  # (B, *input_dims)
        if self.labels is None:
            return x
        return x, self.labels[index]

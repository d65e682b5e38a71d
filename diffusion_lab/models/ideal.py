"""The exact denoiser of a finite data set: a softmax over the data points, no trainable parameters."""

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffusion_lab.errors import ConfigError
from diffusion_lab.models.base import DenoiserNet
from diffusion_lab.utils import append_dims, split_batch

MAX_LOGITS = 2**24  # elements of one (batch chunk, N) logit matrix: bounds memory


def stack_dataset(dataset: Tensor | np.ndarray | Dataset, max_points: int | None = None) -> Tensor:
    """The first `max_points` (default all) items of `dataset` stacked as (N, *dims); an item is `x` or `(x, label)`."""
    if isinstance(dataset, (Tensor, np.ndarray)):
        return torch.as_tensor(dataset)[:max_points]
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        kind = type(dataset).__name__
        raise ConfigError(f"IdealDenoiser: dataset must be a tensor or a map-style Dataset, got {kind}")
    items = [dataset[i] for i in range(len(dataset))[:max_points]]
    return torch.stack([torch.as_tensor(split_batch(it)[0]) for it in items])


class IdealDenoiser(DenoiserNet):
    """Exact eps-predictor for the empirical distribution of `dataset` under x = x0 + sigma * eps.

    E[x0 | x] = sum_i softmax_i(-||x - x0_i||^2 / (2 sigma^2)) x0_i, and forward returns
    eps = (x - E[x0 | x]) / sigma. Wrap it as an eps-prediction network. Only the first
    `max_points` items are kept when given.
    """

    def __init__(self, dataset: Tensor | Dataset, max_points: int | None = None) -> None:
        if max_points is not None and max_points < 1:
            raise ConfigError(f"IdealDenoiser: max_points={max_points} must be >= 1 or None (all points)")
        data = stack_dataset(dataset, max_points)
        if data.ndim < 2 or len(data) == 0:
            shape = tuple(data.shape)
            raise ConfigError(f"IdealDenoiser: dataset must hold at least one item of >= 1 dim, got shape {shape}")
        if not data.is_floating_point():
            data = data.to(torch.get_default_dtype())
        super().__init__(input_dims=data.shape[1:], num_classes=0)
        self.register_buffer("data", data)  # (N, *input_dims)

    def posterior_mean(self, x: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x] for x (B, *input_dims) and sigma (B,), chunked over the batch to bound memory."""
        x0 = self.data.flatten(1).to(x.dtype)  # (N, D)
        mu = x0.mean(0)  # (D,) centring shrinks the dot products, hence their rounding error
        x0 = x0 - mu
        half_sq = 0.5 * (x0 * x0).sum(1)  # (N,)
        chunk = max(1, MAX_LOGITS // len(x0))
        means = []
        for xb, sb in zip((x.flatten(1) - mu).split(chunk), sigma.split(chunk)):
            # -||x - x0_i||^2 / 2 up to a per-row constant (-||x||^2 / 2), which the softmax ignores
            logits = (xb @ x0.T - half_sq) / sb[:, None] ** 2  # (b, N)
            means.append(torch.softmax(logits, dim=1) @ x0)  # (b, D)
        return (torch.cat(means) + mu).view_as(x)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        sigma = self.sigma_batch(sigma, x)  # (B,)
        self.labels(cond, x)  # rejects a cond: the empirical distribution here is unconditional
        return (x - self.posterior_mean(x, sigma)) / append_dims(sigma, x)

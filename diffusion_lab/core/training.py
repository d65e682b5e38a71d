"""The denoising loss and a plain training loop for library users who do not want Lightning."""
from collections.abc import Iterable, Iterator
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.core.schedules import Schedule


def diffusion_loss(model: nn.Module, x0: torch.Tensor, schedule: Schedule, cond: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared error of the network's output against its target at a random training level (Ho et al. 2020, eq. 14).

    A `Denoiser` regresses its raw output (eps, x0 or v) on the matching target; a bare network predicts eps.
    """
    sigma = schedule.sample_batch(x0, generator)  # (B,)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, ...)
    x = x0 + sigma.view(-1, *([1] * (x0.ndim - 1))) * eps
    if hasattr(model, "raw"):
        return F.mse_loss(model.raw(x, sigma, cond), model.target(x0, eps, sigma))
    return F.mse_loss(model(x, sigma, cond), eps)


def _split(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch is x0 or (x0, labels)."""
    if isinstance(batch, (list, tuple)):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def training_loop(loader: Iterable, model: nn.Module, schedule: Schedule, epochs: int = 10000, lr: float = 1e-3,
                  conditional: bool = False, optimizer: torch.optim.Optimizer | None = None) -> Iterator[SimpleNamespace]:
    """Trains `model` on the batches of `loader`; yields a namespace with `loss` after every optimizer step."""
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    model.train()
    for _ in range(epochs):
        for batch in loader:
            x0, labels = _split(batch)
            cond = labels.to(device) if conditional else None
            loss = diffusion_loss(model, x0.to(device), schedule, cond)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            yield SimpleNamespace(loss=loss.detach(), model=model, optimizer=optimizer)

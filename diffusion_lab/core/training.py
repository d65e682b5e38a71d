"""The denoising loss and a plain training loop for library users who do not want Lightning."""
from collections.abc import Iterable, Iterator
from types import SimpleNamespace

import torch
from torch import nn

from diffusion_lab.core.objectives import Objective, PredEps
from diffusion_lab.core.schedules import Schedule
from diffusion_lab.utils import module_device, split_batch


def training_noise(x0: torch.Tensor, schedule: Schedule, generator: torch.Generator | None = None,
                   train_sigmas=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma (B,), eps like x0): a training level per example, drawn from `train_sigmas` (`sample(n, generator,
    device)`) when given, else uniformly from the schedule's levels, and the noise of x = x0 + sigma eps."""
    if train_sigmas is None:
        sigma = schedule.sample_batch(x0, generator)  # (B,)
    else:
        sigma = train_sigmas.sample(x0.shape[0], generator, x0.device).to(x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, ...)
    return sigma, eps


def diffusion_loss(model: nn.Module, x0: torch.Tensor, schedule: Schedule, cond: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """`Objective.loss` at random training levels (the objective's `train_sigmas`, else the schedule's) and noise
    (Ho et al. 2020, eq. 14).

    A network that is not an `Objective` is an eps-predictor: it is wrapped in `PredEps(model)`.
    """
    objective = model if isinstance(model, Objective) else PredEps(model)
    sigma, eps = training_noise(x0, schedule, generator, objective.train_sigmas)
    return objective.loss(x0, sigma, eps, cond)


def training_loop(loader: Iterable, model: nn.Module, schedule: Schedule, epochs: int = 10000, lr: float = 1e-3,
                  conditional: bool = False, optimizer: torch.optim.Optimizer | None = None) -> Iterator[SimpleNamespace]:
    """Trains `model` on the batches of `loader`; yields a namespace with `loss` after every optimizer step."""
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr)
    device = module_device(model)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            x0, labels = split_batch(batch)
            cond = labels.to(device) if conditional else None
            loss = diffusion_loss(model, x0.to(device), schedule, cond)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            yield SimpleNamespace(loss=loss.detach(), model=model, optimizer=optimizer)

"""Small tensor helpers shared by every layer: sigma broadcast against x, a batch split into (x, labels), a module's device."""
import torch
from torch import nn


def append_dims(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma (a scalar or (B,)) as a (B, 1, ..., 1) tensor on x's device and dtype, broadcastable against x (B, ...)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, ...)


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch is x or (x, labels, ...): returns (x, labels or None)."""
    if isinstance(batch, (list, tuple)):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (cpu for a module with neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")

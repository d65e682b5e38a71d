"""Toy MLP denoisers for low-dimensional points: sigma (and label) features concatenated to x."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.models.base import DenoiserNet, SigmaEmbedding

SIGMA_DIM = 2  # (sin, cos) of log(sigma)/4, as in smalldiffusion's toy MLP


def gelu_mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, owner: str) -> nn.Sequential:
    """Linear layers of widths in_dim -> *hidden_dims -> out_dim with GELU between them."""
    if len(hidden_dims) == 0 or min(hidden_dims) < 1:
        raise ConfigError(f"{owner}: hidden_dims={list(hidden_dims)} must be a non-empty list of positive ints")
    widths = [in_dim, *hidden_dims, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b)] if i == len(widths) - 2 else [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers)


def check_dim(dim: int, owner: str) -> None:
    """Raise ConfigError unless the point dimension is positive."""
    if dim < 1:
        raise ConfigError(f"{owner}: dim={dim} must be >= 1")


class TimeInputMLP(DenoiserNet):
    """Unconditional GELU MLP on [x, sin/cos(log(sigma)/4)] (the toy model of smalldiffusion)."""

    def __init__(self, dim: int = 2, hidden_dims: Sequence[int] = (16, 128, 128, 128, 128, 16)) -> None:
        check_dim(dim, "TimeInputMLP")
        super().__init__(input_dims=(dim,))
        self.sigma_emb = SigmaEmbedding(SIGMA_DIM)
        self.net = gelu_mlp(dim + SIGMA_DIM, list(hidden_dims), dim, "TimeInputMLP")

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        sigma = self.sigma_batch(sigma, x)  # (B,)
        self.labels(cond, x)  # rejects a cond: this model is unconditional
        return self.net(torch.cat([x, self.sigma_emb(sigma)], dim=1))  # (B, dim)


class ConditionalMLP(DenoiserNet):
    """GELU MLP on [x, sigma features, label embedding]; the null label enables classifier-free guidance."""

    def __init__(
        self,
        dim: int = 2,
        hidden_dims: Sequence[int] = (16, 128, 128, 128, 128, 16),
        cond_dim: int = 4,
        num_classes: int = 10,
        cond_dropout: float = 0.1,
    ) -> None:
        check_dim(dim, "ConditionalMLP")
        if num_classes < 1:
            raise ConfigError(f"ConditionalMLP: num_classes={num_classes} must be >= 1 (use TimeInputMLP otherwise)")
        if cond_dim < 1:
            raise ConfigError(f"ConditionalMLP: cond_dim={cond_dim} must be >= 1")
        super().__init__((dim,), num_classes, cond_dropout, label_dim=cond_dim)
        self.sigma_emb = SigmaEmbedding(SIGMA_DIM)
        self.net = gelu_mlp(dim + SIGMA_DIM + cond_dim, list(hidden_dims), dim, "ConditionalMLP")

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        sigma = self.sigma_batch(sigma, x)  # (B,)
        y = self.embed_labels(cond, x)  # (B, cond_dim)
        return self.net(torch.cat([x, self.sigma_emb(sigma), y], dim=1))  # (B, dim)

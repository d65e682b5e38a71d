"""smalldiffusion's toy MLP denoisers for low-dimensional points: (sin, cos) sigma features and labels joined to x."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.models.base import DenoiserNet


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


def sigma_features(sigma: Tensor, scale: float) -> Tensor:
    """(sin, cos) of scale * log(sigma), (B, 2): smalldiffusion's get_sigma_embeds (its scaling_factor is 0.5)."""
    s = sigma.log()[:, None] * scale  # (B, 1)
    return torch.cat([s.sin(), s.cos()], dim=1)


class TimeInputMLP(DenoiserNet):
    """smalldiffusion's TimeInputMLP: a GELU MLP on [x, sin(s), cos(s)] with s = sigma_scale * log(sigma).

    The same layers, created in the same order, as smalldiffusion's; with the same seed a run of its training loop
    and of `training_loop` here give the same weights (tests/test_models.py). sigma_scale 0.25 is what
    diffusion_lab used before issue 28 (its checkpoints keep it).
    """

    def __init__(self, dim: int = 2, hidden_dims: Sequence[int] = (16, 128, 128, 128, 128, 16),
                 sigma_scale: float = 0.5) -> None:
        check_dim(dim, "TimeInputMLP")
        super().__init__(input_dims=(dim,))
        self.sigma_scale = sigma_scale
        self.net = gelu_mlp(dim + 2, list(hidden_dims), dim, "TimeInputMLP")

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        sigma = self.sigma_batch(sigma, x)  # (B,)
        self.labels(cond, x)  # rejects a cond: this model is unconditional
        return self.net(torch.cat([x, sigma_features(sigma, self.sigma_scale)], dim=1))  # (B, dim)


class ConditionalMLP(DenoiserNet):
    """smalldiffusion's ConditionalMLP: a GELU MLP on [x, sigma features, label embedding]; the label embedding (with
    a null label for classifier-free guidance) goes through SiLU and a linear layer when label_mlp, as smalldiffusion's
    CondEmbedderLabel. Layers are created in smalldiffusion's order (the MLP, then the embedding), so the same seed
    gives the same initial weights. label_mlp=false and sigma_scale=0.25 are diffusion_lab's before issue 28.
    """

    def __init__(self, dim: int = 2, hidden_dims: Sequence[int] = (16, 128, 128, 128, 128, 16), cond_dim: int = 4,
                 num_classes: int = 10, cond_dropout: float = 0.1, sigma_scale: float = 0.5,
                 label_mlp: bool = True) -> None:
        check_dim(dim, "ConditionalMLP")
        if num_classes < 1:
            raise ConfigError(f"ConditionalMLP: num_classes={num_classes} must be >= 1 (use TimeInputMLP otherwise)")
        if cond_dim < 1:
            raise ConfigError(f"ConditionalMLP: cond_dim={cond_dim} must be >= 1")
        super().__init__((dim,), num_classes, cond_dropout)
        self.sigma_scale = sigma_scale
        self.net = gelu_mlp(dim + 2 + cond_dim, list(hidden_dims), dim, "ConditionalMLP")
        embedding = nn.Embedding(num_classes + 1, cond_dim)
        self.label_emb = nn.Sequential(embedding, nn.SiLU(), nn.Linear(cond_dim, cond_dim)) if label_mlp else embedding

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        sigma = self.sigma_batch(sigma, x)  # (B,)
        y = self.embed_labels(cond, x)  # (B, cond_dim)
        return self.net(torch.cat([x, sigma_features(sigma, self.sigma_scale), y], dim=1))  # (B, dim)

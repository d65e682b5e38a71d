"""An MLP "U-Net" for 2D/3D points: skip connections from the down path to the up path."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.models.base import DenoiserNet, SigmaEmbedding


class ToyBlock(nn.Module):
    """Linear layer and LayerNorm, plus the projected (sigma + label) embedding, then SiLU."""

    def __init__(self, in_dim: int, out_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        self.emb = nn.Linear(emb_dim, out_dim)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return F.silu(self.norm(self.linear(h)) + self.emb(emb))  # (B, out_dim)


def check_hidden_dims(hidden_dims: Sequence[int]) -> None:
    """Raise ConfigError unless hidden_dims is a symmetric, odd-length (>= 3) list of positive widths."""
    dims = list(hidden_dims)
    if len(dims) < 3 or len(dims) % 2 == 0 or dims != dims[::-1] or min(dims) < 1:
        raise ConfigError(
            f"ToyUNet: hidden_dims={dims} must be a symmetric list of positive ints of odd length >= 3, "
            "e.g. [64, 128, 256, 128, 64]"
        )


class ToyUNet(DenoiserNet):
    """MLP U-Net: widths go down then up `hidden_dims`, each up block also sees the matching down activation.

    The sigma and label embeddings (both `time_dim` wide) are summed and added inside every block. It plays the part
    of the JAX toy project's SimpleUNet in its recipes but is not a copy of it: that network works on integer
    timesteps, and its residual blocks scale and shift the activations by separate time and class embeddings
    (FiLM); this one takes log-sigma features, as every diffusion_lab network does, and adds one embedding.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden_dims: Sequence[int] = (64, 128, 256, 128, 64),
        time_dim: int = 64,
        num_classes: int = 0,
        cond_dropout: float = 0.0,
    ) -> None:
        if dim < 1:
            raise ConfigError(f"ToyUNet: dim={dim} must be >= 1")
        if time_dim < 2 or time_dim % 2:
            raise ConfigError(f"ToyUNet: time_dim={time_dim} must be even and >= 2")
        check_hidden_dims(hidden_dims)
        super().__init__((dim,), num_classes, cond_dropout, label_dim=time_dim)
        h = list(hidden_dims)
        k = len(h) // 2
        self.sigma_emb = SigmaEmbedding(time_dim, out_dim=time_dim)
        self.inp = nn.Linear(dim, h[0])
        self.down = nn.ModuleList(ToyBlock(h[i], h[i + 1], time_dim) for i in range(k))
        # up block i takes the skip saved before down block 2k-1-i, of width h[2k-1-i] == h[i+1]
        self.up = nn.ModuleList(ToyBlock(h[i] + h[i + 1], h[i + 1], time_dim) for i in range(k, 2 * k))
        self.out = nn.Linear(h[-1], dim)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        emb = self.sigma_emb(self.sigma_batch(sigma, x))  # (B, time_dim)
        y = self.embed_labels(cond, x)
        emb = emb if y is None else emb + y
        h = self.inp(x)  # (B, h[0])
        skips = []
        for block in self.down:
            skips.append(h)
            h = block(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)  # (B, dim)

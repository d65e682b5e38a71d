"""The forward contract every denoiser obeys, plus its shared sigma and label embeddings."""

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffusion_lab.errors import ConfigError


class SigmaEmbedding(nn.Module):
    """Sinusoidal features of c_noise = log(sigma) / 4 (Karras et al. 2022, Table 1), then an optional MLP.

    Angular frequencies are geometric from 1 to `max_freq` per unit of c_noise. Working on log(sigma)
    keeps the features bounded and distinct for sigma anywhere in [1e-4, 1e3] (c_noise in [-2.3, 1.7]).
    """

    def __init__(self, dim: int, out_dim: int = 0, max_freq: float = 100.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ConfigError(f"SigmaEmbedding: dim={dim} must be even and >= 2")
        if out_dim < 0:
            raise ConfigError(f"SigmaEmbedding: out_dim={out_dim} must be >= 0 (0 = no MLP)")
        self.dim = dim
        self.max_freq = max_freq
        self.mlp = (
            nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)) if out_dim else nn.Identity()
        )

    def forward(self, sigma: Tensor) -> Tensor:
        c_noise = sigma.float().clamp_min(1e-20).log() / 4  # (B,)
        freqs = torch.logspace(0, math.log10(self.max_freq), self.dim // 2, device=sigma.device)  # (dim/2,)
        angles = c_noise[:, None] * freqs  # (B, dim/2)
        feats = torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, dim)
        return self.mlp(feats.to(sigma.dtype))


class DenoiserNet(nn.Module):
    """Base of every denoiser: `forward(x, sigma, cond=None)` returns a raw output shaped like x.

    Noise is variance exploding, x = x0 + sigma * eps. Class labels live in an embedding table with
    `num_classes + 1` rows; row `num_classes` is the null label used by classifier-free guidance
    (Ho & Salimans 2022), and in training mode labels are replaced by it with probability `cond_dropout`.
    """

    def __init__(
        self, input_dims: Sequence[int], num_classes: int = 0, cond_dropout: float = 0.0, label_dim: int = 0
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if num_classes < 0:
            raise ConfigError(f"{name}: num_classes={num_classes} must be >= 0 (0 = unconditional)")
        if not 0.0 <= cond_dropout < 1.0:
            raise ConfigError(f"{name}: cond_dropout={cond_dropout} must be in [0, 1)")
        self.input_dims: tuple[int, ...] = tuple(int(d) for d in input_dims)
        self.num_classes = num_classes
        self.cond_dropout = cond_dropout
        self.label_emb = nn.Embedding(num_classes + 1, label_dim) if num_classes and label_dim else None

    def rand_input(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise (batch_size, *input_dims) on the model's device and dtype."""
        ref = next(itertools.chain(self.parameters(), self.buffers()), None)
        device, dtype = (ref.device, ref.dtype) if ref is not None else (None, None)
        return torch.randn((batch_size, *self.input_dims), generator=generator, device=device, dtype=dtype)

    def null_cond(self, cond: Tensor) -> Tensor:
        """The null condition shaped like `cond`: every label set to `num_classes`."""
        if self.num_classes == 0:
            raise ConfigError(
                f"{type(self).__name__} is unconditional (num_classes=0): classifier-free guidance "
                "needs num_classes > 0 and cond_dropout > 0"
            )
        return torch.full_like(cond, self.num_classes)

    def sigma_batch(self, sigma: Tensor | float, x: Tensor) -> Tensor:
        """Broadcast a float, 0-dim or (B,) sigma to shape (B,) on x's device and dtype."""
        B = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma.numel() == 1:
            return sigma.reshape(1).expand(B)
        if sigma.numel() != B:
            raise ConfigError(f"sigma has shape {tuple(sigma.shape)}; expected a scalar or ({B},)")
        return sigma.reshape(B)

    def labels(self, cond: Tensor | None, x: Tensor) -> Tensor | None:
        """Checked labels (B,), null where cond is None or dropped out; None on an unconditional model."""
        name = type(self).__name__
        if self.num_classes == 0:
            if cond is not None:
                raise ConfigError(f"{name} is unconditional (num_classes=0): cond must be None")
            return None
        B = x.shape[0]
        if cond is None:
            return torch.full((B,), self.num_classes, device=x.device, dtype=torch.long)
        if not isinstance(cond, Tensor) or cond.is_floating_point() or cond.shape != (B,):
            raise ConfigError(f"{name}: cond must be an integer label tensor of shape ({B},)")
        if bool(((cond < 0) | (cond > self.num_classes)).any()):
            raise ConfigError(
                f"{name}: cond labels must be in [0, {self.num_classes}] ({self.num_classes} = null label), "
                f"got min {int(cond.min())} max {int(cond.max())}"
            )
        if self.training and self.cond_dropout > 0:
            drop = torch.rand(cond.shape, device=cond.device) < self.cond_dropout  # (B,)
            cond = torch.where(drop, torch.full_like(cond, self.num_classes), cond)
        return cond

    def embed_labels(self, cond: Tensor | None, x: Tensor) -> Tensor | None:
        """Label embeddings (B, label_dim), or None on an unconditional model."""
        labels = self.labels(cond, x)
        return None if labels is None else self.label_emb(labels)

"""A noise-aware classifier p(y | x_t, sigma) for classifier guidance (Dhariwal & Nichol 2021, sec. 4)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.core.training import training_noise
from diffusion_lab.errors import ConfigError
from diffusion_lab.models.base import SigmaEmbedding
from diffusion_lab.models.layers import group_norm
from diffusion_lab.utils import append_dims


class ClassifierBlock(nn.Module):
    """Residual conv block with the sigma embedding added between its two convolutions."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class NoiseAwareClassifier(nn.Module):
    """Logits (B, num_classes) for noisy inputs x = x0 + sigma * eps of shape (B, channels, in_dim, in_dim).

    The input is scaled by 1 / sqrt(1 + sigma^2) so the network sees unit-variance data at every
    noise level, and an embedding of sigma is added inside every block. `depth` blocks of ch, 2 ch,
    4 ch, ... channels, the resolution halving after each but the last, then global average pooling.
    """

    def __init__(self, in_dim: int = 8, channels: int = 2, num_classes: int = 10, ch: int = 64,
                 depth: int = 2) -> None:
        super().__init__()
        self._check(in_dim, channels, num_classes, ch, depth)
        self.input_dims = (channels, in_dim, in_dim)
        self.num_classes = num_classes
        emb_dim = 4 * ch
        self.sigma_emb = SigmaEmbedding(ch, out_dim=emb_dim)
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)
        widths = [ch] + [ch * 2**i for i in range(depth)]  # block i maps widths[i] to widths[i + 1] channels
        self.blocks = nn.ModuleList(ClassifierBlock(widths[i], widths[i + 1], emb_dim) for i in range(depth))
        self.head = nn.Sequential(group_norm(widths[-1]), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(widths[-1], num_classes))

    @staticmethod
    def _check(in_dim: int, channels: int, num_classes: int, ch: int, depth: int) -> None:
        if channels < 1:
            raise ConfigError(f"NoiseAwareClassifier: channels={channels} must be >= 1")
        if num_classes < 2:
            raise ConfigError(f"NoiseAwareClassifier: num_classes={num_classes} must be >= 2")
        if ch < 2 or ch % 2:
            raise ConfigError(f"NoiseAwareClassifier: ch={ch} must be even and >= 2")
        if depth < 1:
            raise ConfigError(f"NoiseAwareClassifier: depth={depth} must be >= 1")
        f = 2 ** (depth - 1)
        if in_dim < f or in_dim % f:
            raise ConfigError(f"NoiseAwareClassifier: in_dim={in_dim} must be a positive multiple of "
                              f"{f} (2^(depth - 1) for depth={depth})")

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        B = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(B)  # (B,)
        x = x / append_dims(1 + sigma**2, x).sqrt()  # unit variance for unit-variance x0
        emb = F.silu(self.sigma_emb(sigma))  # (B, emb_dim)
        h = self.conv_in(x)  # (B, ch, H, W)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(self.blocks) - 1:
                h = F.avg_pool2d(h, 2)
        return self.head(h)  # (B, num_classes)


def noisy_classification_loss(classifier: nn.Module, x0: Tensor, labels: Tensor, schedule,
                              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(cross-entropy, accuracy) of `classifier` on x0 noised at random training levels of `schedule`."""
    sigma, eps = training_noise(x0, schedule, generator)  # (B,), (B, ...)
    x = x0 + append_dims(sigma, x0) * eps  # (B, ...)
    logits = classifier(x, sigma)  # (B, K)
    accuracy = (logits.argmax(-1) == labels).float().mean()
    return F.cross_entropy(logits, labels.long()), accuracy

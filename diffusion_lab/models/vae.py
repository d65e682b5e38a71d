"""KL-regularised autoencoder for latent diffusion (Rombach et al. 2022, sec. 3.1 and app. G).

An image x (B, C, H, W) is encoded to a diagonal Gaussian posterior q(z | x) over a latent
(B, latent_channels, H/f, W/f), f = 2^(len(ch_mult) - 1); the decoder maps z back to pixels.
Diffusion runs on z * scale_factor, where `fit_scale_factor` sets scale_factor = 1 / std(z) on data
so the diffusion model sees latents of unit variance (Rombach et al. 2022, app. G).
"""

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.models.layers import group_norm, zero_init
from diffusion_lab.utils import split_batch

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of log sigma^2 as in the LDM code: keeps exp(logvar) finite


class VAEResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual connection; no time embedding."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
            group_norm(out_ch), nn.SiLU(), zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class VAEAttention(nn.Module):
    """Single-head self-attention over the H*W positions, residual, zero-initialised output projection."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        return x + self.out(rearrange(h, "b 1 (h w) c -> b c h w", h=x.shape[2]))


def _mid_block(ch: int, attn: bool) -> nn.Sequential:
    """ResBlock, attention (optional), ResBlock at the lowest resolution."""
    return nn.Sequential(VAEResBlock(ch, ch), VAEAttention(ch) if attn else nn.Identity(), VAEResBlock(ch, ch))


def _head(ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))


class Encoder(nn.Module):
    """x (B, C, H, W) -> posterior parameters (B, 2 * latent_channels, H/f, W/f)."""

    def __init__(self, in_channels: int, latent_channels: int, ch: int, ch_mult: Sequence[int],
                 num_res_blocks: int, attn: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, padding=1)]
        c_in = ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                layers.append(VAEResBlock(c_in, ch * mult))
                c_in = ch * mult
            if level < len(ch_mult) - 1:
                layers.append(nn.Conv2d(c_in, c_in, 3, stride=2, padding=1))  # halves H and W
        self.net = nn.Sequential(*layers, _mid_block(c_in, attn), _head(c_in, 2 * latent_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """z (B, latent_channels, H/f, W/f) -> reconstruction (B, C, H, W)."""

    def __init__(self, out_channels: int, latent_channels: int, ch: int, ch_mult: Sequence[int],
                 num_res_blocks: int, attn: bool) -> None:
        super().__init__()
        c_in = ch * ch_mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, c_in, 3, padding=1), _mid_block(c_in, attn)]
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks):
                layers.append(VAEResBlock(c_in, ch * mult))
                c_in = ch * mult
            if level > 0:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c_in, c_in, 3, padding=1)]
        self.net = nn.Sequential(*layers, _head(c_in, out_channels))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like `like`, drawn on the generator's device (CPU or GPU) and moved."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _batches(data: Tensor | Iterable) -> Iterable[Tensor]:
    """A tensor is one batch; otherwise iterate, taking x from (x, label) items."""
    if isinstance(data, Tensor):
        return [data]
    return (split_batch(b)[0] for b in data)


class VAE(nn.Module):
    """KL-regularised autoencoder (Rombach et al. 2022): a Gaussian posterior q(z | x) and a decoder p(x | z).

    Downsamples by f = 2^(len(ch_mult) - 1) (4 for the default (1, 2, 4)): 32x32x3 images give
    (latent_channels, 8, 8) latents. kl_weight is the beta of the KL term relative to the summed
    squared reconstruction error (LDM's "KL-reg" uses about 1e-6).
    """

    def __init__(self, in_dim: int = 32, channels: int = 3, latent_channels: int = 2, ch: int = 64,
                 ch_mult: Sequence[int] = (1, 2, 4), num_res_blocks: int = 1, attn: bool = True,
                 kl_weight: float = 1e-6) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        self._check(in_dim, channels, latent_channels, ch, ch_mult, num_res_blocks, kl_weight)
        self.in_dim, self.channels, self.latent_channels = in_dim, channels, latent_channels
        self.input_dims = (channels, in_dim, in_dim)  # the images it encodes
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.kl_weight = kl_weight
        self.encoder = Encoder(channels, latent_channels, ch, ch_mult, num_res_blocks, attn)
        self.decoder = Decoder(channels, latent_channels, ch, ch_mult, num_res_blocks, attn)
        self.register_buffer("scale_factor", torch.tensor(1.0))  # saved in the state_dict with the weights

    @staticmethod
    def _check(in_dim, channels, latent_channels, ch, ch_mult, num_res_blocks, kl_weight) -> None:
        for name, value in [("channels", channels), ("latent_channels", latent_channels),
                            ("num_res_blocks", num_res_blocks)]:
            if value < 1:
                raise ConfigError(f"VAE: {name}={value} must be >= 1")
        if ch < 2 or ch % 2:
            raise ConfigError(f"VAE: ch={ch} must be even and >= 2 (group norm needs >= 2 channels per group)")
        if not ch_mult or min(ch_mult) < 1:
            raise ConfigError(f"VAE: ch_mult={list(ch_mult)} must be a non-empty list of integers >= 1")
        f = 2 ** (len(ch_mult) - 1)
        if in_dim < f or in_dim % f:
            raise ConfigError(f"VAE: in_dim={in_dim} must be a positive multiple of {f} "
                              f"(2^(len(ch_mult) - 1) for ch_mult={list(ch_mult)})")
        if kl_weight < 0:
            raise ConfigError(f"VAE: kl_weight={kl_weight} must be >= 0")

    @property
    def latent_dims(self) -> tuple[int, int, int]:
        """Shape of one latent: (latent_channels, in_dim / f, in_dim / f)."""
        side = self.in_dim // self.downsample
        return (self.latent_channels, side, side)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x), each (B, latent_channels, H/f, W/f), before scale_factor."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def sample_latent(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A diffusion latent scale_factor * z with z ~ q(z | x)."""
        mean, logvar = self.encode(x)
        return self.scale_factor * (mean + (0.5 * logvar).exp() * _noise(mean, generator))  # (B, c, h, w)

    def mean_latent(self, x: Tensor) -> Tensor:
        """The deterministic diffusion latent scale_factor * E[z | x]."""
        return self.scale_factor * self.encode(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, C, H, W) from diffusion latents (already multiplied by scale_factor)."""
        return self.decoder(z / self.scale_factor)

    def decode_images(self, z: Tensor) -> Tensor:
        """`decode` clamped to the data range [-1, 1]: what a sampled latent is shown and scored as."""
        return self.decode(z).clamp(-1, 1)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction from a posterior sample, mean, logvar); scale_factor plays no part."""
        mean, logvar = self.encode(x)
        z = mean + (0.5 * logvar).exp() * _noise(mean, generator)  # reparameterisation (Kingma & Welling 2014)
        return self.decoder(z), mean, logvar

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(total, recon_mse, kl): total = (||x - x_hat||^2 + kl_weight KL(q(z|x) || N(0, I))) / D per example.

        recon_mse is the mean squared error per pixel; kl is summed over latent dimensions and
        averaged over the batch; D = C*H*W keeps total on the scale of recon_mse.
        """
        recon, mean, logvar = self(x, generator)
        recon_mse = F.mse_loss(recon, x)
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
        D = x[0].numel()
        return recon_mse + self.kl_weight * kl / D, recon_mse, kl

    @torch.no_grad()
    def fit_scale_factor(self, data: Tensor | Iterable, generator: torch.Generator | None = None) -> float:
        """Set scale_factor = 1 / std of posterior samples z over `data` (a batch or a loader); returns it."""
        device = self.scale_factor.device
        total, total_sq, count = 0.0, 0.0, 0
        for x in _batches(data):
            mean, logvar = self.encode(x.to(device))
            z = mean + (0.5 * logvar).exp() * _noise(mean, generator)  # (B, c, h, w)
            total, total_sq = total + z.double().sum().item(), total_sq + (z.double() ** 2).sum().item()
            count += z.numel()
        if count < 2:
            raise ConfigError("VAE.fit_scale_factor: data gave fewer than 2 latent values")
        var = (total_sq - total**2 / count) / (count - 1)
        self.scale_factor.fill_(var**-0.5)
        return float(self.scale_factor)

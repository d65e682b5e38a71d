"""DDPM-style U-Net (Ho et al. 2020, App. B): residual blocks, self-attention, skip connections."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.models.base import DenoiserNet, SigmaEmbedding
from diffusion_lab.models.layers import Attention, group_norm, zero_init


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding added in between and a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual, zero-initialised output."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = group_norm(ch)
        self.attn = Attention(ch, num_heads=1)
        zero_init(self.attn.out)

    def forward(self, x: Tensor) -> Tensor:
        h = rearrange(self.norm(x), "b c h w -> b (h w) c")  # (B, H*W, C)
        h = rearrange(self.attn(h), "b (h w) c -> b c h w", h=x.shape[2])
        return x + h


class Downsample(nn.Module):
    """Strided 3x3 convolution halving H and W."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Stage(nn.Module):
    """A ResBlock, then self-attention and 2x nearest-neighbour upsampling where asked."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn: bool, upsample: bool = False):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = AttnBlock(out_ch) if attn else nn.Identity()
        self.up_conv = nn.Conv2d(out_ch, out_ch, 3, padding=1) if upsample else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.attn(self.res(x, emb))  # (B, C_out, H, W)
        if self.up_conv is not None:
            h = self.up_conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, C_out, 2H, 2W)
        return h


def check_unet_args(in_dim: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, dropout: float) -> None:
    """Raise ConfigError naming the first U-Net argument outside its allowed values."""
    if len(ch_mult) == 0 or min(ch_mult) < 1 or ch < 1:
        raise ConfigError(f"Unet: ch={ch} and ch_mult={list(ch_mult)} must be positive (ch_mult non-empty)")
    if in_dim < 1 or in_dim % 2 ** (len(ch_mult) - 1):
        raise ConfigError(f"Unet: in_dim={in_dim} must be divisible by 2**(len(ch_mult)-1)={2 ** (len(ch_mult) - 1)}")
    if num_res_blocks < 1:
        raise ConfigError(f"Unet: num_res_blocks={num_res_blocks} must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"Unet: dropout={dropout} must be in [0, 1)")


class Unet(DenoiserNet):
    """DDPM U-Net (Ho et al. 2020): ch * ch_mult[k] channels at size in_dim / 2**k, self-attention at the levels k in
    attn_levels (the paper's 16x16 of 32x32 images is level 1).

    The layout of smalldiffusion's Unet (itself DDIM's), with these differences: sigma enters as sinusoidal features
    of log(sigma)/4 through an MLP (smalldiffusion: sin and cos of log(sigma)/2); group norms use up to 32 groups of
    at least 2 channels (smalldiffusion: always 32 groups, which needs ch >= 32); each residual block's second
    convolution and each attention output start at zero; down-sampling pads symmetrically. The recipes' numbers are
    this network's.
    """

    def __init__(
        self,
        in_dim: int = 28,
        channels: int = 1,
        ch: int = 64,
        ch_mult: Sequence[int] = (1, 1, 2),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] = (1,),
        dropout: float = 0.1,
        num_classes: int = 0,
        cond_dropout: float = 0.0,
    ) -> None:
        ch_mult, attn_levels = list(ch_mult), list(attn_levels)
        check_unet_args(in_dim, ch, ch_mult, num_res_blocks, dropout)
        if not set(attn_levels) <= set(range(len(ch_mult))):
            raise ConfigError(f"Unet: attn_levels={attn_levels} must be levels of ch_mult: 0 to {len(ch_mult) - 1}")
        emb_dim = 4 * ch
        super().__init__((channels, in_dim, in_dim), num_classes, cond_dropout, label_dim=emb_dim)
        self.sigma_emb = SigmaEmbedding(2 * ((ch + 1) // 2), out_dim=emb_dim)
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)
        attn = [level in attn_levels for level in range(len(ch_mult))]
        skip_chs = self._build_down(ch, ch_mult, num_res_blocks, attn, dropout)
        mid = ch * ch_mult[-1]
        self.mid = nn.ModuleList([Stage(mid, mid, emb_dim, dropout, True), Stage(mid, mid, emb_dim, dropout, False)])
        self._build_up(ch, ch_mult, num_res_blocks, attn, dropout, skip_chs)
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, channels, 3, padding=1)))

    def _build_down(self, ch: int, ch_mult: list[int], n_res: int, attn: list[bool], dropout: float) -> list[int]:
        """Fill self.down; return the channel count of every activation saved for a skip connection."""
        self.down = nn.ModuleList()
        skip_chs, cur = [ch], ch
        for level, mult in enumerate(ch_mult):
            for _ in range(n_res):
                self.down.append(Stage(cur, ch * mult, 4 * ch, dropout, attn[level]))
                cur = ch * mult
                skip_chs.append(cur)
            if level < len(ch_mult) - 1:
                self.down.append(Downsample(cur))
                skip_chs.append(cur)
        return skip_chs

    def _build_up(self, ch: int, ch_mult: list[int], n_res: int, attn: list[bool], dropout: float, skip_chs: list[int]):
        """Fill self.up: n_res + 1 stages per level, each consuming one skip; the last one upsamples."""
        self.up = nn.ModuleList()
        cur = ch * ch_mult[-1]
        for level in reversed(range(len(ch_mult))):
            for i in range(n_res + 1):
                upsample = level > 0 and i == n_res
                self.up.append(Stage(cur + skip_chs.pop(), ch * ch_mult[level], 4 * ch, dropout, attn[level], upsample))
                cur = ch * ch_mult[level]

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        emb = self.sigma_emb(self.sigma_batch(sigma, x))  # (B, 4ch)
        y = self.embed_labels(cond, x)
        emb = emb if y is None else emb + y
        skips = [self.conv_in(x)]  # (B, ch, H, W)
        for layer in self.down:
            skips.append(layer(skips[-1], emb))
        h = skips[-1]
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)  # (B, C, H, W)

"""Diffusion Transformer with adaLN-Zero blocks (Peebles & Xie 2023), optionally with cross-attention."""

import torch
from einops import rearrange
from torch import Tensor, nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.models.base import DenoiserNet, SigmaEmbedding
from diffusion_lab.models.layers import Attention, zero_init

COND_MODES = ("adaln", "cross_attn")
SIGMA_FEATURES = 256  # sinusoidal features before the sigma MLP, as the paper's timestep embedder


def sincos_pos_embed_2d(grid: int, dim: int) -> Tensor:
    """Fixed 2D sin-cos position embedding (1, grid*grid, dim): half the channels per axis."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # (G, G) each
    axes = [torch.outer(a.flatten(), omega) for a in (rows, cols)]  # (G*G, D/4) each
    emb = torch.cat([f(a) for a in axes for f in (torch.sin, torch.cos)], dim=1)  # (G*G, D)
    return emb.float()[None]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift, with (B, 1, D) shift and scale."""
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero (Peebles & Xie 2023, Fig. 3); cross-attention on a context if asked."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, cross_attn: bool) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads)
        self.norm_ctx = nn.LayerNorm(width) if cross_attn else None
        self.cross = Attention(width, num_heads) if cross_attn else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), zero_init(nn.Linear(width, 6 * width)))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)  # (B, 1, D) each
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))  # (B, N, D)
        if self.cross is not None:
            x = x + self.cross(self.norm_ctx(x), context)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a zero-initialised linear map from tokens to patches."""

    def __init__(self, width: int, patch_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), zero_init(nn.Linear(width, 2 * width)))
        self.linear = zero_init(nn.Linear(width, patch_dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p*p*C)


def check_dit_args(in_dim: int, channels: int, patch_size: int, depth: int, width: int, cond_mode: str) -> None:
    """Raise ConfigError naming the first DiT argument outside its allowed values."""
    if min(in_dim, channels, patch_size, depth) < 1:
        raise ConfigError(
            f"DiT: in_dim={in_dim}, channels={channels}, patch_size={patch_size}, depth={depth} must be >= 1"
        )
    if in_dim % patch_size:
        raise ConfigError(f"DiT: patch_size={patch_size} must divide in_dim={in_dim}")
    if width < 4 or width % 4:
        raise ConfigError(f"DiT: head_dim * num_heads={width} must be a positive multiple of 4 (2D sin-cos positions)")
    if cond_mode not in COND_MODES:
        raise ConfigError(f"DiT: cond_mode={cond_mode!r} must be one of {COND_MODES}")


class DiT(DenoiserNet):
    """Diffusion Transformer (Peebles & Xie 2023): patchify, adaLN-Zero blocks, unpatchify.

    Width = head_dim * num_heads. The paper's design, not a copy of smalldiffusion's DiT, which the fashion_mnist_dit
    recipe otherwise follows: here sigma enters as 256 sinusoidal features of log(sigma)/4 through a 2-layer MLP
    (smalldiffusion: sin and cos of log(sigma)/2 through an MLP), labels as a plain embedding added to it
    (smalldiffusion: embedding, SiLU, linear), one zero-initialised linear map gives each block's six adaLN
    shifts, scales and gates (smalldiffusion: one per norm plus one for the gates), and layers keep PyTorch's default
    initialisation (smalldiffusion: Xavier). The recipes' numbers are this network's.

    cond_mode="adaln": the label embedding is added to the sigma embedding that drives adaLN.
    cond_mode="cross_attn": every block cross-attends to a condition sequence, either one token per
    label embedding or a float cond of shape (B, L, width) given directly (its null is zeros).
    """

    def __init__(
        self,
        in_dim: int = 28,
        channels: int = 1,
        patch_size: int = 2,
        depth: int = 6,
        head_dim: int = 32,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        cond_dropout: float = 0.0,
        cond_mode: str = "adaln",
    ) -> None:
        width = head_dim * num_heads
        check_dit_args(in_dim, channels, patch_size, depth, width, cond_mode)
        if mlp_ratio <= 0:
            raise ConfigError(f"DiT: mlp_ratio={mlp_ratio} must be > 0")
        super().__init__((channels, in_dim, in_dim), num_classes, cond_dropout, label_dim=width)
        self.patch_size = patch_size
        self.width = width
        self.cond_mode = cond_mode
        self.patch_embed = nn.Linear(channels * patch_size**2, width)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(in_dim // patch_size, width), persistent=False)
        self.sigma_emb = SigmaEmbedding(SIGMA_FEATURES, out_dim=width)
        cross = cond_mode == "cross_attn"
        self.blocks = nn.ModuleList(DiTBlock(width, num_heads, mlp_ratio, cross) for _ in range(depth))
        self.final = FinalLayer(width, channels * patch_size**2)

    def null_cond(self, cond: Tensor) -> Tensor:
        """Zeros for a float condition sequence (cross_attn mode), else the null label."""
        if self.cond_mode == "cross_attn" and cond.is_floating_point():
            return torch.zeros_like(cond)
        return super().null_cond(cond)

    def context(self, cond: Tensor | None, x: Tensor) -> Tensor:
        """The condition sequence (B, L, width) for cross-attention; zeros stand for 'no condition'."""
        if cond is None or not cond.is_floating_point():
            y = self.embed_labels(cond, x)  # (B, width) or None
            return x.new_zeros(x.shape[0], 1, self.width) if y is None else y[:, None]
        if cond.ndim != 3 or cond.shape[0] != x.shape[0] or cond.shape[2] != self.width:
            shape = f"({x.shape[0]}, L, {self.width})"
            raise ConfigError(f"DiT: a float cond must have shape {shape}, got {tuple(cond.shape)}")
        if self.training and self.cond_dropout > 0:
            keep = torch.rand(cond.shape[0], device=cond.device) >= self.cond_dropout  # (B,)
            cond = cond * keep[:, None, None]
        return cond

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        p, grid = self.patch_size, x.shape[-1] // self.patch_size
        tokens = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)  # (B, N, p*p*C)
        h = self.patch_embed(tokens) + self.pos_embed  # (B, N, D)
        c = self.sigma_emb(self.sigma_batch(sigma, x))  # (B, D)
        context = None
        if self.cond_mode == "cross_attn":
            context = self.context(cond, x)  # (B, L, D)
        elif (y := self.embed_labels(cond, x)) is not None:
            c = c + y
        for block in self.blocks:
            h = block(h, c, context)
        out = self.final(h, c)  # (B, N, p*p*C)
        return rearrange(out, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=grid, p1=p, p2=p)

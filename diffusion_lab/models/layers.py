"""Small building blocks shared by the networks: attention, group norm and zero initialisation."""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero, so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with a group count dividing `channels`, at most 32, and >= 2 channels per group.

    One channel per group would cancel the per-channel embedding a ResBlock adds before its norm.
    """
    groups = math.gcd(32, channels)  # a power of two dividing channels, so halving keeps it a divisor
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017); cross-attention when given a context."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.num_heads)  # (B, h, N, d)
        k, v = rearrange(self.to_kv(context), "b m (two h d) -> two b h m d", two=2, h=self.num_heads)  # (B, h, M, d)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # CPU's bf16 attention kernel is slower than its fp32 one (docs/performance.md): attend in fp32.
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.out(rearrange(out, "b h n d -> b n (h d)"))

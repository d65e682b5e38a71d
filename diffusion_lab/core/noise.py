"""Per-sample noise for a whole batch at once: row i of every draw depends only on seed i and on how many draws came
before it, so a sample is the same whatever batch, process or device draws it.

torch's generators are one stream each, so per-sample streams took one generator and one randn call per sample per
draw: at batch 1,024 that multiplied the toy MLP's sampling time by 15 (scripts/benchmark.py). Here the noise is a
counter-based generator written with int64 tensor ops: the bits of (seed, draw, element) are SplitMix64's output for
that counter (Steele, Lea & Flood 2014), made a normal by the inverse normal CDF. int64 products wrap modulo 2**64
on CPU and CUDA alike, which SplitMix64 needs; `>>` on int64 is arithmetic, so the logical shift is masked.
"""
import math
from collections.abc import Sequence

import torch

from diffusion_lab.errors import ConfigError


def _int64(x: int) -> int:
    """A Python int reduced modulo 2**64, as the int64 with the same bits."""
    x %= 1 << 64
    return x - (1 << 64) if x >= 1 << 63 else x


GAMMA = _int64(0x9E3779B97F4A7C15)  # SplitMix64's increment (the golden ratio in 64 bits)
MIX1, MIX2 = _int64(0xBF58476D1CE4E5B9), _int64(0x94D049BB133111EB)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 z by k bits."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function of int64 z (elementwise, wrapping)."""
    z = (z ^ _shr(z, 30)) * MIX1
    z = (z ^ _shr(z, 27)) * MIX2
    return z ^ _shr(z, 31)


def uniform53(bits: torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1) (float64) from the top 53 bits of int64 bits: (k + 1/2) / 2**53."""
    return (_shr(bits, 11).double() + 0.5) * 2.0**-53


class NoiseStreams:
    """One stream of standard normal noise per sample: `randn((B, ...))` gives row i from seeds[i], the k-th draw of
    stream i being the same whatever rows stand beside it.

    Draw d of sample seed s, element j: output j + 1 of SplitMix64 started at key(s, d) = mix64(mix64(s + GAMMA)
    + d * GAMMA), as a uniform u in (0, 1), then Phi^-1(u) (float64). Computed on `device`.
    """

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.seeds = torch.as_tensor([int(s) for s in seeds], dtype=torch.int64, device=self.device)  # (B,)
        self.base = mix64(self.seeds + GAMMA)  # (B,)
        self.draws = 0

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Standard normal noise of shape (B, ...), B = the number of streams; advances every stream by one draw."""
        if shape[0] != len(self):
            raise ConfigError(f"{len(self)} noise streams for a batch of {shape[0]}: need one per sample")
        n = math.prod(shape[1:])
        key = mix64(self.base + _int64(self.draws * GAMMA))  # (B,)
        self.draws += 1
        counters = torch.arange(1, n + 1, dtype=torch.int64, device=self.device) * GAMMA  # (n,)
        z = torch.special.ndtri(uniform53(mix64(key[:, None] + counters)))  # (B, n)
        return z.to(dtype or torch.get_default_dtype()).reshape(tuple(shape))

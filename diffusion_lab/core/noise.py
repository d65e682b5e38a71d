"""Per-sample noise for a whole batch at once: row i of every draw depends only on seed i and on how many draws came
before it, so a sample is the same whatever batch, process or device draws it.

torch's generators are one stream each: per-sample streams took one generator and one randn call per sample per
draw (on a GPU, a kernel launch each). Here each sample's stream is SplitMix64 (Steele, Lea & Flood 2014) written
with int64 tensor ops over the whole batch, its outputs made normal by the inverse normal CDF. int64 products wrap
modulo 2**64 on CPU and CUDA alike, which SplitMix64 needs; `>>` on int64 is arithmetic, so the logical shift is
masked.
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

    Stream i is SplitMix64 started at mix64(seeds[i] + GAMMA) (a hashed start, so that nearby seeds do not give
    shifted copies of one sequence); each element takes its next output, as a uniform u in (0, 1), and becomes
    Phi^-1(u) (float64). Computed on `device`, about twenty tensor operations per draw whatever the batch.
    """

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.seeds = torch.as_tensor([int(s) for s in seeds], dtype=torch.int64, device=self.device)  # (B,)
        self.state = mix64(self.seeds + GAMMA)  # (B,) SplitMix64's state, before its first output
        self.position = 0  # outputs taken from every stream so far

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Standard normal noise of shape (B, ...), B = the number of streams; each stream moves on by its size."""
        if shape[0] != len(self):
            raise ConfigError(f"{len(self)} noise streams for a batch of {shape[0]}: need one per sample")
        n = math.prod(shape[1:])
        steps = torch.arange(self.position + 1, self.position + n + 1, dtype=torch.int64, device=self.device) * GAMMA
        self.position += n
        z = torch.special.ndtri(uniform53(mix64(self.state[:, None] + steps)))  # (B, n)
        return z.to(dtype or torch.get_default_dtype()).reshape(tuple(shape))

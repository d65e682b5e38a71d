"""Per-sample noise for a whole batch at once: row i of every draw depends only on seed i and on how many draws came
before it, so a sample is the same whatever batch, process or device draws it.

torch's generators are one stream each: per-sample streams took one generator and one randn call per sample per
draw (on a GPU, a kernel launch each). Here each sample's stream is SplitMix64 (Steele, Lea & Flood 2014) written
with int64 tensor ops over the whole batch, its outputs made normal by Box-Muller. int64 products wrap
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
    shifted copies of one sequence); each element takes its next output as a uniform in (0, 1), and consecutive
    pairs of uniforms become pairs of normals by Box-Muller (float64). Computed on `device`, about twenty tensor
    operations for the whole batch. Small draws, e.g. the 2-D toys' noise at every step, would each pay those
    operations' overhead: a draw whose values are not computed yet computes the next 1, 2, 4, ... draws of its size
    at once (doubling at each refill, up to `buffer_elements` values over the batch), and later draws slice them. A
    sampler that draws once pays for one draw; one that draws at every step, for at most twice its draws in a few
    refills. The streams are counter-based, so buffering changes no value.
    """

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu", buffer_elements: int = 1 << 15):
        self.device = torch.device(device)
        if isinstance(seeds, range):  # what sampling passes; a tensor at once instead of from B Python ints
            self.seeds = torch.arange(seeds.start, seeds.stop, seeds.step, dtype=torch.int64, device=self.device)
        else:
            self.seeds = torch.as_tensor([int(s) for s in seeds], dtype=torch.int64, device=self.device)  # (B,)
        self.state = mix64(self.seeds + GAMMA)  # (B,) SplitMix64's state, before its first output
        self.position = 0  # outputs taken from every stream so far
        self.buffer_elements = buffer_elements
        self._buffer = self.state.new_empty((len(self), 0), dtype=torch.float64)  # outputs from _buffer_start on
        self._buffer_start = 0
        self._refill_draws = 1  # draws the next refill computes, doubled at each refill

    def __len__(self) -> int:
        return len(self.seeds)

    def normals(self, start: int, n: int) -> torch.Tensor:
        """Normals start .. start + n - 1 of every stream, (B, n) float64: Box-Muller on the pairs of uniforms
        (u_2p, u_2p+1) of outputs 2p and 2p + 1 gives normals 2p and 2p + 1."""
        first, end = start // 2, (start + n + 1) // 2  # the pairs that cover start .. start + n - 1
        steps = torch.arange(2 * first + 1, 2 * end + 1, dtype=torch.int64, device=self.device) * GAMMA
        u = uniform53(mix64(self.state[:, None] + steps)).view(len(self), end - first, 2)
        radius, angle = u[..., 0].log().mul_(-2).sqrt_(), u[..., 1].mul(2 * math.pi)
        z = torch.stack([radius * angle.cos(), radius * angle.sin()], -1).view(len(self), -1)
        return z[:, start - 2 * first:start - 2 * first + n]

    def randn(self, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Standard normal noise of shape (B, ...), B = the number of streams; each stream moves on by its size."""
        if shape[0] != len(self):
            raise ConfigError(f"{len(self)} noise streams for a batch of {shape[0]}: need one per sample")
        n = math.prod(shape[1:])
        offset = self.position - self._buffer_start
        if offset + n > self._buffer.shape[1]:
            draws = max(1, min(self._refill_draws, self.buffer_elements // max(1, len(self) * n)))
            self._refill_draws = 2 * draws
            self._buffer, self._buffer_start, offset = self.normals(self.position, draws * n), self.position, 0
        self.position += n
        z = self._buffer[:, offset:offset + n]  # (B, n)
        return z.to(dtype or torch.get_default_dtype(), copy=True).reshape(tuple(shape))

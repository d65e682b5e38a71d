"""NoiseStreams, the per-sample noise of sampling: against a plain-Python SplitMix64 and inverse normal CDF, normality,
independence, and rows that do not depend on the batch."""
from statistics import NormalDist

import pytest
import torch
from scipy import stats

from diffusion_lab.core.noise import NoiseStreams, mix64
from diffusion_lab.errors import ConfigError

MASK = (1 << 64) - 1


class SplitMix64:
    """The reference generator, written from Steele, Lea & Flood (2014) with Python ints."""

    def __init__(self, state: int):
        self.state = state & MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def reference(seed: int, n: int) -> list[float]:
    """The first n normals of the stream of `seed`, as NoiseStreams documents it."""
    gen = SplitMix64(SplitMix64(seed).next())  # started at mix64(seed + GAMMA)
    return [NormalDist().inv_cdf(((gen.next() >> 11) + 0.5) * 2.0**-53) for _ in range(n)]


def test_splitmix64_matches_its_published_first_output():
    assert SplitMix64(0).next() == 0xE220A8397B1DCDAF  # the reference itself, against splitmix64.c seeded with 0
    gamma = torch.tensor([0x9E3779B97F4A7C15 - (1 << 64)])
    assert int(mix64(gamma)) & MASK == 0xE220A8397B1DCDAF


def test_streams_match_the_python_reference_across_draws():
    seeds = [0, 5, 2**40 + 3]
    streams = NoiseStreams(seeds)
    got = torch.cat([streams.randn((3, 2, 3), dtype=torch.float64).flatten(1), streams.randn((3, 4), torch.float64)], 1)
    want = torch.tensor([reference(s, 10) for s in seeds], dtype=torch.float64)  # draws continue each stream
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_noise_is_standard_normal_and_independent_across_samples_and_draws():
    streams = NoiseStreams(range(1000))
    a, b = streams.randn((1000, 200)), streams.randn((1000, 200))
    assert stats.kstest(a.flatten().numpy(), "norm").pvalue > 1e-3
    assert abs(a.mean()) < 0.01 and abs(a.std() - 1) < 0.01 and a.dtype == torch.float32
    assert abs(torch.corrcoef(torch.stack([a[:-1].flatten(), a[1:].flatten()]))[0, 1]) < 0.01  # seed i vs i + 1
    assert abs(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) < 0.01  # draw 0 vs draw 1


def test_a_row_does_not_depend_on_the_batch_it_is_drawn_in():
    big, one = NoiseStreams([3, 4, 5]), NoiseStreams([4])
    for _ in range(3):
        assert torch.equal(big.randn((3, 7))[1], one.randn((1, 7))[0])
    with pytest.raises(ConfigError, match="3 noise streams for a batch of 2"):
        NoiseStreams([1, 2, 3]).randn((2, 7))

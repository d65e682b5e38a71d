"""NoiseStreams, the per-sample noise of sampling: against a plain-Python SplitMix64 and Box-Muller, normality,
independence, and rows that do not depend on the batch."""
import math

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
    out = []
    while len(out) < n:
        u, v = (((gen.next() >> 11) + 0.5) * 2.0**-53 for _ in range(2))
        radius = math.sqrt(-2 * math.log(u))
        out += [radius * math.cos(2 * math.pi * v), radius * math.sin(2 * math.pi * v)]
    return out[:n]


def test_splitmix64_matches_its_published_first_output():
    assert SplitMix64(0).next() == 0xE220A8397B1DCDAF  # the reference itself, against splitmix64.c seeded with 0
    gamma = torch.tensor([0x9E3779B97F4A7C15 - (1 << 64)])
    assert int(mix64(gamma)) & MASK == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("buffer_elements", [0, 1 << 16])  # each draw computed alone, or sliced from a buffer
def test_streams_match_the_python_reference_across_draws(buffer_elements):
    seeds = [0, 5, 2**40 + 3]
    streams = NoiseStreams(seeds, buffer_elements=buffer_elements)
    draws = [streams.randn(shape, torch.float64).flatten(1) for shape in [(3, 1, 3), (3, 4), (3, 3)]]  # odd starts
    got = torch.cat(draws, 1)
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


def test_buffered_draws_equal_draws_computed_one_by_one():
    buffered, unbuffered = NoiseStreams([7, 8], buffer_elements=50), NoiseStreams([7, 8], buffer_elements=0)
    for size in [2, 2, 3, 2, 30, 2, 1, 2, 2, 2, 2, 2, 2, 2, 2]:  # crosses buffer refills and changes size
        got, want = buffered.randn((2, size), torch.float64), unbuffered.randn((2, size), torch.float64)
        assert torch.equal(got, want)
        got.zero_()  # a draw is the caller's: writing to it changes no later draw
    assert buffered.position == unbuffered.position == 58


def test_a_range_of_seeds_gives_the_streams_of_its_values():
    assert torch.equal(NoiseStreams(range(5, 11, 2)).randn((3, 4)), NoiseStreams([5, 7, 9]).randn((3, 4)))

"""Low-dimensional toy data sets generated in code: swiss rolls, a labelled tree, a Gaussian mixture, a sinusoid.

Every set keeps all points in memory as `data` (N, D) float32 (and `labels` (N,) int64 or None), is
deterministic given its arguments (a local numpy Generator seeded by `seed`; never the global RNG)
and lies roughly in [-1, 1]^D, the scale the noise schedules assume.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffusion_lab.data.base import InMemoryDataset, check_float, check_int
from diffusion_lab.errors import ConfigError


class Swissroll(InMemoryDataset):
    """smalldiffusion's 2D swiss roll: N points t (cos t, sin t) / tmax, t = tmin + tmax * linspace(0, 1, N).

    As in smalldiffusion, t spans [tmin, tmin + tmax] and tmax is also the scale, so the same arguments give the
    same points (its documented call, Swissroll(pi / 2, 5 pi, 100), ends at radius 1.1).

    Noise-free and fixed, so a small N is fine: the training loop samples batches with replacement.
    """

    def __init__(self, tmin: float = math.pi / 2, tmax: float = 5 * math.pi, N: int = 100) -> None:
        check_int("N", N, 1)
        if not (isinstance(tmin, (int, float)) and isinstance(tmax, (int, float)) and 0 < tmax):
            raise ConfigError(f"Swissroll needs numbers tmin and tmax with tmax > 0, got tmin={tmin!r}, tmax={tmax!r}")
        t = tmin + torch.linspace(0, 1, N, dtype=torch.float64) * tmax  # (N,)
        xy = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / tmax  # (N, 2)
        super().__init__(xy, None, 0)


class Swissroll3D(InMemoryDataset):
    """A 3D swiss roll as in sklearn.datasets.make_swiss_roll, rescaled to about [-1, 1]^3.

    t ~ U(1.5 pi, 4.5 pi) (sklearn's range); the point is (t cos t, _, t sin t) / 4.5 pi with the
    second coordinate uniform in [-height/2, height/2], plus N(0, noise^2) on every coordinate
    (noise in these rescaled units). `t` (N,) is kept as an attribute for colouring plots.
    With num_classes K > 0 the label is the bin of t among K equal bins along the roll (0 = innermost),
    so a class-conditional sample is one section of the roll.
    """

    def __init__(self, n_samples: int = 10000, height: float = 2.0, noise: float = 0.05, seed: int = 0,
                 num_classes: int = 0) -> None:
        check_int("n_samples", n_samples, 1)
        check_float("height", height)
        check_float("noise", noise)
        check_int("num_classes", num_classes, 0)
        rng = np.random.default_rng(seed)
        t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n_samples))  # (N,)
        y = height * (rng.random(n_samples) - 0.5)  # (N,)
        xyz = np.stack([t * np.cos(t) / (4.5 * np.pi), y, t * np.sin(t) / (4.5 * np.pi)], axis=1)  # (N, 3)
        xyz = xyz + noise * rng.standard_normal(xyz.shape)
        labels = np.minimum((t / (1.5 * np.pi) - 1.0) / 2.0 * num_classes, num_classes - 1).astype(np.int64)  # (N,)
        super().__init__(torch.from_numpy(xyz), torch.from_numpy(labels) if num_classes else None, num_classes)
        self.t = torch.from_numpy(t).float()


def tree_paths(branching_factor: int, depth: int, shrink: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Segment start and end points along every root-to-leaf path of a planar tree rooted at the origin.

    The first level fans out evenly over the full circle; each later level splits its parent's
    direction over a cone `shrink` times as wide as the one before. Branch lengths shrink by the
    same factor and sum to 1, so leaves lie at distance <= 1. Returns starts and ends, each
    (branching_factor**depth, depth, 2), leaves in lexicographic order of their child indices.
    """
    b = branching_factor
    lengths = shrink ** np.arange(depth)
    lengths = lengths / lengths.sum()  # (depth,)
    k = np.arange(b)
    pos, angle = np.zeros((1, 2)), np.zeros(1)
    starts, ends = np.zeros((1, 0, 2)), np.zeros((1, 0, 2))
    for level in range(depth):
        if level == 0:
            child = 2 * np.pi * k / b  # (b,)
        else:
            width = 2 * np.pi / b * shrink ** (level - 1)
            child = angle[:, None] + ((k + 0.5) / b - 0.5) * width  # (n, b)
        child = np.broadcast_to(child, (len(pos), b)).reshape(-1)  # (n b,)
        pos = np.repeat(pos, b, axis=0)  # (n b, 2)
        new = pos + lengths[level] * np.stack([np.cos(child), np.sin(child)], axis=1)  # (n b, 2)
        starts = np.concatenate([np.repeat(starts, b, axis=0), pos[:, None]], axis=1)
        ends = np.concatenate([np.repeat(ends, b, axis=0), new[:, None]], axis=1)
        pos, angle = new, child
    return starts, ends


class TreeDataset(InMemoryDataset):
    """2D points on the branches of a tree that splits `branching_factor` ways at each of `depth` levels.

    Each leaf is a class (branching_factor**depth of them, 64 by default) and owns `points_per_leaf`
    points spread over its whole root-to-leaf path, so a class-conditional sample is one path and the
    unconditional distribution is the whole tree. A point lands on the level-l segment with
    probability proportional to branching_factor**l, which gives every segment of the tree the same
    expected number of points; the position along the segment is uniform, plus N(0, noise^2).
    """

    def __init__(
        self, branching_factor: int = 4, depth: int = 3, points_per_leaf: int = 200, noise: float = 0.01, seed: int = 0
    ) -> None:
        check_int("branching_factor", branching_factor, 2)
        check_int("depth", depth, 1)
        check_int("points_per_leaf", points_per_leaf, 1)
        check_float("noise", noise)
        starts, ends = tree_paths(branching_factor, depth)  # (L, depth, 2) each
        num_leaves = starts.shape[0]
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(num_leaves), points_per_leaf)  # (N,)
        level_p = branching_factor ** np.arange(depth, dtype=np.float64)
        level = rng.choice(depth, size=labels.shape[0], p=level_p / level_p.sum())  # (N,)
        s = rng.random((labels.shape[0], 1))  # (N, 1)
        a, b = starts[labels, level], ends[labels, level]  # (N, 2)
        xy = a + s * (b - a) + noise * rng.standard_normal(a.shape)
        super().__init__(torch.from_numpy(xy), torch.from_numpy(labels), num_leaves)


class GaussianMixture(InMemoryDataset):
    """An equal-weight mixture of `num_modes` isotropic Gaussians; the label is the mode index.

    In dim >= 2 the means sit evenly on a circle of `radius` in the first two coordinates (zeros
    elsewhere); in dim 1 they are evenly spaced in [-radius, radius]. Every mode gets
    n_samples // num_modes points (the first n_samples % num_modes modes one more), in shuffled
    order. `means` (num_modes, dim) is kept for closed-form checks such as the ideal denoiser.
    """

    def __init__(
        self,
        n_samples: int = 10000,
        num_modes: int = 8,
        radius: float = 1.0,
        std: float = 0.05,
        dim: int = 2,
        seed: int = 0,
    ) -> None:
        check_int("n_samples", n_samples, 1)
        check_int("num_modes", num_modes, 1)
        check_int("dim", dim, 1)
        check_float("radius", radius)
        check_float("std", std)
        means = np.zeros((num_modes, dim))
        if dim == 1:
            means[:, 0] = np.linspace(-radius, radius, num_modes) if num_modes > 1 else 0.0
        else:
            phi = 2 * np.pi * np.arange(num_modes) / num_modes  # (K,)
            means[:, :2] = radius * np.stack([np.cos(phi), np.sin(phi)], axis=1)
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(n_samples) % num_modes)  # (N,)
        x = means[labels] + std * rng.standard_normal((n_samples, dim))  # (N, dim)
        super().__init__(torch.from_numpy(x), torch.from_numpy(labels), num_modes)
        self.means = torch.from_numpy(means).float()


class Sinusoid(InMemoryDataset):
    """Two periods of a sine wave in 2D: (t / 2 pi, sin t) for t ~ U(-2 pi, 2 pi), plus N(0, noise^2) noise.

    Both coordinates lie in about [-1, 1]; no labels.
    """

    def __init__(self, n_samples: int = 10000, noise: float = 0.05, seed: int = 0) -> None:
        check_int("n_samples", n_samples, 1)
        check_float("noise", noise)
        rng = np.random.default_rng(seed)
        t = rng.uniform(-2 * np.pi, 2 * np.pi, n_samples)  # (N,)
        xy = np.stack([t / (2 * np.pi), np.sin(t)], axis=1)  # (N, 2)
        xy = xy + noise * rng.standard_normal(xy.shape)
        super().__init__(torch.from_numpy(xy), None, 0)

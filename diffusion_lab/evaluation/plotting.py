"""Pictures of samples: image grids (torchvision) and plots of D-dimensional points over the data (matplotlib).

Points are drawn by dimension: 1D as overlaid histograms, 2D/3D as scatter plots, and higher D as a grid of
pairwise 2D scatter projections of the first MAX_PAIR_DIMS coordinates.
"""
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

MAX_PAIR_DIMS = 4  # points with D > 3 show every pair of their first 4 coordinates: 6 panels


def save_samples(x: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None, title: str = "",
                 nrow: int | None = None) -> Path:
    """Writes x (B, C, H, W) in [-1, 1] as a grid, or points x (B, D) over `reference` points (M, D)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().float().cpu()
    if x.ndim == 4:
        from torchvision.utils import save_image

        save_image((x + 1) / 2, path, nrow=nrow or max(int(len(x) ** 0.5), 1), padding=1, pad_value=1.0)
        return path
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"cannot draw samples of shape {tuple(x.shape)}: expected images (B, C, H, W) or "
                         "points (B, D)")
    ref = None if reference is None else reference.detach().float().cpu().reshape(len(reference), -1)
    if ref is not None and ref.shape[1] != x.shape[1]:
        raise ValueError(f"reference points have {ref.shape[1]} dimensions, samples {x.shape[1]}")
    draw = {1: _histogram, 2: _scatter, 3: _scatter}.get(x.shape[1], _pairs)
    draw(x, ref, path, title)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)


def _bins(*sets: torch.Tensor | None, n: int = 50) -> np.ndarray:
    """Shared histogram bin edges over the finite values of the given 1D point sets."""
    values = np.concatenate([s.reshape(-1).numpy() for s in sets if s is not None])
    values = values[np.isfinite(values)]
    lo, hi = (values.min(), values.max()) if len(values) else (-1.0, 1.0)
    return np.linspace(lo, hi if hi > lo else lo + 1.0, n + 1)


def _hist_ax(ax, x: torch.Tensor, reference: torch.Tensor | None, label: bool = True) -> None:
    """Histograms of samples (outlined) over data (filled) on one axis; non-finite samples are left out."""
    bins = _bins(x, reference)
    if reference is not None:
        ax.hist(reference[:, 0].numpy(), bins=bins, density=True, color="C1", alpha=0.5, label="data")
    finite = x[:, 0][torch.isfinite(x[:, 0])].numpy()
    if len(finite):
        ax.hist(finite, bins=bins, density=True, histtype="step", color="C0", linewidth=1.5, label="samples")
    if label:
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("density")


def _histogram(x: torch.Tensor, reference: torch.Tensor | None, path: Path, title: str) -> None:
    fig, ax = _pyplot().subplots(figsize=(5, 4))
    _hist_ax(ax, x, reference)
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path, dpi=100)


def _scatter(x: torch.Tensor, reference: torch.Tensor | None, path: Path, title: str) -> None:
    three_d = x.shape[1] == 3
    fig = _pyplot().figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d" if three_d else None)
    for pts, style in [(x, dict(c="C0", s=4, label="samples")), (reference, dict(c="C1", s=6, label="data"))]:
        if pts is not None:
            ax.scatter(*pts.T.numpy(), alpha=0.7, **style)
    ax.legend(loc="upper right")
    ax.set_title(title)
    if not three_d:
        ax.set_aspect("equal")
    fig.tight_layout()
    _save(fig, path, dpi=100)


def _pairs(x: torch.Tensor, reference: torch.Tensor | None, path: Path, title: str) -> None:
    """Samples over data in every pair of the first MAX_PAIR_DIMS coordinates, one panel per pair."""
    dims = min(x.shape[1], MAX_PAIR_DIMS)
    pairs = list(combinations(range(dims), 2))
    cols = min(len(pairs), 3)
    rows = -(-len(pairs) // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.6), squeeze=False)
    for ax, (i, j) in zip(axes.flat, pairs):
        if reference is not None:
            ax.scatter(reference[:, i].numpy(), reference[:, j].numpy(), c="C1", s=6, alpha=0.5, label="data")
        ax.scatter(x[:, i].numpy(), x[:, j].numpy(), c="C0", s=4, alpha=0.7, label="samples")
        ax.set_xlabel(f"$x_{{{i + 1}}}$")
        ax.set_ylabel(f"$x_{{{j + 1}}}$")
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_axis_off()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncols=2, markerscale=3, frameon=False)
    shown = f"first {dims} of {x.shape[1]} dims" if dims < x.shape[1] else f"all {dims} dims"
    fig.suptitle(f"{title} ({shown}, pairwise)" if title else f"pairwise projections, {shown}", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, path, dpi=100)


def save_trajectory(xs: list[torch.Tensor], path: str | Path, reference: torch.Tensor | None = None) -> Path:
    """A denoising trajectory: a strip of images per sample (rows) over steps (columns), or point-cloud frames."""
    path = Path(path)
    frames = [x.detach().float().cpu() for x in xs]
    if frames[0].ndim == 4:
        from torchvision.utils import save_image

        strip = torch.stack(frames, dim=1).flatten(0, 1)  # (B * T, C, H, W), one row per sample
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(((strip + 1) / 2).clamp(0, 1), path, nrow=len(frames), padding=1, pad_value=1.0)
        return path
    return _frames(frames, None if reference is None else reference.detach().float().cpu(), path)


def _frames(frames: list[torch.Tensor], reference: torch.Tensor | None, path: Path) -> Path:
    """Six frames of a point trajectory over the data: histograms in 1D, the first two or three coordinates else."""
    picks = sorted({round(i * (len(frames) - 1) / 5) for i in range(6)})
    dim = frames[0].shape[1]
    three_d = dim == 3
    fig = _pyplot().figure(figsize=(3 * len(picks), 3.3 if dim > 3 else 3))
    for k, i in enumerate(picks):
        ax = fig.add_subplot(1, len(picks), k + 1, projection="3d" if three_d else None)
        if dim == 1:
            _hist_ax(ax, frames[i], reference, label=k == 0)
            if k == 0:
                ax.legend(loc="upper right", fontsize=7)
        else:
            keep = slice(0, 3 if three_d else 2)  # D > 3: the first two coordinates
            if reference is not None:
                ax.scatter(*reference[:, keep].T.numpy(), c="0.8", s=2)
            ax.scatter(*frames[i][:, keep].T.numpy(), c="C0", s=2)
        ax.set_title(f"step {i + 1}/{len(frames)}")
    if dim > 3:
        fig.suptitle(f"coordinates $x_1$, $x_2$ of {dim}")
    fig.tight_layout()
    _save(fig, path, dpi=80)
    return path

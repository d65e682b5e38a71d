"""Pictures of samples: image grids (torchvision) and scatter plots of 2D/3D points over the data (matplotlib)."""
from pathlib import Path

import torch


def save_samples(x: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None, title: str = "",
                 nrow: int | None = None) -> Path:
    """Writes x (B, C, H, W) in [-1, 1] as a grid, or x (B, 2|3) as a scatter over `reference` points."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().float().cpu()
    if x.ndim == 4:
        from torchvision.utils import save_image

        save_image((x + 1) / 2, path, nrow=nrow or max(int(len(x) ** 0.5), 1), padding=1, pad_value=1.0)
    elif x.ndim == 2 and x.shape[1] in (2, 3):
        _scatter(x, None if reference is None else reference.detach().float().cpu(), path, title)
    else:
        raise ValueError(f"cannot draw samples of shape {tuple(x.shape)}: expected (B, C, H, W) or (B, 2|3)")
    return path


def _scatter(x: torch.Tensor, reference: torch.Tensor | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    three_d = x.shape[1] == 3
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d" if three_d else None)
    for pts, style in [(x, dict(c="C0", s=4, label="samples")), (reference, dict(c="C1", s=6, label="data"))]:
        if pts is not None:
            ax.scatter(*pts.T.numpy(), alpha=0.7, **style)
    ax.legend(loc="upper right")
    ax.set_title(title)
    if not three_d:
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    return _frames(frames, reference, path)


def _frames(frames: list[torch.Tensor], reference: torch.Tensor | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = sorted({round(i * (len(frames) - 1) / 5) for i in range(6)})
    three_d = frames[0].shape[1] == 3
    fig = plt.figure(figsize=(3 * len(picks), 3))
    for k, i in enumerate(picks):
        ax = fig.add_subplot(1, len(picks), k + 1, projection="3d" if three_d else None)
        if reference is not None:
            ax.scatter(*reference.cpu().T.numpy(), c="0.8", s=2)
        ax.scatter(*frames[i].T.numpy(), c="C0", s=2)
        ax.set_title(f"step {i + 1}/{len(frames)}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

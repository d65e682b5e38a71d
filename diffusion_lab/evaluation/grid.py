"""A sweep of sampler settings (steps, gam, cfg_scale, guidance_scale): one CSV row per point and plots of each
metric.

Plots show each metric against the network evaluations per sample (NFE) and, when the sweep
varies it, against the guidance scale.
"""
import csv
import itertools
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

SETTINGS = ("steps", "gam", "cfg_scale", "guidance_scale")  # the grid's axes
COLUMNS = ("steps", "gam", "guidance", "guidance_scale")  # the settings a row reports (cfg_scale is a guidance_scale)


def grid_points(steps: Sequence[int] = (), gam: Sequence[float] = (), cfg_scale: Sequence[float] = (),
                guidance_scale: Sequence[float] = ()) -> list[dict]:
    """Every combination of the given values; an empty list keeps the checkpoint's setting (None)."""
    axes = [list(values) or [None] for values in (steps, gam, cfg_scale, guidance_scale)]
    return [dict(zip(SETTINGS, combo)) for combo in itertools.product(*axes)]


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """rows (dicts with the same keys) as a CSV file with a header line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def logged(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Each key a run's CSV logger wrote -> [(step, value)], over every csv/version_* of the run (a resumed run adds
    one)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(run_dir).glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if value and key not in ("epoch", "step"):
                        out.setdefault(key, []).append((int(row["step"]), float(value)))
    return out


def _lines(rows: list[dict], x: str, fixed: Sequence[str]) -> dict[str, list[tuple]]:
    """Points (x, row) grouped into one line per combination of the `fixed` settings, sorted by x."""
    lines = defaultdict(list)
    for row in rows:
        if row[x] is not None:
            label = ", ".join(f"{k}={row[k]}" for k in fixed if row[k] is not None)
            lines[label].append((row[x], row))
    return {label: sorted(points, key=lambda p: p[0]) for label, points in lines.items()}


def plot_grid(rows: list[dict], metrics: Sequence[str], path: str | Path, x: str = "nfe") -> Path:
    """One panel per metric against setting x ("nfe" or "guidance_scale"), a line per combination of the other
    settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = [s for s in COLUMNS if s != x and not (x == "nfe" and s == "steps")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, points in _lines(rows, x, fixed).items():
            ax.plot([p[0] for p in points], [p[1][metric] for p in points], marker="o", label=label or None)
        ax.set_xlabel("network evaluations per sample" if x == "nfe" else "guidance scale")
        ax.set_title(metric)
        if any(ax.get_legend_handles_labels()[1]):
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

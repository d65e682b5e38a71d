"""How trustworthy a run's in-training metric is: its value along training against its noise floor, and pixel noise.

    python scripts/quality_report.py outputs/digits_dit outputs/mnist_dit_cpu --noise 0.1 --out quality.png

For each run directory: reads the metrics train.py logged (val/<metric>, val/<metric>_floor, val/eval_samples,
val/eval_seconds), rescores the final checkpoint's evaluation samples exactly as callbacks.evaluate did (same
seeds, same real items, same feature classifier), then with N(0, noise^2) added to every pixel, and prints a
Markdown table; --out plots the metric against the step with the floor and the noised score.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_lab.evaluation import logged  # noqa: E402
from diffusion_lab.app.sampling import build_dataset  # noqa: E402
from diffusion_lab.build import load_model  # noqa: E402
from diffusion_lab.evaluation import reference_evaluator  # noqa: E402
from diffusion_lab.sampling import generate  # noqa: E402


def rescore(run_dir: Path, metrics: list[str], noise: float) -> dict[str, dict[str, float]]:
    """{metric: {clean, noised}}: the final checkpoint's evaluation samples scored as in training, and with noise."""
    model = load_model(run_dir / "checkpoints" / "last.ckpt")
    config = model.config
    settings = config["callbacks"]["evaluate"]
    dataset = build_dataset(config)
    num_samples = settings.get("num_samples") or config["module"]["num_samples"]  # where runs before issue 27 kept it
    evaluate, sets = reference_evaluator(dataset, config["data"]["dataset"], num_samples, metrics,
                                         model.num_classes > 0, settings["classifier_cache"],
                                         settings.get("classifier_steps", 500), seed=settings.get("data_seed", 0))
    out = generate(model, sets.size, 256, config["seed"])
    g = torch.Generator().manual_seed(0)
    noised = out.x + noise * torch.randn(out.x.shape, generator=g)  # (N, ...)
    clean, noisy = evaluate(out.x, out.labels), evaluate(noised, out.labels)
    return {m: {"clean": clean[m], "noised": noisy[m]} for m in metrics}


def report(run_dirs: list[Path], noise: float, out: Path | None) -> None:
    rows = []
    for run_dir in run_dirs:
        values = logged(run_dir)
        metrics = [m for m in ("classifier_fd", "patch_fd", "swd") if f"val/{m}_floor" in values]
        if not (run_dir / "checkpoints" / "last.ckpt").is_file() or not metrics:
            sys.exit(f"error: {run_dir}: not a finished train.py run with callbacks.evaluate (needs config.yaml, "
                     "checkpoints/last.ckpt and val/<metric>_floor in csv/version_*/metrics.csv)")
        seconds = sorted(s for _, s in values["val/eval_seconds"])
        scores = rescore(run_dir, metrics, noise)
        for metric in metrics:
            rows.append({"run": run_dir.name, "metric": metric, "curve": values[f"val/{metric}"],
                         "floor": values[f"val/{metric}_floor"][0][1], "samples": int(values["val/eval_samples"][0][1]),
                         "seconds": seconds[len(seconds) // 2], **scores[metric]})
    print(f"| run | metric (samples) | floor | first -> last logged | last, rescored | "
          f"with N(0, {noise}^2) pixel noise | seconds per evaluation (median) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        (s0, v0), (s1, v1) = r["curve"][0], r["curve"][-1]
        print(f"| {r['run']} | {r['metric']} ({r['samples']}) | {r['floor']:.4g} | {v0:.4g} (step {s0}) -> "
              f"{v1:.4g} (step {s1}) | {r['clean']:.4g} | {r['noised']:.4g} | {r['seconds']:.1f} |")
    if out is not None:
        plot(rows, noise, out)
        print(f"wrote {out}")


def plot(rows: list[dict], noise: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), squeeze=False)
    for ax, r in zip(axes[0], rows):
        steps, values = zip(*r["curve"])
        ax.plot(steps, values, "o-", label=f"val/{r['metric']} ({r['samples']} samples)")
        ax.axhline(r["floor"], color="gray", ls="--", label="floor: real vs real")
        ax.plot([steps[-1]], [r["noised"]], "rx", ms=9, label=f"last + N(0, {noise}$^2$) pixel noise")
        ax.set(title=f"{r['run']}: {r['metric']}", xlabel="optimizer step", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--noise", type=float, default=0.1, help="std of the pixel noise added (data in [-1, 1])")
    parser.add_argument("--out", type=Path, default=None, help="where to write the plot (PNG)")
    args = parser.parse_args()
    report(args.run_dirs, args.noise, args.out)


if __name__ == "__main__":
    main()

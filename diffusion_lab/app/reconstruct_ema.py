"""The EMA of any length after training (post-hoc EMA): `python scripts/reconstruct_ema.py run=RUN_DIR std=[...]`.

Composes configs/reconstruct_ema.yaml. For each std, reconstructs the power-function EMA from the run's snapshots
(diffusion_lab.posthoc_ema) and writes phema_std<STD>.ckpt into this task's run directory: a checkpoint that
sample.py, evaluate.py and export.py load like any other. With score=true, each reconstruction and the run's own
fixed-decay EMA draw num_samples samples scored by the run's metric against as many real items, beside the floor
(the metric between two real sets); it prints the best std and writes reconstruction.json and metrics.csv.
"""
import json
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, open_dict

from diffusion_lab.app.config import CONFIG_DIR, report_user_errors
from diffusion_lab.app.evaluate import evaluator_for
from diffusion_lab.app.sampling import resolve_device
from diffusion_lab.build import load_model
from diffusion_lab.checkpoints import read_checkpoint
from diffusion_lab.errors import ConfigError
from diffusion_lab.evaluation import write_csv
from diffusion_lab.machine import provenance
from diffusion_lab.posthoc_ema import combine, fit, read_snapshots, std_to_gamma
from diffusion_lab.sampling import generate

TRAINING_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks")  # dropped: a reconstruction is no state


def write_reconstruction(base: dict, state: dict, record: dict, path: Path) -> Path:
    """A checkpoint of base's config and raw weights with `state` as its EMA weights (what samplers load), written
    through a temporary file; it cannot be resumed (train.py refuses it, naming this record)."""
    ckpt = {k: v for k, v in base.items() if k not in TRAINING_KEYS}
    ckpt.update(ema_state_dict=state, posthoc_ema=record)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def stds_of(cfg: DictConfig) -> list[float]:
    """cfg.std as a list of checked floats."""
    stds = list(cfg.std) if not isinstance(cfg.std, (int, float)) else [cfg.std]
    if not stds:
        raise ConfigError("std=[]: give at least one relative EMA standard deviation, e.g. std=[0.05,0.1]")
    for std in stds:
        std_to_gamma(std)  # ConfigError for one out of range
    return [float(s) for s in stds]


def reconstruct_run(cfg: DictConfig) -> float | None:
    """Writes the reconstructions of cfg.std and, with cfg.score, scores them; returns the best one's metric."""
    run = Path(cfg.run)
    ckpt_path = Path(cfg.ckpt_path) if cfg.ckpt_path else run / "checkpoints" / "last.ckpt"
    stds, base, snaps = stds_of(cfg), read_checkpoint(ckpt_path), read_snapshots(run / "ema_snapshots")
    out_dir, device = Path(cfg.paths.output_dir), resolve_device(cfg.device)
    rows, paths = [], []
    for std in stds:
        used, weights, error = fit(snaps, std, cfg.step)
        step = used[-1]["step"]
        record = {"std": std, "step": step, "fit_error": error, "snapshots": str(run / "ema_snapshots")}
        paths.append(write_reconstruction(base, combine(used, weights), record, out_dir / f"phema_std{std:.3f}.ckpt"))
        rows.append({"ema": f"std {std:g}", "std": std, "step": step, "fit_error": error})
        print(f"std={std:g} at step {step}: profile fit error {error:.2%} -> {paths[-1]}")
    if not cfg.score:
        return None
    fixed = (base["config"].get("callbacks") or {}).get("ema") or {}
    rows.insert(0, {"ema": f"fixed decay {fixed.get('decay', '?')}", "std": None, "step": base.get("global_step"),
                    "fit_error": None})
    metric = score(cfg, [ckpt_path, *paths], rows, device)
    best = min((r for r in rows if r["std"] is not None), key=lambda r: r[metric])
    print(f"best: std={best['std']:g} ({metric}={best[metric]:.5g}; fixed decay {rows[0][metric]:.5g}; floor "
          f"{rows[0][metric + '_floor']:.5g}: a difference below the floor is noise)")
    write_csv(rows, out_dir / "metrics.csv")
    record = {"run": str(run), "checkpoint": str(ckpt_path), "metric": metric, "rows": rows, "best_std": best["std"],
              **provenance(device)}
    (out_dir / "reconstruction.json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    return best[metric]


def score(cfg: DictConfig, checkpoints: list[Path], rows: list[dict], device: torch.device) -> str:
    """Each checkpoint's samples scored into its row (with the floor); returns the metric ranked by."""
    fixed = load_model(checkpoints[0], ema=True, device=device, precision=cfg.precision)
    run = fixed.config
    with open_dict(cfg):  # the run's own sample count and metrics unless given
        cfg.num_samples = cfg.num_samples or run.get("num_samples") or 1024
        if cfg.metric is None:
            cfg.metric = ((run.get("callbacks") or {}).get("evaluate") or {}).get("metrics")
    evaluator, floor = evaluator_for(cfg, run, conditional=fixed.num_classes > 0, device=device)
    for path, row in zip(checkpoints, rows, strict=True):
        model = fixed if path == checkpoints[0] else load_model(path, device=device, precision=cfg.precision)
        out = generate(model, len(evaluator.reference), cfg.batch_size, cfg.seed, progress=cfg.progress)
        row.update(evaluator(out.x, out.labels), **floor, num_samples=len(evaluator.reference))
        print(f"{row['ema']}: " + " ".join(f"{k}={row[k]:.5g}" for k in evaluator.metrics))
    return evaluator.metrics[0]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="reconstruct_ema")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    return reconstruct_run(cfg)


if __name__ == "__main__":
    main()

"""Score a checkpoint's samples against its training data: `python scripts/evaluate.py ckpt=PATH [metric=[fid,kid]]`.

Composes configs/evaluate.yaml. Prints one line per sampler setting and writes metrics.csv into the
run directory (a latent-diffusion checkpoint is scored on its decoded images; classifier_scale=S guides with its
classifier); a sweep (`grid.steps=[5,10,20] grid.cfg_scale=[0,2]`, or grid.guidance_scale for the guidance in
use, e.g. autoguidance) also writes metrics_vs_nfe.png and, when it varies a guidance scale,
metrics_vs_guidance_scale.png.
"""
import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.app.config import CONFIG_DIR, checkpoint_path, report_user_errors
from diffusion_lab.app.sampling import build_dataset, overrides, resolve_device, with_overrides
from diffusion_lab.build import load_model
from diffusion_lab.core import ClassifierGuidance
from diffusion_lab.evaluation import Evaluator, grid_points, plot_grid, reference_evaluator, write_csv
from diffusion_lab.machine import provenance
from diffusion_lab.sampling import DiffusionModel, check_labels, generate


GUIDANCE_NAMES = {"Guidance": "none", "ClassifierFreeGuidance": "cfg", "AutoGuidance": "autoguidance"}


def settings(model: DiffusionModel) -> dict:
    """The sampler settings a grid varies, as used, classifier_scale when it guides, and the network evaluations."""
    guided = isinstance(model.guidance, ClassifierGuidance)
    base = model.guidance.base if guided else model.guidance
    return {"steps": model.sampler.steps, "gam": model.sampler.settings.get("gam"),
            "guidance": GUIDANCE_NAMES.get(type(base).__name__, type(base).__name__),
            "guidance_scale": getattr(base, "scale", None),
            **({"classifier_scale": model.guidance.scale} if guided else {}), "nfe": model.nfe}


def evaluator_for(cfg: DictConfig, config: dict, conditional: bool, device: torch.device) -> tuple[Evaluator, dict]:
    """The metrics of cfg.metric against cfg.num_samples items of the checkpoint's training data, and their floor:
    the same metrics for as many other real items."""
    dataset = build_dataset(config)
    metrics = None if cfg.metric is None else ([cfg.metric] if isinstance(cfg.metric, str) else list(cfg.metric))
    evaluator, sets = reference_evaluator(dataset, config["data"]["dataset"], cfg.num_samples, metrics, conditional,
                                          cfg.classifier_cache, cfg.classifier_steps, cfg.inception_weights, device)
    if sets.size < cfg.num_samples:
        print(f"note: the data set has {len(dataset)} items: scoring {sets.size} samples against {sets.size} real ones")
    floor = evaluator(sets.floor, sets.floor_labels)
    print(f"floor ({sets.size} real items against {sets.size} others): " +
          " ".join(f"{k}={v:.5g}" for k, v in floor.items()))
    return evaluator, {f"{k}_floor": v for k, v in floor.items()}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@report_user_errors
def main(cfg: DictConfig) -> float:
    device = resolve_device(cfg.device)
    ckpt = checkpoint_path(cfg)
    loaded = load_model(ckpt, ema=cfg.ema, device=device, precision=cfg.precision)
    base = overrides(cfg)
    grid = OmegaConf.to_container(cfg.grid, resolve=True)
    # every grid point is built before any sampling, so a bad value fails at once
    points = [{k: v for k, v in p.items() if v is not None} for p in grid_points(**grid)]
    models = [with_overrides(loaded, **{**base, **p}) for p in points]
    labels = check_labels(OmegaConf.to_object(cfg.labels) if cfg.labels is not None else None, models[0].num_classes)
    evaluator, floor = evaluator_for(cfg, loaded.config, conditional=models[0].num_classes > 0, device=device)
    rows = []
    for model in models:
        out = generate(model, len(evaluator.reference), cfg.batch_size, cfg.seed, labels, progress=cfg.progress)
        rows.append({**settings(model), **evaluator(out.x, out.labels)})
        print(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
        rows[-1].update(floor)  # the CSV keeps each metric's floor beside it
    out_dir = Path(cfg.paths.output_dir)
    print(f"wrote {write_csv(rows, out_dir / 'metrics.csv')}")
    record = {"checkpoint": ckpt, "num_samples": len(evaluator.reference), "metrics": evaluator.metrics,
              "rows": rows, **provenance(device)}
    (out_dir / "evaluation.json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    if len(rows) > 1:
        print(f"wrote {plot_grid(rows, evaluator.metrics, out_dir / 'metrics_vs_nfe.png')}")
        if grid.get("cfg_scale") or grid.get("guidance_scale"):
            path = plot_grid(rows, evaluator.metrics, out_dir / "metrics_vs_guidance_scale.png", x="guidance_scale")
            print(f"wrote {path}")
    return rows[0][evaluator.metrics[0]]


if __name__ == "__main__":
    main()

"""Score a checkpoint's samples against its training data: `python scripts/evaluate.py ckpt=PATH [metric=[fid,kid]]`.

Composes configs/evaluate.yaml. Prints one line per sampler setting and writes metrics.csv into the
run directory (a latent-diffusion checkpoint is scored on its decoded images; classifier_scale=S guides with its
classifier); a sweep (`grid.steps=[5,10,20] grid.cfg_scale=[0,2]`) also writes metrics_vs_nfe.png
and, when it varies cfg_scale, metrics_vs_cfg_scale.png.
"""
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.app.loading import build_dataset, load_run, resolve_device, sampling_setup, setup_overrides
from diffusion_lab.app.config import CONFIG_DIR, report_user_errors
from diffusion_lab.core import ClassifierGuidance
from diffusion_lab.evaluation import (Evaluator, data_classifier, default_metrics, evaluation_sets, grid_points,
                                     plot_grid, write_csv)
from diffusion_lab.evaluation.suite import CLASSIFIER_METRICS
from diffusion_lab.sampling import SamplingSetup, check_labels, generate


def settings(setup: SamplingSetup) -> dict:
    """The sampler settings a grid varies, as used, classifier_scale when it guides, and the network evaluations."""
    guided = isinstance(setup.guidance, ClassifierGuidance)
    base = setup.guidance.base if guided else setup.guidance
    return {"steps": setup.sampler.steps, "gam": getattr(setup.sampler, "gam", None),
            "cfg_scale": getattr(base, "scale", None), **({"classifier_scale": setup.guidance.scale} if guided else {}),
            "nfe": setup.nfe}


def evaluator_for(cfg: DictConfig, config: dict, conditional: bool, device: torch.device) -> tuple[Evaluator, dict]:
    """The metrics of cfg.metric against cfg.num_samples items of the checkpoint's training data, and their floor:
    the same metrics for as many other real items."""
    dataset = build_dataset(config)
    sets = evaluation_sets(dataset, cfg.num_samples)
    if sets.size < cfg.num_samples:
        print(f"note: the data set has {len(dataset)} items: scoring {sets.size} samples against {sets.size} real ones")
    metrics = None if cfg.metric is None else ([cfg.metric] if isinstance(cfg.metric, str) else list(cfg.metric))
    image = sets.reference.ndim == 4
    wanted = set(metrics or default_metrics(image, conditional))
    classifier = None
    if image and wanted & CLASSIFIER_METRICS:
        classifier = data_classifier(dataset, config["data"]["dataset"], cfg.classifier_cache, cfg.classifier_steps)
    evaluator = Evaluator(sets.reference, metrics, classifier=classifier, inception_weights=cfg.inception_weights,
                          conditional=conditional, device=device)
    floor = evaluator(sets.floor, sets.floor_labels)
    print(f"floor ({sets.size} real items against {sets.size} others): " +
          " ".join(f"{k}={v:.5g}" for k, v in floor.items()))
    return evaluator, {f"{k}_floor": v for k, v in floor.items()}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@report_user_errors
def main(cfg: DictConfig) -> float:
    device = resolve_device(cfg.device)
    run = load_run(cfg.ckpt, ema=cfg.ema, device=device)
    base = setup_overrides(cfg)
    grid = OmegaConf.to_container(cfg.grid, resolve=True)
    # every grid point is built before any sampling, so a bad value fails at once
    points = [{k: v for k, v in p.items() if v is not None} for p in grid_points(**grid)]
    setups = [sampling_setup(run, **{**base, **p}) for p in points]
    labels = check_labels(OmegaConf.to_object(cfg.labels) if cfg.labels is not None else None, setups[0].num_classes)
    evaluator, floor = evaluator_for(cfg, run.config, conditional=setups[0].num_classes > 0, device=device)
    rows = []
    for setup in setups:
        out = generate(setup, len(evaluator.reference), cfg.batch_size, cfg.seed, labels, progress=cfg.progress)
        rows.append({**settings(setup), **evaluator(out.x, out.labels)})
        print(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
        rows[-1].update(floor)  # the CSV keeps each metric's floor beside it
    out_dir = Path(cfg.paths.output_dir)
    print(f"wrote {write_csv(rows, out_dir / 'metrics.csv')}")
    if len(rows) > 1:
        print(f"wrote {plot_grid(rows, evaluator.metrics, out_dir / 'metrics_vs_nfe.png')}")
        if grid["cfg_scale"]:
            print(f"wrote {plot_grid(rows, evaluator.metrics, out_dir / 'metrics_vs_cfg_scale.png', x='cfg_scale')}")
    return rows[0][evaluator.metrics[0]]


if __name__ == "__main__":
    main()

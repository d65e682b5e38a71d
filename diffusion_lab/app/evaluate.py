"""Score a checkpoint's samples against its training data: `python scripts/evaluate.py ckpt=PATH [metric=[fid,kid]]`.

Composes configs/evaluate.yaml. Prints one line per sampler setting and writes metrics.csv into the
run directory; a sweep (`grid.steps=[5,10,20] grid.cfg_scale=[0,2]`) also writes metrics_vs_nfe.png
and, when it varies cfg_scale, metrics_vs_cfg_scale.png.
"""
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.app.loading import build_dataset, load_run, resolve_device, sampling_setup, setup_overrides
from diffusion_lab.app.config import CONFIG_DIR, report_user_errors
from diffusion_lab.evaluation import Evaluator, classifier_cache_path, data_tensors, grid_points, plot_grid, write_csv
from diffusion_lab.sampling import SamplingSetup, check_labels, generate


def settings(setup: SamplingSetup) -> dict:
    """The sampler settings a grid varies, as used, and the network evaluations per sample."""
    return {"steps": setup.sampler.steps, "gam": getattr(setup.sampler, "gam", None),
            "cfg_scale": getattr(setup.guidance, "scale", None), "nfe": setup.nfe}


def evaluator_for(cfg: DictConfig, config: dict, conditional: bool, device: torch.device) -> Evaluator:
    """The metrics of cfg.metric against a fixed subset of the checkpoint's training data."""
    dataset = build_dataset(config)
    x, y = data_tensors(dataset, cfg.num_reference)
    metrics = None if cfg.metric is None else ([cfg.metric] if isinstance(cfg.metric, str) else list(cfg.metric))
    cache = classifier_cache_path(cfg.classifier_cache, config["data"]["dataset"], cfg.classifier_steps)
    return Evaluator(x, metrics, labels=y, num_classes=getattr(dataset, "num_classes", 0), classifier_cache=cache,
                     classifier_steps=cfg.classifier_steps, inception_weights=cfg.inception_weights,
                     conditional=conditional, device=device)


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
    evaluator = evaluator_for(cfg, run.config, conditional=setups[0].num_classes > 0, device=device)
    rows = []
    for setup in setups:
        out = generate(setup, cfg.num_samples, cfg.batch_size, cfg.seed, labels, progress=cfg.progress)
        rows.append({**settings(setup), **evaluator(out.x, out.labels)})
        print(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
    out_dir = Path(cfg.paths.output_dir)
    print(f"wrote {write_csv(rows, out_dir / 'metrics.csv')}")
    if len(rows) > 1:
        print(f"wrote {plot_grid(rows, evaluator.metrics, out_dir / 'metrics_vs_nfe.png')}")
        if grid["cfg_scale"]:
            print(f"wrote {plot_grid(rows, evaluator.metrics, out_dir / 'metrics_vs_cfg_scale.png', x='cfg_scale')}")
    return rows[0][evaluator.metrics[0]]


if __name__ == "__main__":
    main()

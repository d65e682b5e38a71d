"""Sample a train.py checkpoint: `python scripts/sample.py ckpt=PATH [sampler=ddim steps=50 save=[png,npz]]`.

Composes configs/sample.yaml; writes samples.png (an image grid or a scatter over the data),
samples.pt / samples.npz on request and trajectory.png into the run directory. Every checkpoint train.py
writes samples with the defaults: a latent-diffusion one (experiment=mnist_latent) writes the images its VAE
decodes (classifier_scale=S adds guidance by its classifier after stage=joint), and one trained without EMA
falls back to its raw weights with a note.
"""
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.app.config import CONFIG_DIR, checkpoint_path, report_user_errors
from diffusion_lab.app.sampling import build_dataset, overrides, resolve_device, with_overrides
from diffusion_lab.build import load_model
from diffusion_lab.errors import ConfigError
from diffusion_lab.models.ideal import stack_dataset
from diffusion_lab.sampling import Samples, check_labels, gather, generate, trajectory

FORMATS = ("png", "pt", "npz")


def save(out: Samples, cfg: DictConfig, formats: list[str], reference: torch.Tensor | None,
         nrow: int | None) -> list[Path]:
    """Writes the samples in each of formats; returns the paths."""
    from diffusion_lab.evaluation.plotting import save_samples

    base = Path(cfg.paths.output_dir) / (f"samples_rank{cfg.rank}" if cfg.world_size > 1 else "samples")
    arrays = {"samples": out.x, "indices": out.indices, "seeds": cfg.seed + out.indices}
    if out.labels is not None:
        arrays["labels"] = out.labels
    paths = []
    for fmt in formats:
        path = base.with_suffix(f".{fmt}")
        if fmt == "png":
            save_samples(out.x, path, reference=reference, title=Path(checkpoint_path(cfg)).name, nrow=nrow)
        elif fmt == "pt":
            torch.save(arrays, path)
        else:
            np.savez(path, **{k: v.numpy() for k, v in arrays.items()})
        paths.append(path)
    return paths


def distributed() -> bool:
    """Joins the torch.distributed group when launched by torchrun (WORLD_SIZE > 1)."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
@report_user_errors
def main(cfg: DictConfig) -> None:
    formats = [cfg.save] if isinstance(cfg.save, str) else list(cfg.save or [])
    if any(f not in FORMATS for f in formats):
        raise ConfigError(f"save={formats}: each must be one of {list(FORMATS)}")
    device = resolve_device(cfg.device)
    if device.index is not None and device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's all_gather_object works on the current device: one GPU per rank
    model = load_model(checkpoint_path(cfg), ema=cfg.ema, device=device, precision=cfg.precision)
    model = with_overrides(model, **overrides(cfg))
    labels = check_labels(OmegaConf.to_object(cfg.labels) if cfg.labels is not None else None, model.num_classes)
    if distributed():  # torchrun --nproc_per_node=N scripts/sample.py ...: split the seeds, gather on every rank
        import torch.distributed as dist

        out = gather(generate(model, cfg.num_samples, cfg.batch_size, cfg.seed, labels, dist.get_rank(),
                              dist.get_world_size(), cfg.progress and dist.get_rank() == 0))
        if dist.get_rank() != 0:
            return
    else:
        out = generate(model, cfg.num_samples, cfg.batch_size, cfg.seed, labels, cfg.rank, cfg.world_size,
                       cfg.progress)
    points = out.x.ndim == 2
    dataset = build_dataset(model.config) if points else None
    reference = stack_dataset(dataset, max_points=2000) if dataset is not None else None
    nrow = model.num_classes if model.num_classes and labels is None else None
    for path in save(out, cfg, formats, reference, nrow):
        print(f"wrote {path}")
    if cfg.trajectory and cfg.rank == 0:
        from diffusion_lab.evaluation.plotting import save_trajectory

        n = min(cfg.num_samples, 1000) if points else min(cfg.trajectory_samples, cfg.num_samples)
        frames = trajectory(model, n, cfg.seed, labels)
        print(f"wrote {save_trajectory(frames, Path(cfg.paths.output_dir) / 'trajectory.png', reference)}")


if __name__ == "__main__":
    main()

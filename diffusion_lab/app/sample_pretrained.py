"""Text-to-image with a pretrained pipeline: `python scripts/sample_pretrained.py pretrained=FOLDER prompts='[a cat]'`.

Composes configs/stable_diffusion.yaml; loads the diffusers pipeline (no network), samples its latents with the
configured diffusion_lab sampler and writes samples.png (one image per prompt) into the run directory.
"""
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from diffusion_lab.app.sampling import resolve_device
from diffusion_lab.app.config import CONFIG_DIR, report_user_errors
from diffusion_lab.core.noise import NoiseStreams
from diffusion_lab.errors import ConfigError
from diffusion_lab.evaluation.plotting import save_samples
from diffusion_lab.pretrained import text_to_image


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="stable_diffusion")
@report_user_errors
def main(cfg: DictConfig) -> None:
    prompts = [cfg.prompts] if isinstance(cfg.prompts, str) else list(cfg.prompts or [])
    if not prompts:
        raise ConfigError("prompts: give at least one prompt, e.g. prompts='[a photo of a cat]'")
    negative = None if cfg.negative_prompts is None else list(cfg.negative_prompts)
    device = resolve_device(cfg.device)
    denoiser = instantiate(cfg.denoiser).to(device)
    generators = NoiseStreams(range(cfg.seed, cfg.seed + len(prompts)), device)
    images = text_to_image(denoiser, prompts, negative, sampler=instantiate(cfg.sampler),
                           guidance_scale=cfg.guidance_scale, generator=generators)  # (B, 3, H, W) in [-1, 1]
    path = save_samples(images, Path(cfg.paths.output_dir) / "samples.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

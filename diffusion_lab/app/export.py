"""Export a checkpoint for use anywhere: `python scripts/export.py ckpt_path=PATH [out=DIR] [ema=true]`.

Also the `diffusion-lab-export` command. Writes model.safetensors, config.json and a model card into `out`; load it
with `diffusion_lab.load_model(out)` (torch and safetensors only), or push it to the Hugging Face Hub.
"""
import hydra
from omegaconf import DictConfig

from diffusion_lab.app.config import CONFIG_DIR, checkpoint_path, report_user_errors
from diffusion_lab.export import export_model


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@report_user_errors
def main(cfg: DictConfig) -> None:
    out = export_model(checkpoint_path(cfg), cfg.out or cfg.paths.output_dir, ema=cfg.ema)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

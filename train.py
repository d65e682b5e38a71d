"""Train a diffusion model: `python train.py` (2D swiss roll), `python train.py experiment=digits_dit`, `-m` for sweeps."""
from diffusion_lab.app.train import main

if __name__ == "__main__":
    main()

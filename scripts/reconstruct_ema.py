"""Post-hoc EMA of a run: `python scripts/reconstruct_ema.py run=RUN_DIR std=[0.05,0.1]` (also
`diffusion-lab-reconstruct-ema`)."""
from diffusion_lab.app.reconstruct_ema import main

if __name__ == "__main__":
    main()

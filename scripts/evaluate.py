"""Score a checkpoint's samples: `python scripts/evaluate.py ckpt=PATH` (also the `diffusion-lab-evaluate` command)."""
from diffusion_lab.app.evaluate import main

if __name__ == "__main__":
    main()

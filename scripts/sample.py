"""Sample a train.py checkpoint: `python scripts/sample.py ckpt=PATH` (also the `diffusion-lab-sample` command)."""
from diffusion_lab.app.sample import main

if __name__ == "__main__":
    main()

"""Export a checkpoint as a loadable folder: `python scripts/export.py ckpt_path=PATH [out=DIR]` (also `diffusion-lab-export`)."""
from diffusion_lab.app.export import main

if __name__ == "__main__":
    main()

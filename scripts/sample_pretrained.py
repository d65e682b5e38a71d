"""Text-to-image with a pretrained diffusers pipeline: `python scripts/sample_pretrained.py pretrained=FOLDER prompts=...`."""
from diffusion_lab.app.sample_pretrained import main

if __name__ == "__main__":
    main()

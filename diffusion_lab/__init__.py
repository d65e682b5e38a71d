"""diffusion_lab: a config-driven experiment framework for diffusion models."""

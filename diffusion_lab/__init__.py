"""diffusion_lab: a config-driven experiment framework for diffusion models.

    from diffusion_lab import load_model
    model = load_model("outputs/<run>/checkpoints/last.ckpt")   # or an exported folder, or a Hub id "user/repo"
    x = model.sample(16, seed=0)
"""

__all__ = ["load_model", "export_model"]


def __getattr__(name: str):
    """load_model and export_model, imported on first use: `import diffusion_lab` alone stays light (no torch)."""
    if name == "load_model":
        from diffusion_lab.build import load_model

        return load_model
    if name == "export_model":
        from diffusion_lab.export import export_model

        return export_model
    raise AttributeError(f"module 'diffusion_lab' has no attribute {name!r}")

"""Guidance: how the eps fed to a sampler is formed from the denoiser, the condition and a classifier.

Each guidance is a callable `(model, x, sigma, cond) -> eps`, the one thing every sampler calls.
"""
import torch
from torch import nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.utils import append_dims

CFG_CONVENTIONS = ("cond", "uncond")


class Guidance:
    """No guidance: the denoiser's own eps for the given condition (or none)."""

    evaluations = 1  # network evaluations per sampler step: counted in DiffusionModel.nfe

    def __call__(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        return model(x, sigma, cond)


class ClassifierFreeGuidance(Guidance):
    """Classifier-free guidance (Ho & Salimans 2022) with one batched forward of cond and null inputs.

    convention="cond" (smalldiffusion): eps = eps_c + scale (eps_c - eps_u), so scale 0 is the
    plain conditional model. convention="uncond" (Ho & Salimans; the JAX toy project, Stable
    Diffusion): eps = eps_u + scale (eps_c - eps_u), so scale 1 is the conditional model; a scale w
    here equals w - 1 in the "cond" convention.
    """

    evaluations = 2  # one batched forward of twice the inputs

    def __init__(self, scale: float = 0.0, convention: str = "cond"):
        if convention not in CFG_CONVENTIONS:
            raise ConfigError(f"convention={convention!r} must be one of {list(CFG_CONVENTIONS)}")
        self.scale = scale
        self.convention = convention

    def __call__(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is None:
            raise ConfigError("cond=None: classifier-free guidance needs a condition (labels)")
        if not hasattr(model, "null_cond"):
            raise ConfigError(f"model {type(model).__name__} has no null condition; classifier-free guidance needs a "
                              "model trained with num_classes > 0 and cond_dropout > 0")
        null = model.null_cond(cond)  # raises ConfigError on an unconditional model
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])  # (B,)
        eps_c, eps_u = model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null])).chunk(2)
        base = eps_c if self.convention == "cond" else eps_u
        return base + self.scale * (eps_c - eps_u)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale}, convention={self.convention!r})"


class ClassifierGuidance(Guidance):
    """Classifier guidance (Dhariwal & Nichol 2021, eq. 14 in score form): eps - scale * sigma * grad_x log p(y | x, sigma).

    classifier(x, sigma) returns logits (B, num_classes); `base` forms the unguided eps (default: no guidance).
    """

    def __init__(self, classifier: nn.Module, scale: float = 1.0, base: Guidance | None = None):
        self.classifier = classifier
        self.scale = scale
        self.base = base or Guidance()
        self.evaluations = self.base.evaluations  # the classifier's forward and backward are not counted

    def grad_log_prob(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """grad_x log p(y | x, sigma) for each example."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            log_p = self.classifier(x, sigma).log_softmax(-1)  # (B, K)
            chosen = log_p.gather(1, y.long().view(-1, 1)).sum()
            return torch.autograd.grad(chosen, x)[0]

    def __call__(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is None:
            raise ConfigError("cond=None: classifier guidance needs target labels")
        eps = self.base(model, x, sigma, cond if getattr(model, "num_classes", 0) else None)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])  # (B,)
        grad = self.grad_log_prob(x, s, cond)
        return eps - self.scale * append_dims(s, x) * grad


class AutoGuidance(Guidance):
    """Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", eq. 2): the
    denoised estimate D_guide + scale (D_main - D_guide), where the guide is a weaker model of the same data (an
    earlier or shorter-EMA checkpoint, a smaller network). D = x - sigma eps is affine in eps at a given (x, sigma),
    so the same combination of the two eps predictions is returned; scale 1 is the main model alone. The guide gets
    the condition only when it is conditional itself, and follows the input to its device on first use.
    """

    evaluations = 2

    def __init__(self, guide: nn.Module, scale: float = 2.0):
        self.guide = guide.eval().requires_grad_(False)
        self.scale = scale

    def __call__(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        if next(self.guide.parameters()).device != x.device:
            self.guide.to(x.device)
        eps_main = model(x, sigma, cond)
        eps_guide = self.guide(x, sigma, cond if getattr(self.guide, "num_classes", 0) else None)
        return eps_guide + self.scale * (eps_main - eps_guide)

    def __repr__(self) -> str:
        return f"AutoGuidance(guide={type(getattr(self.guide, 'net', self.guide)).__name__}, scale={self.scale})"

"""What the network predicts (eps, x0 or v) and whether it sees a scaled input, as a wrapper module.

Every sampler talks to an eps-predictor in the frame x = x0 + sigma * eps. `Denoiser` turns any
network `net(x, sigma, cond)` into one: it scales the input by sqrt(alpha_bar) when asked and
converts the network's x0 or v output to eps. Its `loss` regresses the network's raw output on the
matching target, the usual loss for each parameterization.
"""
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.utils import append_dims

PREDICTIONS = ("eps", "x0", "v")


def x0_to_eps(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = (x - x0) / sigma."""
    return (x - x0) / append_dims(sigma, x)


def eps_to_x0(x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = x - sigma * eps."""
    return x - append_dims(sigma, x) * eps


def v_to_eps(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps from v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022), with x = x0 + sigma eps.

    Here sqrt(ab) = 1/sqrt(1+sigma^2), so eps = v / sqrt(1 + sigma^2) + sigma x / (1 + sigma^2).
    """
    s = append_dims(sigma, x)
    return v / (1 + s**2).sqrt() + s * x / (1 + s**2)


def eps_to_v(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) x0 = (eps - sigma x0) / sqrt(1 + sigma^2)."""
    s = append_dims(sigma, x0)
    return (eps - s * x0) / (1 + s**2).sqrt()


class Denoiser(nn.Module):
    """Wraps a network so that it predicts eps, whatever it was trained to output.

    prediction: "eps" (default), "x0" or "v"; scaled_input: feed the network x * sqrt(alpha_bar)
    = x / sqrt(1 + sigma^2), the variance-preserving input of DDPM-style networks.
    """

    def __init__(self, net: nn.Module, prediction: str = "eps", scaled_input: bool = False):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(f"prediction={prediction!r} must be one of {list(PREDICTIONS)}")
        self.net = net
        self.prediction = prediction
        self.scaled_input = scaled_input

    def raw(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The network's own output (eps, x0 or v) for noisy x."""
        if self.scaled_input:
            x = x / (1 + append_dims(sigma, x) ** 2).sqrt()
        return self.net(x, sigma, cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        out = self.raw(x, sigma, cond)
        if self.prediction == "x0":
            return x0_to_eps(x, out, sigma)
        if self.prediction == "v":
            return v_to_eps(x, out, sigma)
        return out

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The regression target of `raw` for clean x0 noised with eps at level sigma."""
        if self.prediction == "x0":
            return x0
        if self.prediction == "v":
            return eps_to_v(x0, eps, sigma)
        return eps

    def loss(self, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
             cond: torch.Tensor | None = None) -> torch.Tensor:
        """MSE of `raw` at x = x0 + sigma eps against its target (Ho et al. 2020, eq. 14; Salimans & Ho 2022)."""
        x = x0 + append_dims(sigma, x0) * eps  # (B, ...)
        return F.mse_loss(self.raw(x, sigma, cond), self.target(x0, eps, sigma))

    # The samplers and the framework read these from any denoiser; pass them through.
    @property
    def input_dims(self) -> tuple[int, ...]:
        return self.net.input_dims

    @property
    def num_classes(self) -> int:
        return getattr(self.net, "num_classes", 0)

    def rand_input(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net.rand_input(batch_size, generator=generator)

    def null_cond(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net.null_cond(cond)


class Scaled(Denoiser):
    """An eps-predicting network that sees the input scaled by sqrt(alpha_bar)."""

    def __init__(self, net: nn.Module, prediction: str = "eps"):
        super().__init__(net, prediction=prediction, scaled_input=True)


class PredX0(Denoiser):
    """A network that predicts x0; forward returns the implied eps."""

    def __init__(self, net: nn.Module, scaled_input: bool = False):
        super().__init__(net, prediction="x0", scaled_input=scaled_input)


class PredV(Denoiser):
    """A network that predicts v (Salimans & Ho 2022); forward returns the implied eps."""

    def __init__(self, net: nn.Module, scaled_input: bool = False):
        super().__init__(net, prediction="v", scaled_input=scaled_input)

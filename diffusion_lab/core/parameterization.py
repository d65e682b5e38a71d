"""What the network predicts, what it sees and how its error is weighted, as a wrapper module.

Every sampler talks to an eps-predictor in the frame x = x0 + sigma * eps. `Denoiser` turns any
network `net(x_in, sigma, cond)` into one. Predictions:
- "eps", "x0", "v" (Salimans & Ho 2022): the network sees x, or x * sqrt(alpha_bar) = x / sqrt(1 + sigma^2)
  with scaled_input;
- "flow": flow matching on the linear (rectified-flow) path (Lipman et al. 2023; Liu et al. 2023; Esser et al.
  2024). With t = sigma / (1 + sigma) the flow state z_t = (1 - t) x0 + t eps equals x / (1 + sigma), which the
  network sees; it predicts the velocity dz/dt = eps - x0;
- "edm": the preconditioning of Karras et al. 2022, D(x) = c_skip x + c_out F(c_in x), with sigma_data.
`loss` regresses the raw output on its target; `loss_weight` reweights it per example: "uniform" (the raw MSE),
"min_snr" (Hang et al. 2023: x0 errors weighted min(SNR, snr_gamma), SNR = 1 / sigma^2) or "edm" (x0 errors
weighted (sigma^2 + sigma_data^2) / (sigma sigma_data)^2). `train_sigmas`, when given, draws the training levels
instead of the schedule (`LogNormalSigma`: EDM's log-normal sigma, which is also flow matching's logit-normal t).
"""
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.utils import append_dims

PREDICTIONS = ("eps", "x0", "v", "flow", "edm")
LOSS_WEIGHTS = ("uniform", "min_snr", "edm")


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


def flow_to_eps(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps from the flow velocity eps - x0, since x + (eps - x0) = (1 + sigma) eps."""
    return (x + velocity) / (1 + append_dims(sigma, x))


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of Karras et al. 2022, table 1: D(x) = c_skip x + c_out F."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    return c_skip, sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def edm_to_x0(x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """D(x) = c_skip x + c_out F."""
    c_skip, c_out = (append_dims(c, x) for c in edm_coefficients(sigma, sigma_data))
    return c_skip * x + c_out * out


def x0_to_edm(x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """F's target (x0 - c_skip x) / c_out (Karras et al. 2022, eq. 7-8)."""
    c_skip, c_out = (append_dims(c, x) for c in edm_coefficients(sigma, sigma_data))
    return (x0 - c_skip * x) / c_out


class Denoiser(nn.Module):
    """Wraps a network so that it predicts eps, whatever it was trained to output.

    prediction: "eps" (default), "x0", "v", "flow" or "edm" (module docstring); scaled_input (eps, x0, v): feed the
    network x / sqrt(1 + sigma^2), the variance-preserving input of DDPM-style networks (flow and edm fix their own
    input scaling); sigma_data: the data's standard deviation (edm's preconditioning and loss weight); loss_weight:
    "uniform", "min_snr" or "edm"; snr_gamma: min-SNR's gamma; train_sigmas: a distribution of training levels
    (`sample(n, generator, device)`), or None for the schedule's levels.
    """

    def __init__(self, net: nn.Module, prediction: str = "eps", scaled_input: bool = False, sigma_data: float = 0.5,
                 loss_weight: str = "uniform", snr_gamma: float = 5.0, train_sigmas=None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(f"parameterization.prediction={prediction!r} must be one of {list(PREDICTIONS)}")
        if scaled_input and prediction in ("flow", "edm"):
            raise ConfigError(f"parameterization.scaled_input=true: prediction={prediction!r} scales its own input; "
                              "scaled_input applies to eps, x0 and v")
        if not sigma_data > 0:
            raise ConfigError(f"parameterization.sigma_data={sigma_data} must be > 0")
        if loss_weight not in LOSS_WEIGHTS:
            raise ConfigError(f"parameterization.loss_weight={loss_weight!r} must be one of {list(LOSS_WEIGHTS)}")
        if not snr_gamma > 0:
            raise ConfigError(f"parameterization.snr_gamma={snr_gamma} must be > 0")
        self.net = net
        self.prediction, self.scaled_input, self.sigma_data = prediction, scaled_input, sigma_data
        self.loss_weight, self.snr_gamma, self.train_sigmas = loss_weight, snr_gamma, train_sigmas

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor | None:
        """The factor the network's input x is multiplied by (None: x as it is)."""
        if self.prediction == "flow":
            return 1 / (1 + sigma)
        if self.prediction == "edm":
            return 1 / (sigma**2 + self.sigma_data**2).sqrt()
        return 1 / (1 + sigma**2).sqrt() if self.scaled_input else None

    def raw(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The network's own output (eps, x0, v, flow velocity or EDM's F) for noisy x."""
        c_in = self.c_in(torch.as_tensor(sigma, dtype=x.dtype, device=x.device))
        return self.net(x if c_in is None else x * append_dims(c_in, x), sigma, cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        out = self.raw(x, sigma, cond)
        if self.prediction == "eps":
            return out
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if self.prediction == "x0":
            return x0_to_eps(x, out, sigma)
        if self.prediction == "v":
            return v_to_eps(x, out, sigma)
        if self.prediction == "flow":
            return flow_to_eps(x, out, sigma)
        return x0_to_eps(x, edm_to_x0(x, out, sigma, self.sigma_data), sigma)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The regression target of `raw` for clean x0 noised with eps at level sigma."""
        if self.prediction == "x0":
            return x0
        if self.prediction == "v":
            return eps_to_v(x0, eps, sigma)
        if self.prediction == "flow":
            return eps - x0
        if self.prediction == "edm":
            return x0_to_edm(x0, x0 + append_dims(sigma, x0) * eps, sigma, self.sigma_data)
        return eps

    def x0_error_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """k(sigma) such that, at a fixed noisy x, raw MSE = k * (MSE of the implied x0): the weight the raw loss
        already puts on x0 errors (eps: SNR, v: SNR + 1, Hang et al. 2023)."""
        s2 = sigma**2
        if self.prediction == "eps":
            return 1 / s2
        if self.prediction == "v":
            return (1 + s2) / s2
        if self.prediction == "flow":
            return (1 + sigma) ** 2 / s2
        if self.prediction == "edm":
            return self.edm_weight(sigma)
        return torch.ones_like(sigma)

    def edm_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM's weight of x0 errors, (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """The per-example factor of the raw MSE that weights x0 errors as `loss_weight` says."""
        if self.loss_weight == "min_snr":
            return (1 / sigma**2).clamp(max=self.snr_gamma) / self.x0_error_scale(sigma)
        if self.loss_weight == "edm":
            return self.edm_weight(sigma) / self.x0_error_scale(sigma)
        return torch.ones_like(sigma)

    def loss(self, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
             cond: torch.Tensor | None = None) -> torch.Tensor:
        """MSE of `raw` at x = x0 + sigma eps against its target, weighted by `weight` (Ho et al. 2020, eq. 14;
        Salimans & Ho 2022; Karras et al. 2022, eq. 8; Hang et al. 2023)."""
        x = x0 + append_dims(sigma, x0) * eps  # (B, ...)
        raw, target = self.raw(x, sigma, cond), self.target(x0, eps, sigma)
        if self.loss_weight == "uniform":
            return F.mse_loss(raw, target)
        return (self.weight(sigma) * (raw - target).pow(2).flatten(1).mean(1)).mean()

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

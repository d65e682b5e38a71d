"""Training objectives: what the network predicts, what it sees and how its error is weighted; one class each.

Every sampler talks to an eps-predictor in the frame x = x0 + sigma * eps. An objective wraps any network
`net(x_in, sigma, cond)` and returns eps from `forward`. Each subclass owns, as EDM's preconditioners and
smalldiffusion's PredX0/PredV do: `c_in` (the network's input scaling), `target` (what the raw output regresses
on), `to_eps` (the eps its raw output implies) and `x0_error_scale` (the weight its raw MSE already puts on x0
errors, which a `loss_weight` divides out). Adding an objective is one subclass and one YAML file.

`loss_weight` reweights the raw MSE per example so that x0 errors get weight `loss_weight(sigma)` whatever the
network predicts: `MinSNRWeight` (Hang et al. 2023), `EDMWeight` (Karras et al. 2022); None is the raw MSE.
`train_sigmas`, when given, draws the training levels instead of the schedule (`LogNormalSigma`: EDM's log-normal
sigma, which is also flow matching's logit-normal t).
"""
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.errors import ConfigError
from diffusion_lab.utils import append_dims


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


def _check_sigma_data(sigma_data: float) -> None:
    if not sigma_data > 0:
        raise ConfigError(f"sigma_data={sigma_data} must be > 0")


class MinSNRWeight:
    """Min-SNR-gamma (Hang et al. 2023): x0 errors weighted min(SNR, gamma), SNR = 1 / sigma^2."""

    def __init__(self, gamma: float = 5.0):
        if not gamma > 0:
            raise ConfigError(f"gamma={gamma} must be > 0")
        self.gamma = gamma

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return (1 / sigma**2).clamp(max=self.gamma)


class EDMWeight:
    """EDM's weight of x0 errors (Karras et al. 2022, table 1): (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""

    def __init__(self, sigma_data: float = 0.5):
        _check_sigma_data(sigma_data)
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class Objective(nn.Module):
    """A network trained to predict some function of (x0, eps), turned into an eps-predictor; base of PredEps & co.

    scaled_input: feed the network x / sqrt(1 + sigma^2), the variance-preserving input of DDPM-style networks
    (the eps, x0 and v objectives; flow and EDM scale their own input). loss_weight: the weight of x0 errors, a
    function of sigma (None: the raw MSE). train_sigmas: a distribution of training levels (`sample(n, generator,
    device)`), or None for the schedule's levels.
    """

    def __init__(self, net: nn.Module, scaled_input: bool = False, loss_weight=None, train_sigmas=None):
        super().__init__()
        self.net, self.scaled_input = net, scaled_input
        self.loss_weight, self.train_sigmas = loss_weight, train_sigmas

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor | None:
        """The factor the network's input x is multiplied by (None: x as it is)."""
        return 1 / (1 + sigma**2).sqrt() if self.scaled_input else None

    def target(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The regression target of `raw` for clean x0 noised with eps at level sigma."""
        raise NotImplementedError

    def to_eps(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The eps that the raw output `out` at noisy x implies."""
        raise NotImplementedError

    def x0_error_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """k(sigma) such that, at a fixed noisy x, raw MSE = k * (MSE of the implied x0) (Hang et al. 2023)."""
        raise NotImplementedError

    def raw(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The network's own output for noisy x."""
        c_in = self.c_in(torch.as_tensor(sigma, dtype=x.dtype, device=x.device))
        return self.net(x if c_in is None else x * append_dims(c_in, x), sigma, cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        out = self.raw(x, sigma, cond)
        return self.to_eps(x, out, torch.as_tensor(sigma, dtype=x.dtype, device=x.device))

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """The per-example factor of the raw MSE that weights x0 errors by `loss_weight(sigma)`."""
        return self.loss_weight(sigma) / self.x0_error_scale(sigma)

    def loss(self, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
             cond: torch.Tensor | None = None) -> torch.Tensor:
        """MSE of `raw` at x = x0 + sigma eps against its target, weighted by `weight` (Ho et al. 2020, eq. 14;
        Salimans & Ho 2022; Karras et al. 2022, eq. 8; Hang et al. 2023)."""
        x = x0 + append_dims(sigma, x0) * eps  # (B, ...)
        raw, target = self.raw(x, sigma, cond), self.target(x0, eps, sigma)
        if self.loss_weight is None:
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


class PredEps(Objective):
    """The network predicts eps (Ho et al. 2020); with scaled_input, smalldiffusion's `Scaled`."""

    def target(self, x0, eps, sigma):
        return eps

    def to_eps(self, x, out, sigma):
        return out

    def x0_error_scale(self, sigma):
        return 1 / sigma**2


class PredX0(Objective):
    """The network predicts x0."""

    def target(self, x0, eps, sigma):
        return x0

    def to_eps(self, x, out, sigma):
        return x0_to_eps(x, out, sigma)

    def x0_error_scale(self, sigma):
        return torch.ones_like(sigma)


class PredV(Objective):
    """The network predicts v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022)."""

    def target(self, x0, eps, sigma):
        return eps_to_v(x0, eps, sigma)

    def to_eps(self, x, out, sigma):
        return v_to_eps(x, out, sigma)

    def x0_error_scale(self, sigma):
        return (1 + sigma**2) / sigma**2


class PredFlow(Objective):
    """Flow matching on the linear (rectified-flow) path (Lipman et al. 2023; Liu et al. 2023; Esser et al. 2024).

    With t = sigma / (1 + sigma) the flow state z_t = (1 - t) x0 + t eps equals x / (1 + sigma), which the network
    sees; it predicts the velocity dz/dt = eps - x0.
    """

    def __init__(self, net: nn.Module, loss_weight=None, train_sigmas=None):
        super().__init__(net, loss_weight=loss_weight, train_sigmas=train_sigmas)

    def c_in(self, sigma):
        return 1 / (1 + sigma)

    def target(self, x0, eps, sigma):
        return eps - x0

    def to_eps(self, x, out, sigma):
        return flow_to_eps(x, out, sigma)

    def x0_error_scale(self, sigma):
        return (1 + sigma) ** 2 / sigma**2


class PredEDM(Objective):
    """EDM's preconditioning (Karras et al. 2022, table 1): D(x) = c_skip x + c_out F(c_in x), with sigma_data."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, loss_weight=None, train_sigmas=None):
        _check_sigma_data(sigma_data)
        super().__init__(net, loss_weight=loss_weight, train_sigmas=train_sigmas)
        self.sigma_data = sigma_data

    def c_in(self, sigma):
        return 1 / (sigma**2 + self.sigma_data**2).sqrt()

    def target(self, x0, eps, sigma):
        return x0_to_edm(x0, x0 + append_dims(sigma, x0) * eps, sigma, self.sigma_data)

    def to_eps(self, x, out, sigma):
        return x0_to_eps(x, edm_to_x0(x, out, sigma, self.sigma_data), sigma)

    def x0_error_scale(self, sigma):
        return EDMWeight(self.sigma_data)(sigma)

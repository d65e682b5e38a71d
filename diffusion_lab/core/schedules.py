"""Noise schedules in the noise-level form x_t = x0 + sigma * eps (Karras et al. 2022, sec. 2).

A schedule is an increasing tensor of N training noise levels sigma_1 < ... < sigma_N. The
variance-preserving view of DDPM is the same process rescaled: alpha_bar = 1 / (1 + sigma^2)
and x_vp = sqrt(alpha_bar) * x_t, so every beta schedule is stored as its sigmas.
"""
import math

import numpy as np
import torch

from diffusion_lab.errors import ConfigError


def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt(1 / alpha_bar - 1)."""
    return (1 / alpha_bar - 1).sqrt()


def alpha_bar_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """alpha_bar = 1 / (1 + sigma^2)."""
    return 1 / (1 + sigma**2)


def t_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """Flow time t = sigma / (1 + sigma): x / (1 + sigma) = (1 - t) x0 + t eps."""
    return sigma / (1 + sigma)


def sigma_from_t(t: torch.Tensor) -> torch.Tensor:
    """sigma = t / (1 - t), the inverse of `t_from_sigma` (infinite at t = 1)."""
    return t / (1 - t)


def check_steps(steps: int) -> None:
    """Sampling steps: an integer >= 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r} must be an integer >= 1")


def _check_count(N: int) -> None:
    if not isinstance(N, int) or N < 1:
        raise ConfigError(f"N={N!r} must be an integer >= 1")


def _check_range(name_lo: str, lo: float, name_hi: str, hi: float) -> None:
    if not 0 < lo < hi:
        raise ConfigError(f"{name_lo}={lo} and {name_hi}={hi} must satisfy 0 < {name_lo} < {name_hi}")


def _check_betas(N: int, beta_start: float, beta_end: float) -> None:
    """The rule every beta schedule shares: N >= 1 levels and 0 < beta_start < beta_end < 1."""
    _check_count(N)
    _check_range("beta_start", beta_start, "beta_end", beta_end)
    if beta_end >= 1:
        raise ConfigError(f"beta_end={beta_end} must be < 1")


def _sigmas_from_betas(betas: torch.Tensor) -> torch.Tensor:
    alpha_bar = torch.cumprod(1 - betas, dim=0)  # (N,)
    return sigma_from_alpha_bar(alpha_bar)


class Schedule:
    """A set of N increasing training noise levels; base class of every schedule."""

    def __init__(self, sigmas: torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
        if sigmas.ndim != 1 or len(sigmas) < 1:
            raise ConfigError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
        if not (sigmas > 0).all() or not (sigmas[1:] > sigmas[:-1]).all():
            raise ConfigError("sigmas must be positive and strictly increasing")
        self.sigmas = sigmas  # (N,)

    def __len__(self) -> int:
        return len(self.sigmas)

    def __getitem__(self, i) -> torch.Tensor:
        return self.sigmas[i]

    @property
    def alpha_bar(self) -> torch.Tensor:
        """The variance-preserving alpha_bar_t of each training level, t = 0..N-1."""
        return alpha_bar_from_sigma(self.sigmas)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep index t in [0, N-1] of sigma, interpolating linearly in log sigma."""
        log_s = torch.as_tensor(sigma, dtype=torch.float32).log()
        log_table = self.sigmas.to(log_s.device).log()  # (N,)
        log_s = log_s.clamp(log_table[0], log_table[-1])
        hi = torch.searchsorted(log_table, log_s.contiguous()).clamp(1, len(self) - 1) if len(self) > 1 else None
        if hi is None:
            return torch.zeros_like(log_s)
        lo = hi - 1
        frac = (log_s - log_table[lo]) / (log_table[hi] - log_table[lo])
        return lo + frac

    def sample_sigmas(self, steps: int) -> torch.Tensor:
        """steps + 1 decreasing sigmas with trailing spacing (Lin et al. 2024, table 2); the last is sigma_1."""
        check_steps(steps)
        N = len(self)
        idx = np.round(N * (1 - np.arange(steps) / steps)).astype(np.int64) - 1  # N-1 down to ~N/steps-1
        return self.sigmas[list(idx) + [0]]

    def sample_batch(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One training sigma per example of x0, drawn uniformly from the N levels on x0's device."""
        idx = torch.randint(len(self), (x0.shape[0],), generator=generator, device=x0.device)  # (B,)
        return self._on(x0.device)[idx]

    def _on(self, device: torch.device) -> torch.Tensor:
        if self.sigmas.device != torch.device(device):
            self.sigmas = self.sigmas.to(device)
        return self.sigmas

    def __repr__(self) -> str:
        return f"{type(self).__name__}(N={len(self)}, sigma_min={self.sigmas[0]:.4g}, sigma_max={self.sigmas[-1]:.4g})"


class ScheduleLogLinear(Schedule):
    """Noise levels evenly spaced in log sigma between sigma_min and sigma_max."""

    def __init__(self, N: int = 200, sigma_min: float = 0.005, sigma_max: float = 10.0):
        _check_count(N)
        _check_range("sigma_min", sigma_min, "sigma_max", sigma_max)
        super().__init__(torch.logspace(math.log10(sigma_min), math.log10(sigma_max), N, dtype=torch.float64))


class ScheduleDDPM(Schedule):
    """Linear betas from beta_start to beta_end (Ho et al. 2020)."""

    def __init__(self, N: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02):
        _check_betas(N, beta_start, beta_end)
        super().__init__(_sigmas_from_betas(torch.linspace(beta_start, beta_end, N, dtype=torch.float64)))


class ScheduleQuadratic(Schedule):
    """Betas linear in sqrt(beta): beta_t = (sqrt(beta_start) + t/(N-1) (sqrt(beta_end) - sqrt(beta_start)))^2."""

    def __init__(self, N: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02):
        _check_betas(N, beta_start, beta_end)
        root = torch.linspace(beta_start**0.5, beta_end**0.5, N, dtype=torch.float64)
        super().__init__(_sigmas_from_betas(root**2))


class ScheduleLDM(ScheduleQuadratic):
    """The latent-diffusion schedule (Rombach et al. 2022): sqrt(beta) linear from 0.00085 to 0.012."""

    def __init__(self, N: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
        super().__init__(N, beta_start, beta_end)


class ScheduleSigmoid(Schedule):
    """Betas on a sigmoid over [-6, 6] between beta_start and beta_end (GeoDiff, Xu et al. 2022)."""

    def __init__(self, N: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02):
        _check_betas(N, beta_start, beta_end)
        s = torch.sigmoid(torch.linspace(-6, 6, N, dtype=torch.float64))
        super().__init__(_sigmas_from_betas(s * (beta_end - beta_start) + beta_start))


class ScheduleCosine(Schedule):
    """Cosine alpha_bar(t) = cos^2((t/N + s)/(1 + s) * pi/2), betas clipped at max_beta (Nichol & Dhariwal 2021, eq. 17)."""

    def __init__(self, N: int = 1000, max_beta: float = 0.999, s: float = 0.008):
        _check_count(N)
        if not 0 < max_beta < 1:
            raise ConfigError(f"max_beta={max_beta} must be in (0, 1)")
        t = torch.arange(N + 1, dtype=torch.float64) / N
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2  # (N+1,)
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        super().__init__(_sigmas_from_betas(betas))


class ScheduleKarras(Schedule):
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (Karras et al. 2022, eq. 5)."""

    def __init__(self, N: int = 200, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        _check_count(N)
        _check_range("sigma_min", sigma_min, "sigma_max", sigma_max)
        if rho <= 0:
            raise ConfigError(f"rho={rho} must be > 0")
        ramp = torch.linspace(0, 1, N, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        super().__init__((lo + ramp * (hi - lo)) ** rho)


class ScheduleFlow(Schedule):
    """Levels of the rectified-flow time t = sigma / (1 + sigma), evenly spaced in t from t_min to t_max and then
    shifted, t -> shift t / (1 + (shift - 1) t) (Esser et al. 2024, sec. 5.3.2: shift > 1 spends more steps at high
    noise). Euler steps on these levels are Euler steps of the flow ODE dz/dt = v in t, from t_max (t = 1 is
    sigma = infinity, which a network conditioned on log sigma cannot see) down to t_min."""

    def __init__(self, N: int = 1000, shift: float = 1.0, t_min: float = 0.001, t_max: float = 0.995):
        _check_count(N)
        if not 0 < t_min < t_max < 1:
            raise ConfigError(f"t_min={t_min} and t_max={t_max} must satisfy 0 < t_min < t_max < 1")
        if not shift > 0:
            raise ConfigError(f"shift={shift} must be > 0")
        t = torch.linspace(t_min, t_max, N, dtype=torch.float64)
        super().__init__(sigma_from_t(shift * t / (1 + (shift - 1) * t)))


class LogNormalSigma:
    """Training levels with log sigma ~ N(mean, std^2): EDM's (mean -1.2, std 1.2; Karras et al. 2022, table 1) and,
    since log sigma = logit t for t = sigma / (1 + sigma), flow matching's logit-normal t (mean 0, std 1; Esser
    et al. 2024, eq. 19). A training-level distribution for `Objective(train_sigmas=...)`, not a sampling schedule."""

    def __init__(self, mean: float = -1.2, std: float = 1.2):
        if not std > 0:
            raise ConfigError(f"std={std} must be > 0")
        self.mean, self.std = mean, std

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n levels (n,) on `device` (where `generator` lives, when given)."""
        return (self.mean + self.std * torch.randn(n, generator=generator, device=device)).exp()

    def __repr__(self) -> str:
        return f"LogNormalSigma(mean={self.mean}, std={self.std})"


class UniformFlowTime:
    """Training levels sigma = t / (1 - t) with flow time t ~ U(t_min, 1 - t_min) (rectified flow, Liu et al. 2023);
    t_min keeps sigma finite and positive."""

    def __init__(self, t_min: float = 1e-4):
        if not 0 < t_min < 0.5:
            raise ConfigError(f"t_min={t_min} must be in (0, 0.5)")
        self.t_min = t_min

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return sigma_from_t(self.t_min + (1 - 2 * self.t_min) * torch.rand(n, generator=generator, device=device))

    def __repr__(self) -> str:
        return f"UniformFlowTime(t_min={self.t_min})"

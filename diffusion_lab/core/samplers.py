"""Samplers: pure functions that share one signature and yield every intermediate x_t.

Every sampler is `sample_*(model, sigmas, *, xt=None, batch_size=1, cond=None, guidance=None, generator=None,
<its own settings>)`, as in k-diffusion; `samples` keeps smalldiffusion's positional signature. All work in the
frame x = x0 + sigma * eps and take the decreasing noise levels `sigmas` to visit (from
`Schedule.sample_sigmas(steps)`), so any sampler runs with any schedule. Noise comes from `generator`: one
torch.Generator for the batch, or NoiseStreams, one stream per sample, which makes every sample independent of the
batch it was drawn in. Each runs the model in eval mode (no dropout or label dropout) and gives every module back
its mode afterwards. `Sampler` binds one of them to a step count and a schedule: what a config builds.
"""
import functools
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from diffusion_lab.core.guidance import ClassifierFreeGuidance, Guidance
from diffusion_lab.core.noise import NoiseStreams
from diffusion_lab.core.schedules import Schedule, check_steps
from diffusion_lab.errors import ConfigError, first_line
from diffusion_lab.utils import module_device

Generators = torch.Generator | NoiseStreams | None


def randn(shape: Sequence[int], generator: Generators = None, device=None, dtype=None) -> torch.Tensor:
    """Standard normal noise of `shape`; with NoiseStreams, row i comes from stream i."""
    if isinstance(generator, NoiseStreams):
        return generator.randn(shape, dtype).to(device)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _check_generalized(gam: float, mu: float) -> None:
    if not 0 <= mu < 1:
        raise ConfigError(f"mu={mu} must be in [0, 1)")
    if gam < 1:
        raise ConfigError(f"gam={gam} must be >= 1")


def _check_eta(eta: float) -> None:
    if eta < 0:
        raise ConfigError(f"eta={eta} must be >= 0")


def in_eval_mode(sampler: Callable[..., Iterator[torch.Tensor]]) -> Callable[..., Iterator[torch.Tensor]]:
    """Runs a sampler with every module of the model in eval mode (no dropout, no label dropout), then gives each
    module back the mode it had, when the sampler finishes or is closed."""
    @functools.wraps(sampler)
    def run(model: nn.Module, *args, **kwargs) -> Iterator[torch.Tensor]:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield from sampler(model, *args, **kwargs)
        finally:
            for m, training in modes:
                m.training = training
    return run


def prepare(model, sigmas, xt, batch_size, cond, guidance, generator):
    """Validates the common arguments; returns (sigmas on x's device and dtype, initial x, guidance)."""
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ConfigError(f"sigmas has shape {tuple(sigmas.shape)}: need a 1-D tensor of at least 2 levels")
    if isinstance(generator, NoiseStreams):
        batch_size = len(generator)
    if xt is None:
        xt = randn((batch_size, *model.input_dims), generator, module_device(model)) * sigmas[0].item()
    elif tuple(xt.shape[1:]) != tuple(model.input_dims):
        raise ConfigError(f"xt has shape {tuple(xt.shape)}, the model takes (B, {', '.join(map(str, model.input_dims))})")
    if cond is not None and len(cond) != len(xt):
        raise ConfigError(f"cond has {len(cond)} entries for a batch of {len(xt)}")
    return sigmas.to(xt.device, xt.dtype), xt, guidance or Guidance()


@torch.no_grad()
@in_eval_mode
def sample_generalized(model: nn.Module, sigmas: torch.Tensor, *, xt: torch.Tensor | None = None, batch_size: int = 1,
                       cond: torch.Tensor | None = None, guidance: Guidance | None = None, generator: Generators = None,
                       gam: float = 1.0, mu: float = 0.0) -> Iterator[torch.Tensor]:
    """The generalized sampler (Permenter & Yuan 2024, alg. 2): DDPM at (1, 0.5), DDIM at (1, 0), accelerated at (2, 0).

    gam >= 1 extrapolates eps from the previous step (gradient estimation); mu in [0, 1) sets how
    much of each step's noise is fresh: the deterministic move lands at sigma_p =
    sigma_prev^(1/(1-mu)) / sigma^(mu/(1-mu)), and noise of scale sqrt(sigma_prev^2 - sigma_p^2) is added.
    """
    _check_generalized(gam, mu)
    sigmas, xt, guide = prepare(model, sigmas, xt, batch_size, cond, guidance, generator)
    eps = None
    for sig, sig_prev in zip(sigmas[:-1], sigmas[1:]):
        eps_prev, eps = eps, guide(model, xt, sig, cond)
        eps_av = eps if eps_prev is None else gam * eps + (1 - gam) * eps_prev
        sig_p = (sig_prev / sig**mu) ** (1 / (1 - mu))
        xt = xt - (sig - sig_p) * eps_av  # (B, ...)
        if mu > 0:
            xt = xt + (sig_prev**2 - sig_p**2).clamp(min=0).sqrt() * randn(xt.shape, generator, xt.device, xt.dtype)
        yield xt


def samples(model: nn.Module, sigmas: torch.Tensor, gam: float = 1.0, mu: float = 0.0, cfg_scale: float = 0.0,
            batchsize: int = 1, xt: torch.Tensor | None = None, cond: torch.Tensor | None = None, *,
            guidance: Guidance | None = None, generator: Generators = None) -> Iterator[torch.Tensor]:
    """`sample_generalized` with smalldiffusion's signature; cfg_scale > 0 is ClassifierFreeGuidance(cfg_scale)."""
    if cfg_scale and guidance is not None:
        raise ConfigError(f"cfg_scale={cfg_scale} and guidance={type(guidance).__name__}: pass one of them")
    guidance = ClassifierFreeGuidance(cfg_scale) if cfg_scale else guidance
    return sample_generalized(model, sigmas, xt=xt, batch_size=batchsize, cond=cond, guidance=guidance,
                              generator=generator, gam=gam, mu=mu)


def q_sample(x0: torch.Tensor, alpha_bar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward noising q(x_t | x0) in the variance-preserving frame: sqrt(ab) x0 + sqrt(1 - ab) eps (Ho et al. 2020, eq. 4)."""
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor,
              eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step x_t -> x_{t-1} in the variance-preserving frame (Song et al. 2021, eq. 12 and 16)."""
    x0 = (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    s = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    out = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - s**2).clamp(min=0).sqrt() * eps
    return out if noise is None else out + s * noise


def ddpm_step(x: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One ancestral step p(x_{t-1} | x_t) with the posterior variance beta~_t (Ho et al. 2020, eq. 11 and 7)."""
    alpha = alpha_bar / alpha_bar_prev
    mean = (x - (1 - alpha) / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()
    var = (1 - alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar)
    return mean if noise is None else mean + var.sqrt() * noise


def _vp_steps(step, stochastic, model, sigmas, xt, batch_size, cond, guidance, generator):
    """Runs `step(x_vp, eps, ab, ab_prev, noise)` of the variance-preserving frame over the levels."""
    sigmas, xt, guide = prepare(model, sigmas, xt, batch_size, cond, guidance, generator)
    ab = 1 / (1 + sigmas**2)  # (steps+1,)
    for i in range(len(sigmas) - 1):
        eps = guide(model, xt, sigmas[i], cond)
        noise = randn(xt.shape, generator, xt.device, xt.dtype) if stochastic else None
        x_vp = step(xt * ab[i].sqrt(), eps, ab[i], ab[i + 1], noise)  # (B, ...)
        xt = x_vp / ab[i + 1].sqrt()
        yield xt


@torch.no_grad()
@in_eval_mode
def sample_ddim(model: nn.Module, sigmas: torch.Tensor, *, xt: torch.Tensor | None = None, batch_size: int = 1,
                cond: torch.Tensor | None = None, guidance: Guidance | None = None, generator: Generators = None,
                eta: float = 0.0) -> Iterator[torch.Tensor]:
    """DDIM over the given levels (eta=0 deterministic, eta=1 ancestral-like); yields x_t in the sigma frame."""
    _check_eta(eta)
    step = lambda x, e, a, ap, n: ddim_step(x, e, a, ap, eta, n)  # noqa: E731
    yield from _vp_steps(step, eta > 0, model, sigmas, xt, batch_size, cond, guidance, generator)


@torch.no_grad()
@in_eval_mode
def sample_ddpm(model: nn.Module, sigmas: torch.Tensor, *, xt: torch.Tensor | None = None, batch_size: int = 1,
                cond: torch.Tensor | None = None, guidance: Guidance | None = None,
                generator: Generators = None) -> Iterator[torch.Tensor]:
    """Ancestral DDPM sampling (Ho et al. 2020, alg. 2) over the given levels; yields x_t in the sigma frame."""
    yield from _vp_steps(ddpm_step, True, model, sigmas, xt, batch_size, cond, guidance, generator)


def _churn(xt, sig, steps, s_churn, s_tmin, s_tmax, s_noise, generator):
    """Raise the noise level from sigma to sigma_hat = sigma (1 + gamma) (Karras et al. 2022, alg. 2 lines 4-6)."""
    gamma = min(s_churn / steps, 2**0.5 - 1) if s_churn > 0 and s_tmin <= sig <= s_tmax else 0.0
    if gamma == 0:
        return xt, sig
    sig_hat = sig * (1 + gamma)
    noise = randn(xt.shape, generator, xt.device, xt.dtype)
    return xt + (sig_hat**2 - sig**2) ** 0.5 * s_noise * noise, sig_hat


@torch.no_grad()
@in_eval_mode
def sample_euler(model: nn.Module, sigmas: torch.Tensor, *, xt: torch.Tensor | None = None, batch_size: int = 1,
                 cond: torch.Tensor | None = None, guidance: Guidance | None = None, generator: Generators = None,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                 s_noise: float = 1.0) -> Iterator[torch.Tensor]:
    """Euler steps of the probability-flow ODE dx/dsigma = eps (Karras et al. 2022, alg. 2 without the Heun correction)."""
    sigmas, xt, guide = prepare(model, sigmas, xt, batch_size, cond, guidance, generator)
    levels = sigmas.tolist()  # Python floats: control flow without a device sync per step
    for sig, sig_next in zip(levels[:-1], levels[1:]):
        xt, sig_hat = _churn(xt, sig, len(levels) - 1, s_churn, s_tmin, s_tmax, s_noise, generator)
        xt = xt + (sig_next - sig_hat) * guide(model, xt, sig_hat, cond)  # (B, ...)
        yield xt


@torch.no_grad()
@in_eval_mode
def sample_euler_ancestral(model: nn.Module, sigmas: torch.Tensor, *, xt: torch.Tensor | None = None,
                           batch_size: int = 1, cond: torch.Tensor | None = None, guidance: Guidance | None = None,
                           generator: Generators = None, eta: float = 1.0) -> Iterator[torch.Tensor]:
    """Euler ancestral (k-diffusion's sample_euler_ancestral): an Euler step down to sigma_down, then fresh noise of
    scale sigma_up, with sigma_up^2 = eta^2 sigma'^2 (sigma^2 - sigma'^2) / sigma^2 (at most sigma'^2) and
    sigma_down^2 = sigma'^2 - sigma_up^2, so the marginal at sigma' is kept; eta=0 is Euler."""
    _check_eta(eta)
    sigmas, xt, guide = prepare(model, sigmas, xt, batch_size, cond, guidance, generator)
    levels = sigmas.tolist()
    for sig, sig_next in zip(levels[:-1], levels[1:]):
        sig_up = min(sig_next, eta * (sig_next**2 * (sig**2 - sig_next**2) / sig**2) ** 0.5)
        sig_down = (sig_next**2 - sig_up**2) ** 0.5 if sig_up > 0 else sig_next
        xt = xt + (sig_down - sig) * guide(model, xt, sig, cond)  # (B, ...)
        if sig_up > 0:
            xt = xt + sig_up * randn(xt.shape, generator, xt.device, xt.dtype)
        yield xt


@torch.no_grad()
@in_eval_mode
def sample_heun(model: nn.Module, sigmas: torch.Tensor, *, xt: torch.Tensor | None = None, batch_size: int = 1,
                cond: torch.Tensor | None = None, guidance: Guidance | None = None, generator: Generators = None,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                s_noise: float = 1.0) -> Iterator[torch.Tensor]:
    """Heun's method (Karras et al. 2022, alg. 1; with s_churn > 0, the stochastic alg. 2). The last step is Euler's,
    as to sigma = 0 in alg. 1: like every other sampler here, it never evaluates the model at the last level, which
    is a schedule's sigma_min when it is not 0. Use it on levels spaced as EDM's (ScheduleKarras, rho = 7)."""
    sigmas, xt, guide = prepare(model, sigmas, xt, batch_size, cond, guidance, generator)
    levels = sigmas.tolist()
    for i, (sig, sig_next) in enumerate(zip(levels[:-1], levels[1:])):
        xt, sig_hat = _churn(xt, sig, len(levels) - 1, s_churn, s_tmin, s_tmax, s_noise, generator)
        d = guide(model, xt, sig_hat, cond)  # dx/dsigma = eps
        x_next = xt + (sig_next - sig_hat) * d  # (B, ...)
        if i < len(levels) - 2:
            d_next = guide(model, x_next, sig_next, cond)
            x_next = xt + (sig_next - sig_hat) * (d + d_next) / 2
        xt = x_next
        yield xt


sample_heun.evaluations_per_step = 2
sample_heun.last_step_evaluations = 1


class _Probe(nn.Module):
    """The smallest denoiser: one coordinate and eps = 0. One step of a sampler on it checks the sampler's settings."""

    input_dims = (1,)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(x)


class Sampler:
    """A sampler function with its settings, the number of steps and an optional sampling schedule.

    method: a `sample_*` function, usually with its settings bound (`functools.partial`, or `_partial_: true` in a
    config); one probe step on a one-number model checks them at once, with a private generator. schedule, when
    given, replaces the model's training schedule for sampling (a model trained on one schedule samples on
    another). A function that evaluates the model more than once per step says so in `evaluations_per_step` (and in
    `last_step_evaluations` when its last step differs).
    """

    def __init__(self, method: Callable[..., Iterator[torch.Tensor]], steps: int = 20,
                 schedule: Schedule | None = None):
        check_steps(steps)
        self.method, self.steps, self.schedule = method, steps, schedule
        try:
            next(iter(method(_Probe(), torch.tensor([1.0, 0.5]), batch_size=1, generator=torch.Generator())))
        except TypeError as err:  # a setting the function does not take
            raise ConfigError(f"method: {first_line(err)}") from None

    def sigmas(self, schedule: Schedule) -> torch.Tensor:
        """The steps + 1 levels to visit."""
        return (self.schedule or schedule).sample_sigmas(self.steps)

    @property
    def function(self) -> Callable[..., Iterator[torch.Tensor]]:
        """The sampler function itself (`method` without its bound settings)."""
        return getattr(self.method, "func", self.method)

    @property
    def settings(self) -> dict:
        """The method's bound settings (gam, mu, eta, order, ...)."""
        return dict(getattr(self.method, "keywords", {}))

    @property
    def nfe(self) -> int:
        """Model evaluations per sample (without guidance's doubling)."""
        per_step = getattr(self.function, "evaluations_per_step", 1)
        return (self.steps - 1) * per_step + getattr(self.function, "last_step_evaluations", per_step)

    def __call__(self, model: nn.Module, schedule: Schedule, *, xt: torch.Tensor | None = None, batch_size: int = 1,
                 cond: torch.Tensor | None = None, guidance: Guidance | None = None,
                 generator: Generators = None) -> Iterator[torch.Tensor]:
        return self.method(model, self.sigmas(schedule), xt=xt, batch_size=batch_size, cond=cond, guidance=guidance,
                           generator=generator)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"Sampler({self.function.__name__}({settings}), steps={self.steps})"

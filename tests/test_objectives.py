"""Flow matching, EDM preconditioning, loss weights, training-level distributions and DPM-Solver++ (issue 15)."""
import pytest
import torch
from scipy import stats
from torch import nn

import functools

from diffusion_lab.core import (EDMWeight, LogNormalSigma, MinSNRWeight, Objective, PredEDM, PredEps, PredFlow, PredV,
                                PredX0, Sampler, ScheduleDDPM, ScheduleFlow, ScheduleLogLinear, UniformFlowTime,
                                diffusion_loss, sample_ddim, sample_dpmpp, sample_euler, sigma_from_t, t_from_sigma)
from diffusion_lab.errors import ConfigError
from diffusion_lab.models import IdealDenoiser


class Constant(nn.Module):
    """A 'network' that returns a fixed raw output, whatever its input."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x, sigma, cond=None):
        return self.out


def _edm_raw(x0_hat, x, s, eps_hat, sigma_data=0.5):
    c_skip, c_out = sigma_data**2 / (s**2 + sigma_data**2), s * sigma_data / (s**2 + sigma_data**2).sqrt()
    return (x0_hat - c_skip * x) / c_out


# The raw output of each objective that implies the estimate x0_hat at noisy x (x, s = sigma (B, 1), eps_hat), written
# from the definitions (Salimans & Ho 2022 for v; Karras et al. 2022, eq. 7 for EDM; the velocity eps - x0 for flow).
RAW = {PredEps: lambda x0_hat, x, s, eps_hat: eps_hat,
       PredX0: lambda x0_hat, x, s, eps_hat: x0_hat,
       PredV: lambda x0_hat, x, s, eps_hat: (eps_hat - s * x0_hat) / (1 + s**2).sqrt(),
       PredFlow: lambda x0_hat, x, s, eps_hat: eps_hat - x0_hat,
       PredEDM: _edm_raw}


def raw_for(cls, x0_hat: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, 1)
    return RAW[cls](x0_hat, x, s, (x - x0_hat) / s)


def test_every_objective_of_the_library_has_a_reference_here():
    library = {c for c in Objective.__subclasses__() if c.__module__.startswith("diffusion_lab.")}
    assert library == set(RAW)


def test_flow_frame_conversions_round_trip_and_match_the_linear_path():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(t_from_sigma(sigma_from_t(t)), t, atol=1e-12)
    torch.manual_seed(0)
    x0, eps = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    sigma = sigma_from_t(t)
    x = x0 + sigma[:, None] * eps
    assert torch.allclose(x / (1 + sigma[:, None]), (1 - t[:, None]) * x0 + t[:, None] * eps, atol=1e-12)
    # a flow network that outputs the true velocity eps - x0 gives back eps and x0
    den = PredFlow(Constant(eps - x0))
    assert torch.allclose(den(x, sigma), eps, atol=1e-10)


@pytest.mark.parametrize("cls", list(RAW), ids=lambda c: c.__name__)
def test_each_objective_converts_its_raw_output_to_the_implied_eps(cls):
    torch.manual_seed(1)
    x0_hat, x = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64) * 3
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 80.0], dtype=torch.float64)
    den = cls(Constant(raw_for(cls, x0_hat, x, sigma)))
    assert torch.allclose(den(x, sigma), (x - x0_hat) / sigma[:, None], rtol=1e-9, atol=1e-9)


def test_edm_preconditioning_with_a_zero_network_is_the_gaussian_posterior_mean():
    """For x0 ~ N(0, sigma_data^2 I), E[x0 | x] = sigma_data^2 / (sigma_data^2 + sigma^2) x = c_skip x: F = 0 is ideal."""
    sd, sigma = 0.7, torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    den = PredEDM(Constant(torch.zeros(4, 5, dtype=torch.float64)), sigma_data=sd)
    x0 = x - sigma[:, None] * den(x, sigma)
    assert torch.allclose(x0, sd**2 / (sd**2 + sigma[:, None] ** 2) * x, atol=1e-12)


def test_edm_loss_is_minimized_by_the_ideal_denoisers_posterior_mean():
    """The exact minimizer of the EDM loss, E[target | x], gives D(x) = E[x0 | x] of a finite data set."""
    torch.manual_seed(2)
    data = torch.randn(7, 3, dtype=torch.float64)
    ideal = IdealDenoiser(data)
    x, sigma = torch.randn(5, 3, dtype=torch.float64) * 2, torch.tensor([0.1, 0.3, 1.0, 2.0, 10.0], dtype=torch.float64)
    # E[target | x] with the posterior weights over the data points, target_i = (x0_i - c_skip x) / c_out
    logits = -((x[:, None] - data[None]) ** 2).sum(-1) / (2 * sigma[:, None] ** 2)  # (5, 7)
    w = logits.softmax(1)
    sd = 0.5
    c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
    targets = (data[None] - c_skip[:, None, None] * x[:, None]) / c_out[:, None, None]  # (5, 7, 3)
    best = (w[..., None] * targets).sum(1)
    den = PredEDM(Constant(best), sigma_data=sd)
    assert torch.allclose(x - sigma[:, None] * den(x, sigma), ideal.posterior_mean(x, sigma), atol=1e-9)


@pytest.mark.parametrize("weighting", ["min_snr", "edm"])
def test_loss_weights_weight_x0_errors_the_same_whatever_the_objective(weighting):
    """Min-SNR-gamma (Hang et al. 2023): x0 errors weighted min(1/sigma^2, gamma); EDM: (sigma^2 + sd^2)/(sigma sd)^2."""
    torch.manual_seed(3)
    x0, eps = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.3, 0.6, 2.0, 20.0], dtype=torch.float64)
    x = x0 + sigma[:, None] * eps
    x0_hat = x0 + 0.1 * torch.randn(5, 4, dtype=torch.float64)
    sd, gamma = 0.5, 5.0
    w = (1 / sigma**2).clamp(max=gamma) if weighting == "min_snr" else (sigma**2 + sd**2) / (sigma * sd) ** 2
    expected = (w * ((x0_hat - x0) ** 2).mean(1)).mean()
    weight = MinSNRWeight(gamma) if weighting == "min_snr" else EDMWeight(sd)
    for cls in RAW:
        den = cls(Constant(raw_for(cls, x0_hat, x, sigma)), loss_weight=weight)
        assert den.loss(x0, sigma, eps).item() == pytest.approx(expected.item(), rel=1e-9), cls


def test_min_snr_weights_of_the_paper():
    """eps: min(SNR, g)/SNR; v: min(SNR, g)/(SNR + 1) (Hang et al. 2023, eq. 7-9)."""
    sigma = torch.tensor([0.1, 0.4, 0.45, 1.0, 3.0], dtype=torch.float64)
    snr = 1 / sigma**2
    eps = PredEps(nn.Identity(), loss_weight=MinSNRWeight(5.0))
    v = PredV(nn.Identity(), loss_weight=MinSNRWeight(5.0))
    assert torch.allclose(eps.weight(sigma), snr.clamp(max=5) / snr)
    assert torch.allclose(v.weight(sigma), snr.clamp(max=5) / (snr + 1))


def test_training_level_distributions():
    g = torch.Generator().manual_seed(0)
    logs = LogNormalSigma(-1.2, 1.2).sample(20000, g).log()
    assert abs(logs.mean().item() + 1.2) < 0.03 and abs(logs.std().item() - 1.2) < 0.03
    t = t_from_sigma(UniformFlowTime().sample(20000, g).double())
    assert stats.kstest(t.numpy(), "uniform").pvalue > 1e-3
    # a denoiser with train_sigmas draws its training levels from it, not from the schedule
    seen = []

    class Record(nn.Module):
        def forward(self, x, sigma, cond=None):
            seen.append(sigma)
            return x

    den = PredFlow(Record(), train_sigmas=LogNormalSigma(0.0, 1.0))
    diffusion_loss(den, torch.randn(4096, 2), ScheduleLogLinear(10, 0.1, 1.0), generator=g)
    assert seen[0].max() > 5.0 and seen[0].min() < 0.1  # outside the schedule's [0.1, 1]


def test_flow_schedule_spacing_and_shift():
    t = t_from_sigma(ScheduleFlow(N=5, shift=1.0, t_min=0.1, t_max=0.9).sigmas.double())
    assert torch.allclose(t, torch.linspace(0.1, 0.9, 5, dtype=torch.float64), atol=1e-6)
    shifted = t_from_sigma(ScheduleFlow(N=5, shift=3.0, t_min=0.1, t_max=0.9).sigmas.double())
    assert torch.allclose(shifted, 3 * t / (1 + 2 * t), atol=1e-6)


def test_euler_on_flow_levels_is_euler_on_the_flow_ode_in_t():
    """x' = x + (s' - s) eps in the sigma frame equals z' = z + (t' - t) v, v = eps - x0, in the flow frame."""
    torch.manual_seed(4)
    model = PredEps(IdealDenoiser(torch.randn(16, 2)))
    schedule = ScheduleFlow(N=100, shift=3.0)
    sampler = Sampler(sample_euler, steps=8)
    levels = sampler.sigmas(schedule).double()
    x = torch.randn(5, 2) * levels[0].item()
    ours = list(sampler(model, schedule, xt=x.clone()))
    z, t = x.double() / (1 + levels[0]), t_from_sigma(levels)
    for i in range(8):
        s = levels[i]
        eps = model((z * (1 + s)).float(), s.float()).double()
        v = eps - (z * (1 + s) - s * eps)
        z = z + (t[i + 1] - t[i]) * v
        assert torch.allclose(ours[i].double() / (1 + levels[i + 1]), z, atol=1e-5)


def diffusers_reference(algorithm: str, order: int, steps: int, eps_fn, x_ve: torch.Tensor, noises=None) -> tuple:
    from diffusers import DPMSolverMultistepScheduler
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", algorithm_type=algorithm,
                                        solver_order=order, solver_type="midpoint", final_sigmas_type="zero",
                                        lower_order_final=False)
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.double()  # (steps + 1,) variance-exploding levels, the last 0
    sample = x_ve / (1 + sigmas[0] ** 2).sqrt()
    out = []
    for i, t in enumerate(sched.timesteps):
        eps = eps_fn(sample * (1 + sigmas[i] ** 2).sqrt(), sigmas[i])
        noise = None if noises is None else noises[i]
        sample = sched.step(eps, t, sample, variance_noise=noise).prev_sample
        out.append(sample * (1 + sigmas[i + 1] ** 2).sqrt())
    return sigmas, out


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("sde", [False, True])
def test_dpm_solver_pp_matches_diffusers_step_by_step(sde, order):
    torch.manual_seed(5)
    data = torch.randn(8, 3, dtype=torch.float64)
    model = PredEps(IdealDenoiser(data))
    x_ve = torch.randn(4, 3, dtype=torch.float64) * 80
    steps = 12
    gen = torch.Generator().manual_seed(7)
    noises = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(steps)] if sde else None
    sigmas, ref = diffusers_reference("sde-dpmsolver++" if sde else "dpmsolver++", order, steps,
                                      lambda x, s: model(x, s), x_ve, noises)
    ours = list(sample_dpmpp(model, sigmas, xt=x_ve.clone(), sde=sde, order=order,
                             generator=torch.Generator().manual_seed(7)))
    assert len(ours) == len(ref) == steps
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert torch.allclose(a, b.double(), rtol=1e-6, atol=1e-6 * (1 + sigmas[i + 1].item())), i


def test_dpm_solver_pp_lands_on_training_points_in_few_steps_as_ddim_does_in_many():
    torch.manual_seed(6)
    data = torch.randn(12, 2) * 2
    model = PredEps(IdealDenoiser(data))
    schedule = ScheduleLogLinear(N=1000, sigma_min=0.002, sigma_max=40.0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 40.0

    def distance(sampler):
        out = list(sampler(model, schedule, xt=x.clone()))[-1]
        return torch.cdist(out, data).min(1).values.max().item()

    dpm, ddim = functools.partial(sample_dpmpp), functools.partial(sample_ddim)
    assert distance(Sampler(dpm, steps=15)) < 1e-2
    assert distance(Sampler(functools.partial(sample_dpmpp, order=3), steps=15)) < 1e-2
    assert distance(Sampler(ddim, steps=50)) < 1e-2
    assert distance(Sampler(ddim, steps=15)) > distance(Sampler(dpm, steps=15))


@pytest.mark.parametrize("make, message", [
    (lambda: PredEDM(nn.Identity(), sigma_data=0.0), "sigma_data=0.0 must be > 0"),
    (lambda: EDMWeight(sigma_data=-1), "sigma_data=-1 must be > 0"),
    (lambda: MinSNRWeight(gamma=0), "gamma=0 must be > 0"),
    (lambda: Sampler(functools.partial(sample_dpmpp, order=4)), "order=4 is not supported"),
])
def test_bad_objective_and_solver_settings_name_the_argument(make, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        make()


def test_flow_objective_takes_no_scaled_input():
    with pytest.raises(TypeError, match="scaled_input"):
        PredFlow(nn.Identity(), scaled_input=True)


def test_first_order_dpm_solver_pp_is_ddim():
    torch.manual_seed(8)
    model = PredEps(IdealDenoiser(torch.randn(10, 3, dtype=torch.float64)))
    schedule = ScheduleDDPM(N=1000)
    x = torch.randn(4, 3, dtype=torch.float64) * schedule.sigmas[-1].item()
    ours = list(Sampler(functools.partial(sample_dpmpp, order=1), steps=10)(model, schedule, xt=x.clone()))
    ddim = list(Sampler(sample_ddim, steps=10)(model, schedule, xt=x.clone()))
    for a, b in zip(ours, ddim):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-8)

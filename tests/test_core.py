"""The core library against closed forms: schedules, DDIM/DDPM steps, samplers, parameterizations, guidance."""
import functools
import inspect
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_lab.core import (ClassifierFreeGuidance, ClassifierGuidance, EDMWeight, Guidance, LogNormalSigma,
                                NoiseStreams, PredEDM, PredEps, PredFlow, PredV, PredX0, Sampler, ScheduleCosine,
                                ScheduleDDPM, ScheduleFlow, ScheduleKarras, ScheduleLDM, ScheduleLogLinear,
                                ScheduleQuadratic, ScheduleSigmoid, UniformFlowTime, ddpm_step, sample_ddim,
                                sample_ddpm, sample_dpmpp, sample_euler, sample_euler_ancestral, sample_generalized,
                                sample_heun, samples)
from diffusion_lab.errors import ConfigError

ALL_SCHEDULES = [ScheduleLogLinear(), ScheduleDDPM(), ScheduleLDM(), ScheduleSigmoid(), ScheduleCosine(),
                 ScheduleQuadratic(), ScheduleKarras(), ScheduleFlow()]


class LinearEps(nn.Module):
    """A fixed linear eps-predictor with an optional label offset: enough to test the samplers' algebra."""

    def __init__(self, dim=3, num_classes=0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(dim, dim, generator=g) * 0.3)
        self.emb = nn.Parameter(torch.randn(num_classes + 1, dim, generator=g))
        self.input_dims = (dim,)
        self.num_classes = num_classes
        self.calls = 0

    def forward(self, x, sigma, cond=None):
        self.calls += 1
        s = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])[:, None]
        out = x @ self.W / (1 + s)
        return out if cond is None else out + self.emb[cond]

    def null_cond(self, cond):
        if not self.num_classes:
            raise ConfigError("unconditional")
        return torch.full_like(cond, self.num_classes)


class OnePoint(nn.Module):
    """The exact eps-predictor for data concentrated at one point x0: eps = (x - x0) / sigma."""

    def __init__(self, x0):
        super().__init__()
        self.register_buffer("x0", x0)
        self.input_dims = tuple(x0.shape)

    def forward(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]).view(-1, *([1] * (x.ndim - 1)))
        return (x - self.x0) / s


def final(it):
    *_, x = it
    return x


def test_ddpm_alpha_bar_is_cumprod_of_one_minus_beta():
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(ScheduleDDPM(1000, 1e-4, 0.02).alpha_bar.numpy(), np.cumprod(1 - betas), rtol=1e-5)


def test_ldm_and_quadratic_betas_are_squares_of_a_linear_ramp():
    for sched, lo, hi in [(ScheduleLDM(), 0.00085, 0.012), (ScheduleQuadratic(1000, 1e-4, 0.02), 1e-4, 0.02)]:
        ab = sched.alpha_bar.double().numpy()
        betas = 1 - ab / np.concatenate([[1.0], ab[:-1]])
        np.testing.assert_allclose(betas, np.linspace(lo**0.5, hi**0.5, 1000) ** 2, rtol=1e-3, atol=1e-7)


def test_cosine_alpha_bar_matches_nichol_dhariwal_until_clipping():
    N, s = 1000, 0.008
    f = np.cos((np.arange(N + 1) / N + s) / (1 + s) * np.pi / 2) ** 2
    expected = f[1:] / f[0]
    np.testing.assert_allclose(ScheduleCosine(N).alpha_bar.numpy()[:900], expected[:900], rtol=1e-4)


def test_loglinear_and_karras_endpoints_and_spacing():
    s = ScheduleLogLinear(200, 0.005, 10).sigmas.double()
    assert math.isclose(s[0], 0.005, rel_tol=1e-5) and math.isclose(s[-1], 10, rel_tol=1e-5)
    np.testing.assert_allclose(np.diff(np.log(s.numpy())), np.log(10 / 0.005) / 199, rtol=1e-4)
    k = ScheduleKarras(5, 0.002, 80, 7).sigmas.double().numpy()
    expected = [(80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(5)][::-1]
    np.testing.assert_allclose(k, expected, rtol=1e-5)


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_sample_sigmas_has_steps_plus_one_decreasing_levels(sched):
    for n in [1, 2, 3, 7, 10, 20, 50, 199, 200]:
        sig = sched.sample_sigmas(n)
        assert len(sig) == n + 1
        assert sig[0] == sched.sigmas[-1] and sig[-1] == sched.sigmas[0]
        assert (sig[1:] <= sig[:-1]).all()
    assert torch.allclose(sched.alpha_bar, 1 / (1 + sched.sigmas**2))
    t = sched.timestep(sched.sigmas[[0, len(sched) // 2, -1]])
    assert torch.allclose(t, torch.tensor([0.0, len(sched) // 2, len(sched) - 1]), atol=1e-3)


def test_schedule_bad_arguments_raise_value_error_naming_the_key():
    with pytest.raises(ValueError, match="sigma_min"):
        ScheduleLogLinear(10, 1.0, 0.5)
    with pytest.raises(ValueError, match="N=0"):
        ScheduleDDPM(0)
    with pytest.raises(ValueError, match="steps"):
        ScheduleDDPM(10).sample_sigmas(0)
    with pytest.raises(ValueError, match="mu"):
        next(samples(LinearEps(), ScheduleDDPM(10).sample_sigmas(3), mu=1.0))


def test_one_ddim_step_equals_song_et_al_closed_form():
    model, sched = LinearEps(), ScheduleDDPM(1000)
    sig = sched.sample_sigmas(10)[:2].double()
    x = torch.randn(4, 3)
    ab_t, ab_prev = 1 / (1 + sig[0] ** 2), 1 / (1 + sig[1] ** 2)
    # Song et al. 2021 eq. 12 with sigma_t = 0, in the variance-preserving frame x_vp = sqrt(ab) x.
    x_vp = ab_t.sqrt() * x.double()
    eps = model(x, sig[0].float()).double()
    x0_pred = (x_vp - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    expected_vp = ab_prev.sqrt() * x0_pred + (1 - ab_prev).sqrt() * eps
    got = next(samples(model, sig.float(), gam=1, mu=0, xt=x))
    assert torch.allclose(got.double() * ab_prev.sqrt(), expected_vp, atol=1e-5)


def test_generalized_sampler_with_gam1_mu0_is_ddim():
    model, sched = LinearEps(), ScheduleLDM()
    sig, x = sched.sample_sigmas(25), torch.randn(5, 3)
    a = final(samples(model, sig, gam=1, mu=0, xt=x))
    b = final(sample_ddim(model, sig, eta=0.0, xt=x))
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_generalized_sampler_with_mu_half_is_the_ddpm_posterior_step():
    model, sched = LinearEps(), ScheduleDDPM(1000)
    sig, x = sched.sample_sigmas(10)[:2], torch.randn(4, 3)
    got = next(samples(model, sig, gam=1, mu=0.5, xt=x, generator=NoiseStreams(range(4))))
    z = NoiseStreams(range(4)).randn((4, 3))
    # q(x_{t-1} | x_t, x0) of Ho et al. 2020 eq. 7, with x0 predicted from eps, in the VP frame.
    s_t, s_p = sig.double()
    ab_t, ab_p = 1 / (1 + s_t**2), 1 / (1 + s_p**2)
    alpha, beta = ab_t / ab_p, 1 - ab_t / ab_p
    eps = model(x, sig[0]).double()
    x_vp = ab_t.sqrt() * x.double()
    x0 = (x_vp - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    mean = ab_p.sqrt() * beta / (1 - ab_t) * x0 + alpha.sqrt() * (1 - ab_p) / (1 - ab_t) * x_vp
    var = beta * (1 - ab_p) / (1 - ab_t)
    expected = (mean + var.sqrt() * z.double()) / ab_p.sqrt()
    assert torch.allclose(got.double(), expected, atol=1e-4)
    assert torch.allclose(ddpm_step(x_vp, eps, ab_t, ab_p, z.double()), mean + var.sqrt() * z.double(), atol=1e-8)


@pytest.mark.parametrize("sampler", [
    lambda m, s, x: samples(m, s, gam=1, mu=0, xt=x),
    lambda m, s, x: sample_ddim(m, s, xt=x),
    lambda m, s, x: sample_euler(m, s, xt=x),
    lambda m, s, x: sample_heun(m, s, xt=x),
], ids=["ddim-generalized", "ddim", "euler", "heun"])
def test_deterministic_samplers_solve_the_one_point_ode_exactly(sampler):
    # For data at one point, dx/dsigma = (x - x0)/sigma, so x(sigma) = x0 + sigma/sigma_T (x_T - x0).
    x0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    sig = ScheduleLogLinear(100, 0.01, 10).sample_sigmas(15).double()
    xT = torch.randn(3, 2, dtype=torch.float64) * 10
    out = final(sampler(OnePoint(x0), sig, xT))
    assert torch.allclose(out, x0 + sig[-1] / sig[0] * (xT - x0), atol=1e-9)


def test_accelerated_and_ddpm_samplers_reach_the_point():
    x0 = torch.tensor([0.5, -1.0])
    sig = ScheduleLogLinear(200, 0.005, 10).sample_sigmas(30)
    for out in [final(samples(OnePoint(x0), sig, gam=2, mu=0, batchsize=8)),
                final(sample_ddpm(OnePoint(x0), sig, batch_size=8, generator=torch.Generator().manual_seed(0)))]:
        assert (out - x0).abs().max() < 0.05


def test_samples_do_not_depend_on_batch_size_with_per_sample_seeds():
    model, sig = LinearEps(), ScheduleDDPM(100).sample_sigmas(8)
    big = final(samples(model, sig, mu=0.5, generator=NoiseStreams(range(10, 16))))
    one = final(samples(model, sig, mu=0.5, generator=NoiseStreams([13])))
    assert torch.allclose(big[3], one[0], atol=1e-6)
    again = final(samples(model, sig, mu=0.5, generator=NoiseStreams(range(10, 16))))
    assert torch.equal(big, again)


SAMPLER_FUNCTIONS = [sample_generalized, sample_ddim, sample_ddpm, sample_euler, sample_heun]


@pytest.mark.parametrize("fn", SAMPLER_FUNCTIONS, ids=lambda f: f.__name__)
def test_sampler_functions_share_one_signature_with_keyword_only_settings(fn):
    params = list(inspect.signature(fn).parameters.values())
    assert [(p.name, p.kind) for p in params[:2]] == [("model", params[0].POSITIONAL_OR_KEYWORD),
                                                       ("sigmas", params[0].POSITIONAL_OR_KEYWORD)]
    assert [p.name for p in params[2:7]] == ["xt", "batch_size", "cond", "guidance", "generator"]
    assert all(p.kind is p.KEYWORD_ONLY for p in params[2:])
    with pytest.raises(TypeError, match="positional"):
        next(fn(LinearEps(), ScheduleDDPM(10).sample_sigmas(2), torch.randn(2, 3)))


def test_euler_sampler_takes_explicit_euler_steps_of_the_probability_flow_ode():
    # dx/dsigma = eps(x, sigma) (Karras et al. 2022, eq. 3 with sigma(t) = t); one Euler step: x + (s' - s) eps(x, s)
    model, sched = LinearEps(), ScheduleLogLinear(50, 0.01, 10)
    xT = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    W, levels = model.W.detach(), sched.sample_sigmas(2).tolist()
    x, expected = xT, []
    for s, s_next in zip(levels[:-1], levels[1:]):
        x = x + (s_next - s) * (x @ W / (1 + s))  # (4, 3)
        expected.append(x)
    model.calls = 0
    got = list(Sampler(sample_euler, steps=2)(model, sched, xt=xT))
    assert model.calls == 2 == Sampler(sample_euler, steps=2).nfe
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-5)


def test_euler_ancestral_steps_to_sigma_down_then_adds_noise_of_sigma_up_and_is_euler_at_eta_zero():
    model, x = LinearEps(), torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    s, s_next = 2.0, 0.5
    up = (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5  # 0.484...: below s_next, so kept
    down = (s_next**2 - up**2) ** 0.5
    noise = NoiseStreams(range(4)).randn((4, 3))  # the first draw of the same streams
    eps = x @ model.W.detach() / (1 + s)
    got = final(sample_euler_ancestral(model, torch.tensor([s, s_next]), xt=x, generator=NoiseStreams(range(4))))
    assert torch.allclose(got, x + (down - s) * eps + up * noise, atol=1e-6)
    levels = ScheduleDDPM(100).sample_sigmas(5)
    assert torch.equal(final(sample_euler_ancestral(model, levels, xt=x, eta=0.0)), final(sample_euler(model, levels, xt=x)))


def test_heun_sampler_averages_the_slopes_at_both_ends_and_takes_euler_on_the_last_step():
    model = LinearEps()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    eps = lambda x, s: x @ model.W.detach() / (1 + s)  # noqa: E731
    s0, s1, s2 = 2.0, 0.5, 0.01
    d = eps(x, s0)
    heun = x + (s1 - s0) * (d + eps(x + (s1 - s0) * d, s1)) / 2  # Karras et al. 2022, alg. 1 lines 5-8
    expected = heun + (s2 - s1) * eps(heun, s1)  # the last step, to sigma_min or 0, is Euler's
    model.calls = 0
    assert torch.allclose(final(sample_heun(model, torch.tensor([s0, s1, s2]), xt=x)), expected, atol=1e-5)
    assert model.calls == 3
    assert torch.allclose(final(sample_heun(model, torch.tensor([s0, 0.0]), xt=x)), x - s0 * d, atol=1e-5)
    assert model.calls == 4
    sampler = Sampler(sample_heun, steps=5)
    assert sampler.nfe == 9 and len(sampler.sigmas(ScheduleLogLinear())) == 6


def test_euler_is_first_order_and_heun_second_order():
    # halving the step halves Euler's global error and quarters Heun's, against a fine Heun reference
    model = LinearEps().double()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 5
    levels = lambda n: torch.linspace(5.0, 0.2, n + 1, dtype=torch.float64)  # noqa: E731
    ref = final(sample_heun(model, levels(800), xt=x))
    err = {(fn, n): (final(fn(model, levels(n), xt=x)) - ref).abs().max().item()
           for fn in (sample_euler, sample_heun) for n in (20, 40)}
    assert 1.7 < err[sample_euler, 20] / err[sample_euler, 40] < 2.3, err
    assert 3.4 < err[sample_heun, 20] / err[sample_heun, 40] < 4.6, err


@pytest.mark.parametrize("fn,settings", [
    (sample_generalized, {"gam": 1.0, "mu": 0.5}), (sample_ddim, {"eta": 0.5}), (sample_ddpm, {}),
    (sample_euler, {"s_churn": 2.0, "s_noise": 1.01}), (sample_heun, {"s_churn": 2.0, "s_tmax": 5.0}),
    (sample_dpmpp, {"order": 3, "sde": True}),
], ids=["generalized", "ddim", "ddpm", "euler", "heun", "dpmpp"])
def test_a_sampler_runs_its_function_on_the_schedules_sigmas_with_nfe_model_calls(fn, settings):
    sampler = Sampler(functools.partial(fn, **settings), steps=4)
    model, sched = LinearEps(num_classes=3), ScheduleDDPM(100)
    y = torch.tensor([0, 2, 1])
    model.calls = 0
    got = final(sampler(model, sched, cond=y, guidance=Guidance(), generator=NoiseStreams(range(3))))
    assert model.calls == sampler.nfe == (2 * sampler.steps - 1 if fn is sample_heun else sampler.steps)
    want = final(fn(model, sched.sample_sigmas(4), cond=y, generator=NoiseStreams(range(3)), **settings))
    assert torch.equal(got, want)


def test_bad_settings_raise_one_message_naming_the_argument():
    sig = ScheduleDDPM(10).sample_sigmas(3)
    cases = {r"^mu=1.5 must be in \[0, 1\)$": [lambda: next(sample_generalized(LinearEps(), sig, mu=1.5)),
                                               lambda: Sampler(functools.partial(sample_generalized, mu=1.5))],
             r"^gam=0.5 must be >= 1$": [lambda: next(samples(LinearEps(), sig, 0.5)),
                                         lambda: Sampler(functools.partial(sample_generalized, gam=0.5))],
             r"^eta=-1 must be >= 0$": [lambda: next(sample_ddim(LinearEps(), sig, eta=-1)),
                                        lambda: Sampler(functools.partial(sample_ddim, eta=-1))],
             r"^order=4 is not supported": [lambda: Sampler(functools.partial(sample_dpmpp, order=4))],
             r"^method: sample_ddim\(\) got an unexpected keyword argument 'gam'$":
                 [lambda: Sampler(functools.partial(sample_ddim, gam=2.0))],
             r"^steps=0 must be an integer >= 1$": [lambda: Sampler(sample_euler, steps=0),
                                                    lambda: ScheduleDDPM(10).sample_sigmas(0)],
             r"^steps=True must be an integer >= 1$": [lambda: Sampler(sample_heun, steps=True)],
             r"^convention='x' must be one of \['cond', 'uncond'\]$": [lambda: ClassifierFreeGuidance(1.0, "x")],
             r"^cfg_scale=2.0 and guidance=Guidance: pass one of them$":
                 [lambda: samples(LinearEps(), sig, cfg_scale=2.0, guidance=Guidance())]}
    for message, calls in cases.items():
        for call in calls:
            with pytest.raises(ConfigError, match=message):
                call()


def test_objective_round_trips_are_exact():
    torch.manual_seed(0)
    x0, eps, sigma = torch.randn(6, 4), torch.randn(6, 4), torch.rand(6) * 5 + 0.01
    x = x0 + sigma[:, None] * eps

    class Oracle(nn.Module):
        input_dims = (4,)

        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def forward(self, x_in, s, cond=None):
            return {"eps": eps, "x0": x0, "v": (eps - sigma[:, None] * x0) / (1 + sigma[:, None] ** 2).sqrt()}[self.kind]

    for kind, cls in [("eps", PredEps), ("x0", PredX0), ("v", PredV)]:
        d = cls(Oracle(kind))
        assert torch.allclose(d(x, sigma), eps, atol=1e-5), kind
        assert torch.allclose(d.target(x0, eps, sigma), Oracle(kind)(x, sigma), atol=1e-6), kind


def test_scaled_input_feeds_sqrt_alpha_bar_times_x():
    seen = {}

    class Spy(nn.Module):
        input_dims = (2,)

        def forward(self, x, s, cond=None):
            seen["x"] = x
            return torch.zeros_like(x)

    x, sigma = torch.ones(2, 2), torch.tensor([0.0, 3.0])
    PredEps(Spy(), scaled_input=True)(x, sigma)
    assert torch.allclose(seen["x"][:, 0], torch.tensor([1.0, 1 / math.sqrt(10)]))


class Fixed(nn.Module):
    """A network that returns a fixed tensor and records the x and sigma it was called with."""

    input_dims = (4,)

    def __init__(self, out):
        super().__init__()
        self.out, self.seen = out, {}

    def forward(self, x, sigma, cond=None):
        self.seen.update(x=x, sigma=sigma)
        return self.out


def test_objective_loss_is_the_mse_of_the_raw_output_against_each_target():
    g = torch.Generator().manual_seed(0)
    x0, eps, out = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 8.0])
    s = sigma[:, None]  # (5, 1)
    targets = {PredEps: eps, PredX0: x0, PredV: (eps - s * x0) / (1 + s**2).sqrt()}
    for cls, target in targets.items():
        net = Fixed(out)
        loss = cls(net).loss(x0, sigma, eps)
        assert torch.allclose(loss, ((out - target) ** 2).mean(), atol=1e-6), cls
        assert torch.allclose(net.seen["x"], x0 + s * eps) and torch.equal(net.seen["sigma"], sigma)
    net = Fixed(out)
    PredEps(net, scaled_input=True).loss(x0, sigma, eps)
    assert torch.allclose(net.seen["x"], (x0 + s * eps) / (1 + s**2).sqrt())


def test_x0_and_v_losses_weight_the_eps_error_by_sigma2_and_1_plus_sigma2():
    # x0 - x0_hat = sigma (eps_hat - eps) and v - v_hat = sqrt(1 + sigma^2) (eps - eps_hat) for the same eps_hat
    g = torch.Generator().manual_seed(1)
    x0, eps, eps_hat = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    sigma = 3.0
    x = x0 + sigma * eps
    outputs = {"eps": eps_hat, "x0": x - sigma * eps_hat,
               "v": (1 + sigma**2) ** 0.5 * (eps_hat - sigma * x / (1 + sigma**2))}
    classes = {"eps": PredEps, "x0": PredX0, "v": PredV}
    loss = {k: classes[k](Fixed(o)).loss(x0, torch.tensor(sigma), eps) for k, o in outputs.items()}
    for kind, o in outputs.items():
        assert torch.allclose(classes[kind](Fixed(o))(x, torch.tensor(sigma)), eps_hat, atol=1e-5), kind
    assert torch.allclose(loss["eps"], ((eps_hat - eps) ** 2).mean())
    assert torch.allclose(loss["x0"], sigma**2 * loss["eps"], rtol=1e-5)
    assert torch.allclose(loss["v"], (1 + sigma**2) * loss["eps"], rtol=1e-5)


def test_diffusion_loss_draws_a_training_level_and_treats_a_bare_network_as_eps_prediction():
    from diffusion_lab.core import Schedule, diffusion_loss

    x0, out = torch.randn(4096, 4), torch.randn(4096, 4)
    schedule = Schedule(torch.tensor([0.5]))  # one level: every sigma is 0.5
    for model, target in [(Fixed(out), "eps"), (PredX0(Fixed(out)), "x0")]:
        loss = diffusion_loss(model, x0, schedule, generator=torch.Generator().manual_seed(0))
        seen = model.seen if target == "eps" else model.net.seen
        assert torch.equal(seen["sigma"], torch.full((4096,), 0.5))
        eps = (seen["x"] - x0) / 0.5  # (4096, 4)
        assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1) < 0.05  # standard normal noise
        assert torch.allclose(loss, ((out - (eps if target == "eps" else x0)) ** 2).mean(), atol=1e-5)
        again = diffusion_loss(model, x0, schedule, generator=torch.Generator().manual_seed(0))
        assert torch.equal(loss, again)


def test_wrappers_schedules_samplers_and_guidance_pickle():
    objs = [PredX0(LinearEps()), PredV(LinearEps()), PredEps(LinearEps(), scaled_input=True), *ALL_SCHEDULES,
            Sampler(functools.partial(sample_generalized, gam=2.0), 20),
            Sampler(functools.partial(sample_ddim, eta=0.0), 50, ScheduleLogLinear()), Sampler(sample_heun, 10),
            ClassifierFreeGuidance(4.0, "uncond"), Sampler(functools.partial(sample_dpmpp, sde=True), 10),
            PredFlow(LinearEps(), train_sigmas=LogNormalSigma(0.0, 1.0)),
            PredEDM(LinearEps(), loss_weight=EDMWeight(), train_sigmas=UniformFlowTime())]
    for o in objs:
        assert type(pickle.loads(pickle.dumps(o))) is type(o)


def test_cfg_scale_zero_is_the_conditional_model_in_one_batched_pass():
    model, x, sigma = LinearEps(num_classes=3), torch.randn(4, 3), torch.tensor(0.7)
    y = torch.tensor([0, 1, 2, 1])
    model.calls = 0
    out = ClassifierFreeGuidance(0.0)(model, x, sigma, y)
    assert model.calls == 1
    assert torch.allclose(out, model(x, sigma, y))
    eps_c, eps_u = model(x, sigma, y), model(x, sigma, model.null_cond(y))
    assert torch.allclose(ClassifierFreeGuidance(2.0)(model, x, sigma, y), eps_c + 2 * (eps_c - eps_u), atol=1e-6)
    # w in the "uncond" convention equals w - 1 in the "cond" one.
    assert torch.allclose(ClassifierFreeGuidance(7.5, "uncond")(model, x, sigma, y),
                          ClassifierFreeGuidance(6.5)(model, x, sigma, y), atol=1e-5)


def test_cfg_on_a_model_without_null_condition_is_rejected():
    sig = ScheduleDDPM(10).sample_sigmas(2)
    with pytest.raises(ConfigError, match="unconditional"):
        final(samples(LinearEps(), sig, cfg_scale=3.0, batchsize=2, cond=torch.tensor([0, 0])))
    with pytest.raises(ConfigError, match="null condition"):
        ClassifierFreeGuidance(1.0)(OnePoint(torch.zeros(2)), torch.zeros(1, 2), 1.0, torch.tensor([0]))


def test_classifier_guidance_follows_the_classifier_gradient():
    model, x, sigma, y = LinearEps(), torch.randn(4, 3), torch.tensor(0.5), torch.tensor([0, 1, 0, 1])

    class Const(nn.Module):
        def forward(self, x, s):
            return torch.zeros(x.shape[0], 2) + x.sum() * 0

    assert torch.allclose(ClassifierGuidance(Const(), 5.0)(model, x, sigma, y), model(x, sigma))

    class LinearClassifier(nn.Module):  # logits = x @ A: grad_x log p(y|x) = A[:, y] - sum_k p_k A[:, k]
        A = torch.randn(3, 2)

        def forward(self, x, s):
            return x @ self.A

    clf = LinearClassifier()
    p = (x @ clf.A).softmax(-1)
    grad = clf.A.T[y] - p @ clf.A.T
    expected = model(x, sigma) - 2.0 * 0.5 * grad
    assert torch.allclose(ClassifierGuidance(clf, 2.0)(model, x, sigma, y), expected, atol=1e-5)


def test_ideal_denoiser_samples_land_on_training_points():
    from diffusion_lab.models import IdealDenoiser

    data = torch.randn(12, 2, generator=torch.Generator().manual_seed(3))
    model = IdealDenoiser(data)
    sig = torch.cat([ScheduleLogLinear(200, 0.002, 10).sample_sigmas(60), torch.zeros(1)])  # end at sigma = 0
    x = final(samples(model, sig, gam=1, mu=0, batchsize=64, generator=torch.Generator().manual_seed(0)))
    nearest = torch.cdist(x, data).min(dim=1).values  # (64,)
    assert nearest.max() < 1e-2
    x = final(sample_ddim(model, sig, batch_size=64, generator=torch.Generator().manual_seed(1)))
    assert torch.cdist(x, data).min(dim=1).values.max() < 1e-2


def test_training_loop_lowers_the_loss_without_lightning():
    from diffusion_lab.core import training_loop
    from diffusion_lab.data import Swissroll
    from diffusion_lab.models import TimeInputMLP

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(Swissroll(N=100), batch_size=100, shuffle=True)
    losses = [ns.loss.item() for ns in training_loop(loader, PredEps(TimeInputMLP()), ScheduleLogLinear(), epochs=300)]
    assert sum(losses[-30:]) / 30 < 0.85 * sum(losses[:30]) / 30

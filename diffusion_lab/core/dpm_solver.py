"""DPM-Solver++ (Lu et al. 2022): multistep sampling on the denoised x0, with the samplers' shared signature."""
import math
from collections.abc import Iterator

import torch
from torch import nn

from diffusion_lab.core.guidance import Guidance
from diffusion_lab.core.samplers import Generators, in_eval_mode, prepare, randn
from diffusion_lab.errors import ConfigError


def _check_order(order: int) -> None:
    if order not in (1, 2, 3):
        raise ConfigError(f"order={order!r} is not supported: DPM-Solver++ here has order 1, 2 or 3")


@torch.no_grad()
@in_eval_mode
def sample_dpmpp(model: nn.Module, sigmas: torch.Tensor, *, xt: torch.Tensor | None = None, batch_size: int = 1,
                 cond: torch.Tensor | None = None, guidance: Guidance | None = None, generator: Generators = None,
                 order: int = 2, sde: bool = False) -> Iterator[torch.Tensor]:
    """DPM-Solver++ (Lu et al. 2022): (2M), alg. 2 in its midpoint form, or the third-order multistep (3M) with
    order=3, or with sde=True their SDE variants; order=1 is DPM-Solver++(1), which is DDIM (or its SDE counterpart).

    Multistep on the denoised x0 in lambda = -log(sigma), h = log(sigma / sigma'), a = sigma'/sigma = exp(-h):
    ODE x' = a x + (1 - a) x0 + c1 D1 + c2 D2, SDE x' = a^2 x + (1 - a^2) x0 + c1 D1 + c2 D2 + sigma' sqrt(1 - a^2)
    noise, with D1, D2 the scaled divided differences of the last evaluations (`_derivatives`) and c1, c2 the
    exponential integrator's weights (`_weights`). The first steps use the order the evaluations so far allow; the
    step to sigma' = 0 returns x0. As diffusers' DPMSolverMultistepScheduler (algorithm_type "dpmsolver++" or
    "sde-dpmsolver++", solver_type "midpoint", lower_order_final off) with the same levels.
    """
    _check_order(order)
    sigmas, xt, guide = prepare(model, sigmas, xt, batch_size, cond, guidance, generator)
    levels = sigmas.tolist()
    x0s, hs = [], []  # the last `order` evaluations, and the steps in lambda taken from their levels
    for sig, sig_next in zip(levels[:-1], levels[1:]):
        x0s = [*x0s, xt - sig * guide(model, xt, sig, cond)][-order:]  # (B, ...) each
        if sig_next == 0:
            xt = x0s[-1]
        else:
            hs = [*hs, math.log(sig / sig_next)][-order:]
            a = sig_next / sig
            e = a**2 if sde else a  # the weight that stays on xt
            xt = e * xt + (1 - e) * x0s[-1]
            for c, d in zip(_weights(hs[-1], len(x0s), sde), _derivatives(x0s, hs)):
                xt = xt + c * d
            if sde:
                xt = xt + sig_next * (1 - a**2) ** 0.5 * randn(xt.shape, generator, xt.device, xt.dtype)
        yield xt


def _derivatives(x0s: list[torch.Tensor], hs: list[float]) -> list[torch.Tensor]:
    """[D1] from two evaluations, [D1, D2] from three, [] from one: the divided differences of x0 in lambda, scaled
    by the step h = hs[-1], that diffusers' multistep updates take (hs[i]: the step taken from x0s[i]'s level)."""
    if len(x0s) < 2:
        return []
    h = hs[-1]
    d1_0 = (x0s[-1] - x0s[-2]) * (h / hs[-2])
    if len(x0s) == 2:
        return [d1_0]
    r0, r1 = hs[-2] / h, hs[-3] / h
    d1_1 = (x0s[-2] - x0s[-3]) / r1
    return [d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)]


def _weights(h: float, order: int, sde: bool) -> list[float]:
    """[c1] (second order, midpoint) or [c1, c2] (third order): the weights of D1 and D2 in a step of size h."""
    e = math.exp(-2 * h) if sde else math.exp(-h)
    if order < 2:
        return []
    if order == 2:
        return [0.5 * (1 - e)]
    if sde:
        return [(1 - e) / (-2 * h) + 1, (1 - e - 2 * h) / (2 * h) ** 2 - 0.5]
    return [(e - 1) / h + 1, -((e - 1 + h) / h**2 - 0.5)]

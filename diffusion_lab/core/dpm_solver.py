"""DPM-Solver++ (Lu et al. 2022): multistep sampling on the denoised x0, with the samplers' shared signature."""
import math
from collections.abc import Iterator

import torch
from torch import nn

from diffusion_lab.core.guidance import Guidance
from diffusion_lab.core.samplers import Generators, Sampler, _in_eval_mode, _setup, randn
from diffusion_lab.core.schedules import Schedule
from diffusion_lab.errors import ConfigError


def _check_order(order: int) -> None:
    if order not in (1, 2):
        raise ConfigError(f"sampler.order={order!r} is not supported: DPM-Solver++ here has order 1 or 2")


@torch.no_grad()
@_in_eval_mode
def sample_dpmpp_2m(model: nn.Module, sigmas: torch.Tensor, *, xt: torch.Tensor | None = None, batch_size: int = 1,
                    cond: torch.Tensor | None = None, guidance: Guidance | None = None, generator: Generators = None,
                    order: int = 2, sde: bool = False) -> Iterator[torch.Tensor]:
    """DPM-Solver++(2M) (Lu et al. 2022, alg. 2, midpoint form), or with sde=True its SDE variant (2M-SDE); order=1
    is DPM-Solver++(1), which is DDIM (or its SDE counterpart).

    Multistep on the denoised x0 in lambda = -log(sigma), h = log(sigma / sigma_next): the ODE step is
    x' = (sigma'/sigma) x + (1 - sigma'/sigma) D, the SDE step x' = (sigma'/sigma)^2 x + (1 - (sigma'/sigma)^2) D +
    sigma' sqrt(1 - (sigma'/sigma)^2) noise, with D = x0 on the first step and on a step to sigma' = 0, else
    D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h. As diffusers' DPMSolverMultistepScheduler
    (algorithm_type "dpmsolver++" / "sde-dpmsolver++", solver_type "midpoint") with the same levels.
    """
    _check_order(order)
    sigmas, xt, guide = _setup(model, sigmas, xt, batch_size, cond, guidance, generator)
    levels = sigmas.tolist()
    x0_prev, h_prev = None, None
    for sig, sig_next in zip(levels[:-1], levels[1:]):
        x0 = xt - sig * guide(model, xt, sig, cond)  # (B, ...)
        if sig_next == 0:
            xt = x0
        else:
            h = math.log(sig / sig_next)
            d = x0
            if order == 2 and x0_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
            ratio = sig_next / sig
            if sde:
                noise = randn(xt.shape, generator, xt.device, xt.dtype)
                xt = ratio**2 * xt + (1 - ratio**2) * d + sig_next * (1 - ratio**2) ** 0.5 * noise
            else:
                xt = ratio * xt + (1 - ratio) * d
            h_prev = h
        x0_prev = x0
        yield xt


class DPMSolverSampler(Sampler):
    """`sample_dpmpp_2m`: DPM-Solver++(2M) (order 2) or (1), or their SDE variants with sde=True; one evaluation
    per step."""

    method = staticmethod(sample_dpmpp_2m)

    def __init__(self, steps: int = 20, order: int = 2, sde: bool = False, schedule: Schedule | None = None):
        super().__init__(steps, schedule)
        _check_order(order)
        self.order, self.sde = order, sde

    def settings(self) -> dict:
        return {"order": self.order, "sde": self.sde}

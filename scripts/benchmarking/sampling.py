"""Sampling in `python scripts/benchmark.py`: samples/s of a trained module, forwards and host reads per sampler
step, and the cost of per-sample noise streams against one generator."""
import copy
import dataclasses
import time

import torch

from benchmarking.measure import HostReads, spread, sync
from diffusion_lab.core import GeneralizedSampler, per_sample_generators
from diffusion_lab.sampling import SamplingSetup, generate

STEPS = 20  # sampler steps of the timed sampling
NOISE_STEPS = 2  # sampler steps when timing noise streams (fewer steps weigh the first draw more: a bound)


def draw(setup: SamplingSetup, n: int, seed: int) -> torch.Tensor:
    """n samples in one batch, sample i from seed + i (labels 0..K-1 in turn for a conditional model)."""
    return generate(setup, n, batch_size=n, seed=seed).x


def module_setup(module, device: torch.device, ema=None) -> SamplingSetup:
    """The module's sampling setup (its sampler at STEPS steps, its training precision) on device, with the EMA
    weights swapped in when ema is given (what validation samples with)."""
    module = module.to(device).eval()  # Lightning's teardown left it on the CPU
    if ema is not None:
        ema.ema.to(device)
        ema.swap_in(module)
    setup = module.sampling_setup()
    setup.sampler.steps = STEPS
    return setup


def samples_per_s(setup: SamplingSetup, n: int, seed: int, device: torch.device) -> float:
    """One timed draw of n samples in one batch, after an untimed draw of two."""
    draw(setup, 2, seed)
    sync(device)
    t0 = time.perf_counter()
    draw(setup, n, seed)
    sync(device)
    return n / (time.perf_counter() - t0)


def per_sampler_step(setup: SamplingSetup, seed: int) -> dict:
    """Denoiser forwards and host reads per sampler step: the counts at 20 steps minus those at 10, over 10."""
    counts, steps = {}, setup.sampler.steps
    for setup.sampler.steps in (10, 20):
        calls, reads = [], HostReads()
        hook = setup.model.register_forward_hook(lambda *_: calls.append(1))
        with reads:
            draw(setup, 2, seed)
        hook.remove()
        counts[setup.sampler.steps] = (len(calls), reads.count)
    setup.sampler.steps = steps
    return dict(forwards_per_step=(counts[20][0] - counts[10][0]) / 10,
                host_reads_per_step=(counts[20][1] - counts[10][1]) / 10)


def noise_cost(setup: SamplingSetup, n: int, seed: int, device: torch.device, rounds: int = 3) -> dict:
    """Samples/s at batch n with one noise generator per sample (what generate does: samples independent of the
    batch) against one generator for the batch, for the run's sampler and for a sampler that draws fresh noise at
    every step (DDPM's gam=1, mu=0.5), NOISE_STEPS steps. Alternated over rounds; cost = per-sample time /
    one-generator time - 1."""
    out = {}
    run_sampler = copy.copy(setup.sampler)
    run_sampler.steps = NOISE_STEPS
    for name, sampler in (("run_sampler", run_sampler), ("ddpm_noise", GeneralizedSampler(NOISE_STEPS, gam=1.0, mu=0.5))):
        s = dataclasses.replace(setup, sampler=sampler)
        cond = None if not s.num_classes else (torch.arange(n) % s.num_classes).to(device)
        generators = {"per_sample": lambda: per_sample_generators(range(seed, seed + n), device),
                      "one": lambda: torch.Generator(device).manual_seed(seed)}
        times = {k: [] for k in generators}
        for _ in range(rounds):
            for kind, make in generators.items():
                with torch.no_grad(), s.precision():
                    sync(device)
                    t0 = time.perf_counter()
                    *_, x = s.sampler(s.model, s.schedule, batch_size=n, cond=cond, guidance=s.guidance,
                                      generator=make())
                    sync(device)
                times[kind].append(time.perf_counter() - t0)
        per, one = spread(times["per_sample"]), spread(times["one"])
        out[name] = dict(sampler=type(sampler).__name__, batch=n, steps=NOISE_STEPS, rounds=rounds,
                         per_sample_samples_per_s=n / per["median"], one_generator_samples_per_s=n / one["median"],
                         cost=per["median"] / one["median"] - 1,
                         resolution=None if rounds < 2 else max(per["half_range"], one["half_range"]))
    return out

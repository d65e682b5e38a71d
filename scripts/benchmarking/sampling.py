"""Sampling in `python scripts/benchmark.py`: samples/s of a trained module, forwards and host reads per sampler
step, and the cost of per-sample noise streams against one generator."""
import functools
import statistics
import time

import torch

from benchmarking.measure import HostReads, ratio_spread, spread, sync
from diffusion_lab.core import NoiseStreams, Sampler, sample_generalized
from diffusion_lab.sampling import DiffusionModel, generate

STEPS = 20  # sampler steps of the timed sampling


def draw(setup: DiffusionModel, n: int, seed: int) -> torch.Tensor:
    """n samples in one batch, sample i from seed + i (labels 0..K-1 in turn for a conditional model)."""
    return generate(setup, n, batch_size=n, seed=seed).x


def module_setup(module, device: torch.device, ema=None) -> DiffusionModel:
    """The module's sampling setup (its sampler at STEPS steps, its training precision) on device, with the EMA
    weights swapped in when ema is given (what validation samples with)."""
    module = module.to(device).eval()  # Lightning's teardown left it on the CPU
    if ema is not None:
        ema.ema.to(device)
        ema.swap_in(module)
    model = module.diffusion_model()
    return model.replace(sampler=Sampler(model.sampler.method, STEPS, model.sampler.schedule))


def samples_per_s(setup: DiffusionModel, n: int, seed: int, device: torch.device) -> float:
    """One timed draw of n samples in one batch, after an untimed draw of two."""
    draw(setup, 2, seed)
    sync(device)
    t0 = time.perf_counter()
    draw(setup, n, seed)
    sync(device)
    return n / (time.perf_counter() - t0)


def per_sampler_step(setup: DiffusionModel, seed: int) -> dict:
    """Denoiser forwards and host reads per sampler step: the counts at 20 steps minus those at 10, over 10."""
    counts, steps = {}, setup.sampler.steps
    for setup.sampler.steps in (10, 20):
        calls, reads = [], HostReads()
        hook = setup.objective.register_forward_hook(lambda *_: calls.append(1))
        with reads:
            draw(setup, 2, seed)
        hook.remove()
        counts[setup.sampler.steps] = (len(calls), reads.count)
    setup.sampler.steps = steps
    return dict(forwards_per_step=(counts[20][0] - counts[10][0]) / 10,
                host_reads_per_step=(counts[20][1] - counts[10][1]) / 10)


def noise_cost(setup: DiffusionModel, n: int, seed: int, device: torch.device, rounds: int = 3,
               steps: int | None = None) -> dict:
    """Samples/s at batch n with one noise generator per sample (what generate does: samples independent of the
    batch) against one generator for the batch, for the run's sampler and for a sampler that draws fresh noise at
    every step (DDPM's gam=1, mu=0.5), `steps` steps (None: the run's; fewer steps weigh the streams' set-up and
    first draw more, so fewer give an upper bound). Alternated over rounds; cost = the median over rounds of
    per-sample time / one-generator time in that round, - 1, with its quartiles from four rounds on. draw_cost is
    the same cost from the noise alone (noise_draw_times) over the one-generator run's median time: the difference
    of two timings of the noise only, so it resolves costs below the spread of whole sampling runs."""
    out = {}
    steps = steps or setup.sampler.steps
    run_sampler = Sampler(setup.sampler.method, steps, setup.sampler.schedule)
    ddpm_noise = Sampler(functools.partial(sample_generalized, gam=1.0, mu=0.5), steps)
    for name, sampler in (("run_sampler", run_sampler), ("ddpm_noise", ddpm_noise)):
        s = setup.replace(sampler=sampler)
        cond = None if not s.num_classes else (torch.arange(n) % s.num_classes).to(device)
        streams = []  # the per-sample streams of each round, which note the shapes of their draws

        def per_sample():
            streams.append(_Recorder(range(seed, seed + n), device))
            return streams[-1]

        generators = {"per_sample": per_sample, "one": lambda: torch.Generator(device).manual_seed(seed)}
        times = {k: [] for k in generators}
        for _ in range(rounds):
            for kind, make in generators.items():
                with torch.no_grad(), s.precision():
                    sync(device)
                    t0 = time.perf_counter()
                    *_, x = s.sampler(s.objective, s.schedule, batch_size=n, cond=cond, guidance=s.guidance,
                                      generator=make())
                    sync(device)
                times[kind].append(time.perf_counter() - t0)
        draws = noise_draw_times(streams[-1].shapes, n, seed, device)
        per, one = spread(times["per_sample"]), spread(times["one"])
        ratios = ratio_spread(times["per_sample"], times["one"])  # paired within each round
        quartiles = statistics.quantiles(ratios["values"], n=4) if rounds >= 4 else None
        out[name] = dict(sampler=sampler.function.__name__, batch=n, steps=steps, rounds=rounds,
                         per_sample_samples_per_s=n / per["median"], one_generator_samples_per_s=n / one["median"],
                         cost=ratios["median"] - 1,
                         cost_quartiles=quartiles and [quartiles[0] - 1, quartiles[2] - 1],
                         draw_ms=draws, draw_cost=(draws["per_sample"] - draws["one"]) / 1e3 / one["median"])
    return out


class _Recorder(NoiseStreams):
    """NoiseStreams that notes the shape of every draw."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shapes = []

    def randn(self, shape, dtype=None):
        self.shapes.append(tuple(shape))
        return super().randn(shape, dtype)


def noise_draw_times(shapes: list[tuple], n: int, seed: int, device: torch.device, repeats: int = 20) -> dict:
    """Milliseconds to make the noise of one sampling run (draws of `shapes`, as its sampler made them) with
    per-sample streams and with one generator; the minimum over `repeats`, since load only adds time."""

    def streams():
        g = NoiseStreams(range(seed, seed + n), device)
        return [g.randn(shape) for shape in shapes]

    def one():
        g = torch.Generator(device).manual_seed(seed)
        return [torch.randn(shape, generator=g, device=device) for shape in shapes]

    out = {}
    for kind, make in (("per_sample", streams), ("one", one)):
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            make()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out[kind] = best * 1e3
    out["draws"] = len(shapes)
    return out

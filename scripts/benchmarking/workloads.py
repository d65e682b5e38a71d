"""What `python scripts/benchmark.py` times: each workload through train(cfg) and a plain loop, sampling, options."""
import gc
import tempfile
from dataclasses import dataclass

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict
from torch.utils.flop_counter import FlopCounterMode
from torch_ema import ExponentialMovingAverage

from benchmarking.measure import StepTimer, Window, WindowClosed, median_run, ratio_spread, spread
from benchmarking.report import log
from benchmarking.sampling import module_setup, noise_cost, per_sampler_step, samples_per_s
from diffusion_lab.app.config import CONFIG_DIR
from diffusion_lab.app.train import build, train
from diffusion_lab.core import diffusion_loss
from diffusion_lab.data import ImageTensorDataset
from diffusion_lab.training import EMA
from diffusion_lab.training.environment import skip_nvml_cuda_check

IMAGES = ["data.batch_size=64", "data.num_workers=0"]  # in-memory data: workers would only add IPC (see workers2)


@dataclass
class Workload:
    """A run's overrides; per (cpu, gpu): timed optimizer steps, untimed ones before them, rounds, sampling batch."""

    overrides: list[str]
    steps: tuple[int, int]
    warmup: tuple[int, int]  # the last warm-up step counts host reads
    rounds: tuple[int, int]  # each round runs the framework, the plain loop and the speed preset, in turn
    sample_batch: tuple[int, int]
    noise_rounds: tuple[int, int]  # rounds of the noise-stream timing, at batch --noise-batch (default 1024)
    noise_steps: int | None  # sampler steps of that timing (None: the run's sampler's)
    cpu_options: tuple[str, ...] = ()  # run by default on CPU; a GPU runs every option that applies
    random_images: bool = False  # the data set replaced by random images of its shape: no download, no disk
    labels: bool = False  # the data has classes, so a conditional build with classifier-free guidance is counted too


WORKLOADS = {
    "toy": Workload([], (300, 300), (20, 20), (7, 7), (1024, 1024), (30, 30), None,
                    ("bf16", "compile", "fused_adamw", "tf32", "progress_bar")),
    "dit": Workload(["experiment=fashion_mnist_dit", *IMAGES], (6, 50), (2, 10), (5, 5), (16, 1024), (1, 3), 2,
                    ("tf32",), random_images=True, labels=True),
    "unet": Workload(["experiment=fashion_mnist_unet", *IMAGES], (6, 50), (2, 10), (5, 5), (16, 1024), (1, 3), 2,
                     ("tf32",), random_images=True, labels=True),
}


def target(obj) -> str:
    """The `_target_` path by which Hydra finds obj (scripts/ is on sys.path, so `benchmarking.*` imports)."""
    return f"{obj.__module__}.{obj.__qualname__}"


class ChannelsLast(Callback):
    """Puts the model's 4-D weights in channels-last memory order before training."""

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.to(memory_format=torch.channels_last)


class SDPAMath(Callback):
    """Restricts scaled_dot_product_attention to its unfused math backend, the baseline of the fused kernels."""

    def setup(self, trainer, pl_module, stage) -> None:
        self._ctx = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)
        self._ctx.__enter__()

    def teardown(self, trainer, pl_module, stage) -> None:
        self._ctx.__exit__(None, None, None)


# Each option is a config switch; `+callbacks.*` stands in for a switch the framework lacks (a callback above).
OPTIONS = {
    "fast": ["speed=fast"],
    "fast-compile": ["speed=fast", "compile=false"],
    "bf16+fused": ["trainer.precision=bf16-mixed", "optimizer.fused=true"],
    "bf16": ["trainer.precision=bf16-mixed"],
    "compile": ["compile=true"],
    "bf16+compile": ["trainer.precision=bf16-mixed", "compile=true"],
    "fused_adamw": ["optimizer.fused=true"],
    "tf32": ["matmul_precision=high"],
    "channels_last": [f"+callbacks.channels_last._target_={target(ChannelsLast)}"],
    "sdpa_math": [f"+callbacks.sdpa_math._target_={target(SDPAMath)}"],
    "progress_bar": ["trainer.enable_progress_bar=true"],
    "workers2": ["data.num_workers=2"],
}
ONLY_FOR = {"channels_last": ("unet",), "sdpa_math": ("dit", "unet"), "workers2": ("dit", "unet")}
GPU_ONLY = ("tf32",)


def random_images(n: int, image_size: int, channels: int, num_classes: int, hflip: bool) -> ImageTensorDataset:
    """n random uint8 images with labels, held and converted per batch like FashionMNIST (no download)."""
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (n, channels, image_size, image_size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return ImageTensorDataset(data, labels, num_classes, image_size, channels, hflip)


def compose_run(workload: str, overrides: list[str], out_dir: str, warmup: int, steps: int,
                profile: str | None = None) -> DictConfig:
    """The workload's train config with the timer added, validation and progress bar off, paths under out_dir."""
    timer = [f"+callbacks.timer._target_={target(StepTimer)}", f"+callbacks.timer.warmup={warmup}",
             f"+callbacks.timer.steps={steps}", f"+callbacks.timer.profile={profile or 'null'}"]
    run = [f"trainer.accelerator={'gpu' if torch.cuda.is_available() else 'cpu'}", "++trainer.limit_val_batches=0",
           "trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", f"trainer.max_steps={warmup + steps + 1}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*WORKLOADS[workload].overrides, *run, *timer, *overrides])
    run_dir = tempfile.mkdtemp(dir=out_dir)  # a run directory holds one run
    with open_dict(cfg):
        cfg.paths.root_dir = cfg.paths.output_dir = run_dir
        cfg.paths.data_dir = f"{run_dir}/data"
        if WORKLOADS[workload].random_images:  # FashionMNIST's shape, without the download
            cfg.data.dataset = dict(_target_=target(random_images), n=60000, image_size="${data.input_dims.1}",
                                    channels="${data.input_dims.0}", num_classes="${data.num_classes}",
                                    hflip=cfg.data.dataset.get("hflip", False))
    return cfg


def framework_run(cfg: DictConfig) -> tuple[dict, StepTimer]:
    """Trains through train(cfg) until the timer's window closes; resets the global state train() may set."""
    try:
        train(cfg)
        raise RuntimeError("the fit ended before the benchmark's timed window closed")
    except WindowClosed as closed:
        timer = closed.timer
    finally:
        torch.set_float32_matmul_precision("highest")
        torch._dynamo.reset()
    return dict(timer.window.result, samples_per_s=cfg.data.batch_size / timer.window.result["step_ms"] * 1e3), timer


def plain_run(cfg: DictConfig, warmup: int, steps: int, device: torch.device, run_ema: EMA | None) -> dict:
    """The training of train(cfg) as a plain loop: same seed and build, optimizer, loss, data and EMA (run_ema's)."""
    L.seed_everything(cfg.seed, verbose=False)
    module, datamodule = build(cfg)
    model, data, batch = module.objective.to(device).train(), datamodule.dataset, datamodule.batch_size
    optimizer = module.optimizer_fn(params=model.parameters())
    ema = None if run_ema is None else ExponentialMovingAverage(model.parameters(), run_ema.decay, run_ema.warmup)
    window, i = Window(warmup, steps, device), 0
    skip_nvml_cuda_check()  # as a script that never imports Lightning (which turns the check on) would run
    while not window.tick(i):
        x0 = get_batch(data, torch.randint(len(data), (batch,))).to(device, non_blocking=True)  # (B, ...)
        loss = diffusion_loss(model, x0, module.schedule)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update()
        i += 1
    return dict(window.result, samples_per_s=batch / window.result["step_ms"] * 1e3, ema=ema is not None)


def get_batch(data, indices: torch.Tensor) -> torch.Tensor:
    """The x0 of a whole batch from an in-memory data set, labels dropped."""
    x0 = data.get_batch(indices)
    return x0[0] if isinstance(x0, tuple) else x0


def train_flops(cfg: DictConfig, device: torch.device) -> int:
    """Model FLOPs of one training step (forward and backward of the loss) at the workload's batch."""
    module, datamodule = build(cfg)
    x0 = get_batch(datamodule.dataset, torch.arange(datamodule.batch_size) % len(datamodule.dataset)).to(device)
    with FlopCounterMode(display=False) as counter:
        diffusion_loss(module.objective.to(device), x0, module.schedule).backward()
    return counter.get_total_flops()


def cfg_counts(workload: str, out_dir: str, device: torch.device) -> dict | None:
    """Forwards and host reads per sampler step with classifier-free guidance (a conditional build of the workload)."""
    if not WORKLOADS[workload].labels:
        return None  # the swiss roll has no labels
    module, _ = build(compose_run(workload, ["model.num_classes=${data.num_classes}", "guidance=cfg"], out_dir, 0, 1))
    return per_sampler_step(module_setup(module, device), module.seed)


def run_option(name: str, option: str, base: dict, out_dir: str, peaks: dict) -> dict:
    """Framework throughput with one option, relative to the default run; a failure is recorded, not raised."""
    if option in GPU_ONLY and not torch.cuda.is_available():
        return {"error": "n/a (GPU only)"}
    log(f"{name}: option {option}")
    try:
        r, _ = framework_run(compose_run(name, OPTIONS[option], out_dir, base["warmup"], base["steps"]))
    except Exception as e:  # an option unsupported here (bf16 or compile on some CPUs) is a result too
        return {"error": f"n/a ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})"}
    peak = peaks["bf16" if "bf16" in option else "fp32"]
    return dict(r, relative=r["samples_per_s"] / base["training"]["framework"]["median"],
                mfu=base["flops_per_step"] * r["samples_per_s"] / base["batch"] / peak if peak else None)


def chosen_options(name: str, options: list[str] | None, gpu: bool) -> list[str]:
    """The options that apply to the workload, of those asked for (`all`; by default all on a GPU, a few on CPU)."""
    every = [o for o in OPTIONS if name in ONLY_FOR.get(o, (name,))]
    chosen = every if options == ["all"] or (options is None and gpu) else options
    chosen = WORKLOADS[name].cpu_options if chosen is None else chosen
    return [o for o in chosen if o in every]


def bench_workload(name: str, args, out_dir: str, peaks: dict, device: torch.device) -> dict:
    """Rounds of framework, plain loop and speed preset (interleaved, so that drifting load hits all three alike),
    each followed by sampling with its weights; medians and spreads over rounds; FLOPs, noise cost and options."""
    wl, gpu = WORKLOADS[name], int(device.type == "cuda")
    steps, warmup = args.steps or wl.steps[gpu], args.warmup or wl.warmup[gpu]
    rounds, n = args.rounds or wl.rounds[gpu], args.sample_batch or wl.sample_batch[gpu]
    profile = f"{args.out}/profile_{name}.txt" if args.profile else None
    runs = {"framework": [], "plain": [], "fast": []}
    sampling = {"framework": [], "fast": []}
    for i in range(rounds):
        log(f"{name}: round {i + 1}/{rounds}: framework, plain loop and speed=fast, {steps} steps after {warmup}")
        cfg = compose_run(name, [], out_dir, warmup, steps, profile)
        fw, timer = framework_run(cfg)
        runs["framework"].append(fw)
        runs["plain"].append(plain_run(cfg, warmup, steps, device, timer.ema))
        sampling["framework"].append(samples_per_s(module_setup(timer.module, device, timer.ema), n, 0, device))
        fast, fast_timer = framework_run(compose_run(name, OPTIONS["fast"], out_dir, warmup, steps))
        runs["fast"].append(fast)
        sampling["fast"].append(samples_per_s(module_setup(fast_timer.module, device, fast_timer.ema), n, 0, device))
        del fast_timer
        gc.collect()
    rate = {k: [r["samples_per_s"] for r in v] for k, v in runs.items()}
    fw, plain = median_run(runs["framework"]), median_run(runs["plain"])
    setup = module_setup(timer.module, device)
    r = dict(batch=cfg.data.batch_size, steps=steps, warmup=warmup, rounds=rounds,
             flops_per_step=train_flops(cfg, device), params=sum(p.numel() for p in timer.module.objective.parameters()),
             framework=fw, plain=plain, fast=median_run(runs["fast"]),
             training={k: spread(v) for k, v in rate.items()},
             ratio=ratio_spread(rate["framework"], rate["plain"]),
             cpu_ratio=plain["cpu_ms"] / fw["cpu_ms"], overhead_ms=fw["step_ms"] - plain["step_ms"],
             fast_speedup=ratio_spread(rate["fast"], rate["framework"]),
             sampling=dict(batch=n, steps=setup.sampler.steps, sampler=setup.sampler.function.__name__,
                           framework=spread(sampling["framework"]), fast=spread(sampling["fast"]),
                           fast_speedup=ratio_spread(sampling["fast"], sampling["framework"]),
                           **per_sampler_step(setup, 0)),
             sampling_cfg=cfg_counts(name, out_dir, device))
    r["mfu"] = r["flops_per_step"] / fw["step_ms"] * 1e3 / peaks["fp32"] if peaks["fp32"] else None
    log(f"{name}: noise streams")
    r["noise"] = noise_cost(setup, args.noise_batch, 0, device, args.noise_rounds or wl.noise_rounds[gpu], wl.noise_steps)
    del timer
    gc.collect()
    r["options"] = {o: run_option(name, o, r, out_dir, peaks) for o in chosen_options(name, args.options, gpu)}
    return r

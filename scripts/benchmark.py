"""What the framework costs at run time: `python scripts/benchmark.py [--workloads toy dit unet] [--options all] [--out DIR]`.

For each workload (the default swiss-roll MLP; the fashion_mnist_dit and fashion_mnist_unet networks at batch 64
on random in-memory 28x28 images) it times training through `train(cfg)` (Lightning with the run's callbacks,
EMA included, and CSV logger; validation off) against a plain PyTorch loop doing the same work (same initial
weights, AdamW, `diffusion_loss`, in-memory batches, torch-ema update); times 20-step sampling with the run's
sampler on the EMA weights; counts model FLOPs and host reads of tensor values (each a device sync on a GPU);
and times each option (bf16, torch.compile, fused AdamW, ...) through the framework. Writes benchmark.json and
benchmark.md (`--quick`: seconds, toy only). A benchmark, not a test: its numbers depend on the machine and its load.
"""
import argparse
import contextlib
import cProfile
import gc
import json
import logging
import os
import platform
import pstats
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode
from torch_ema import ExponentialMovingAverage

from diffusion_lab.app.config import CONFIG_DIR
from diffusion_lab.core import diffusion_loss
from diffusion_lab.data import ImageTensorDataset
from diffusion_lab.app.train import build, train
from diffusion_lab.training import EMA

HOST_READS = {"item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__", "__index__"}
IMAGES = ["data.batch_size=64", "data.num_workers=0"]  # in-memory data: workers would only add IPC (see workers2)


@dataclass
class Workload:
    """A run's overrides; per (cpu, gpu): timed optimizer steps, untimed ones before them, repeats, sampling batch."""

    overrides: list[str]
    steps: tuple[int, int]
    warmup: tuple[int, int]  # the last warm-up step counts host reads
    repeats: tuple[int, int]  # framework and plain runs alternate; the fastest of each is reported
    sample_batch: tuple[int, int]
    cpu_options: tuple[str, ...] = ()  # run by default on CPU; a GPU runs every option that applies


WORKLOADS = {
    "toy": Workload([], (300, 300), (20, 20), (3, 3), (512, 512),
                    ("bf16", "compile", "fused_adamw", "tf32", "progress_bar")),
    "dit": Workload(["experiment=fashion_mnist_dit", *IMAGES], (3, 50), (2, 10), (1, 2), (16, 64), ("tf32",)),
    "unet": Workload(["experiment=fashion_mnist_unet", *IMAGES], (2, 50), (2, 10), (1, 2), (8, 64), ("tf32",)),
}
# Each option is a config switch; `+callbacks.*` stands in for a switch the framework lacks (a callback below).
OPTIONS = {
    "bf16": ["trainer.precision=bf16-mixed"],
    "compile": ["compile=true"],
    "bf16+compile": ["trainer.precision=bf16-mixed", "compile=true"],
    "fused_adamw": ["optimizer.fused=true"],
    "tf32": ["matmul_precision=high"],
    "channels_last": [f"+callbacks.channels_last._target_={__name__}.ChannelsLast"],
    "sdpa_math": [f"+callbacks.sdpa_math._target_={__name__}.SDPAMath"],
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


class HostReads(TorchFunctionMode):
    """Counts Python reads of tensor values (.item(), bool(), ...): a device sync each when the tensor is on a GPU.

    With a GPU only reads of GPU tensors count; on a CPU-only machine all do, AdamW's per-parameter step
    counter (a host tensor even on a GPU) included.
    """

    def __init__(self):
        super().__init__()
        self.count, self.device_only = 0, torch.cuda.is_available()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS and isinstance(args[0], torch.Tensor):
            self.count += not self.device_only or args[0].device.type != "cpu"
        return func(*args, **(kwargs or {}))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the process's peak RSS (VmHWM), Linux >= 4.0


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated GPU memory, or on CPU the process's peak resident set (VmHWM) since the last reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


class Window:
    """Wall and CPU time and peak memory of steps [warmup, warmup + steps) of a loop; host reads in step warmup - 1."""

    def __init__(self, warmup: int, steps: int, device: torch.device, profile: str | None = None):
        self.warmup, self.steps, self.device, self.profile = warmup, steps, device, profile
        self.reads, self.profiler, self.result = HostReads(), cProfile.Profile() if profile else None, None

    def tick(self, i: int) -> bool:
        """Call at the start of step i; True once the window is closed."""
        if i == self.warmup - 1:
            self.reads.__enter__()
        if i == self.warmup:
            if self.warmup > 0:
                self.reads.__exit__(None, None, None)
            sync(self.device)
            reset_peak_memory(self.device)
            self.profiler and self.profiler.enable()
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        if i == self.warmup + self.steps:
            sync(self.device)
            wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.cpu0
            self.result = dict(step_ms=1e3 * wall / self.steps, cpu_ms=1e3 * cpu / self.steps,
                               peak_memory_mib=peak_memory_mib(self.device), host_reads_per_step=self.reads.count)
            if self.profiler:
                self.profiler.disable()
                with open(self.profile, "w") as f:
                    pstats.Stats(self.profiler, stream=f).sort_stats("tottime").print_stats(60)
        return self.result is not None


class _WindowClosed(Exception):
    """Raised by StepTimer to end a fit as soon as its timed window is closed."""


class StepTimer(Callback):
    """Runs a Window over a fit's training batches, keeps the module and EMA for sampling, then stops the fit."""

    last: "StepTimer | None" = None

    def __init__(self, warmup: int, steps: int, profile: str | None = None):
        self.window, self.calls, self.module, self.ema = Window(warmup, steps, torch.device("cpu"), profile), 0, None, None
        StepTimer.last = self

    def on_train_start(self, trainer, pl_module) -> None:
        self.window.device = pl_module.device
        self.module, self.ema = pl_module, next((c for c in trainer.callbacks if isinstance(c, EMA)), None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.calls += 1
        if self.window.tick(self.calls - 1):
            raise _WindowClosed


def compose_run(workload: str, overrides: list[str], out_dir: str, warmup: int, steps: int,
                profile: str | None = None) -> DictConfig:
    """The workload's train config with the timer added, validation and progress bar off, paths under out_dir."""
    timer = [f"+callbacks.timer._target_={__name__}.StepTimer", f"+callbacks.timer.warmup={warmup}",
             f"+callbacks.timer.steps={steps}", f"+callbacks.timer.profile={profile or 'null'}"]
    run = [f"trainer.accelerator={'gpu' if torch.cuda.is_available() else 'cpu'}", "++trainer.limit_val_batches=0",
           "trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", f"trainer.max_steps={warmup + steps + 1}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*WORKLOADS[workload].overrides, *run, *timer, *overrides])
    run_dir = tempfile.mkdtemp(dir=out_dir)  # a run directory holds one run
    with open_dict(cfg):
        cfg.paths.root_dir = cfg.paths.output_dir = run_dir
        cfg.paths.data_dir = f"{run_dir}/data"
        if cfg.model._target_.endswith(("DiT", "Unet")):  # FashionMNIST's shape, without the download
            cfg.data.dataset = dict(_target_=f"{__name__}.random_images", n=60000, image_size="${data.input_dims.1}",
                                    channels="${data.input_dims.0}", num_classes="${data.num_classes}",
                                    hflip=cfg.data.dataset.get("hflip", False))
    return cfg


def framework_run(cfg: DictConfig) -> tuple[dict, StepTimer]:
    """Trains through train(cfg) until the timer's window closes; resets the global state train() may set."""
    try:
        train(cfg)
    except _WindowClosed:
        pass
    finally:
        torch.set_float32_matmul_precision("highest")
        torch._dynamo.reset()
    timer = StepTimer.last
    return dict(timer.window.result, samples_per_s=cfg.data.batch_size / timer.window.result["step_ms"] * 1e3), timer


@contextlib.contextmanager
def without_lightning_env():
    """As in a script that never imports Lightning, which turns on torch's NVML-based CUDA check at import: on a
    machine without a GPU that check is not cached and costs a dlopen in every optimizer step."""
    value = os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    try:
        yield
    finally:
        if value is not None:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = value


def plain_run(cfg: DictConfig, device: torch.device) -> dict:
    """The training of train(cfg) as a plain loop: same seed and build, optimizer, loss, data and EMA."""
    L.seed_everything(cfg.seed, verbose=False)
    module, datamodule = build(cfg)
    model, data, batch = module.model.to(device).train(), datamodule.dataset, datamodule.batch_size
    optimizer = module.optimizer_fn(params=model.parameters())
    ema_cfg = (cfg.get("callbacks") or {}).get("ema")
    ema = ExponentialMovingAverage(model.parameters(), ema_cfg.decay, ema_cfg.warmup) if ema_cfg else None
    window, i = Window(cfg.callbacks.timer.warmup, cfg.callbacks.timer.steps, device), 0
    with without_lightning_env():
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
        diffusion_loss(module.model.to(device), x0, module.schedule).backward()
    return counter.get_total_flops()


def per_sampler_step(module) -> dict:
    """Denoiser forwards and host reads per sampler step: the counts at 20 steps minus those at 10, over 10."""
    counts = {}
    for steps in (10, 20):
        calls, reads, module.sampler.steps = [], HostReads(), steps
        hook = module.model.register_forward_hook(lambda *_: calls.append(1))
        with reads:
            module.generate(2)
        hook.remove()
        counts[steps] = (len(calls), reads.count)
    module.sampler.steps = 20
    return dict(forwards_per_step=(counts[20][0] - counts[10][0]) / 10,
                host_reads_per_step=(counts[20][1] - counts[10][1]) / 10)


def sampling(timer: StepTimer, n: int, device: torch.device) -> dict:
    """Samples/s of the run's sampler at 20 steps on the EMA weights (what validation runs), and per-step counts."""
    module = timer.module.to(device).eval()  # Lightning's teardown left it on the CPU
    if timer.ema is not None:
        timer.ema.ema.to(device)
        timer.ema.swap_in(module)
    module.sampler.steps = 20
    module.generate(2)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    module.generate(n)
    sync(device)
    return dict(samples_per_s=n / (time.perf_counter() - t0), batch=n, steps=20, sampler=type(module.sampler).__name__,
                **per_sampler_step(module))


def cfg_counts(workload: str, out_dir: str, device: torch.device) -> dict | None:
    """Forwards and host reads per sampler step with classifier-free guidance (a conditional build of the workload)."""
    if workload == "toy":
        return None  # the swiss roll has no labels
    module, _ = build(compose_run(workload, ["conditional=true", "guidance=cfg"], out_dir, 0, 1))
    return per_sampler_step(module.to(device).eval())


def peak_matmul(device: torch.device, dtype: torch.dtype, n: int) -> float | None:
    """The best FLOP/s of an n x n matrix product in dtype on device over five tries; None if unsupported."""
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        a @ a
    except RuntimeError:
        return None
    best = 0.0
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        a @ a
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def run_option(name: str, option: str, base: dict, args, out_dir: str, peaks: dict) -> dict:
    """Framework throughput with one option, relative to the default run; a failure is recorded, not raised."""
    if option in GPU_ONLY and not torch.cuda.is_available():
        return {"error": "n/a (GPU only)"}
    log(f"{name}: option {option}")
    try:
        r, _ = framework_run(compose_run(name, OPTIONS[option], out_dir, base["warmup"], base["steps"]))
    except Exception as e:  # an option unsupported here (bf16 or compile on some CPUs) is a result too
        return {"error": f"n/a ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})"}
    peak = peaks["bf16" if "bf16" in option else "fp32"]
    return dict(r, relative=r["samples_per_s"] / base["framework"]["samples_per_s"],
                mfu=base["flops_per_step"] * r["samples_per_s"] / base["batch"] / peak if peak else None)


def bench_workload(name: str, args, out_dir: str, peaks: dict, device: torch.device) -> dict:
    """Framework and plain training (alternated, best of repeats), sampling, FLOPs and options of one workload."""
    wl, gpu = WORKLOADS[name], int(device.type == "cuda")
    steps, warmup = args.steps or wl.steps[gpu], args.warmup or wl.warmup[gpu]
    cfg = compose_run(name, [], out_dir, warmup, steps, f"{args.out}/profile_{name}.txt" if args.profile else None)
    fw_runs, plain_runs = [], []
    for _ in range(args.repeats or wl.repeats[gpu]):
        log(f"{name}: framework, {steps} steps after {warmup}")
        fw, timer = framework_run(cfg)
        fw_runs.append(fw)
        log(f"{name}: plain loop")
        plain_runs.append(plain_run(cfg, device))
    fw, plain = (max(runs, key=lambda r: r["samples_per_s"]) for runs in (fw_runs, plain_runs))
    log(f"{name}: sampling")
    r = dict(batch=cfg.data.batch_size, steps=steps, warmup=warmup, flops_per_step=train_flops(cfg, device),
             params=sum(p.numel() for p in timer.module.model.parameters()), framework=fw, plain=plain,
             framework_runs=[x["samples_per_s"] for x in fw_runs], plain_runs=[x["samples_per_s"] for x in plain_runs],
             ratio=fw["samples_per_s"] / plain["samples_per_s"], cpu_ratio=plain["cpu_ms"] / fw["cpu_ms"],
             overhead_ms=fw["step_ms"] - plain["step_ms"], mfu=None,
             sampling=sampling(timer, args.sample_batch or wl.sample_batch[gpu], device),
             sampling_cfg=cfg_counts(name, out_dir, device))
    r["mfu"] = r["flops_per_step"] / fw["step_ms"] * 1e3 / peaks["fp32"] if peaks["fp32"] else None
    del timer
    gc.collect()
    every = [o for o in OPTIONS if name in ONLY_FOR.get(o, (name,))]
    chosen = every if args.options == ["all"] or (args.options is None and gpu) else args.options
    chosen = wl.cpu_options if chosen is None else chosen
    r["options"] = {o: run_option(name, o, r, args, out_dir, peaks) for o in chosen if o in every}
    return r


def machine(device: torch.device, peaks: dict) -> dict:
    """What the numbers were measured on."""
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), platform.processor())
    return dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu}",
                cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                lightning=L.__version__, python=platform.python_version(),
                peak_matmul_tflops={k: v and v / 1e12 for k, v in peaks.items()})


def log(msg: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    """The training, sampling and options tables of a report."""
    m, w = report["machine"], report["workloads"]
    peaks = ", ".join(f"{k} {fmt(v)} TFLOP/s" for k, v in m["peak_matmul_tflops"].items())
    lines = [f"{m['device']} ({m['cores']} cores, torch threads {m['threads']}); torch {m['torch']}, lightning "
             f"{m['lightning']}; peak matmul measured in this run: {peaks}.", "",
             "| workload | batch | timed steps | framework samples/s | plain samples/s | framework / plain | same, by CPU time "
             "| overhead ms/step | sampling samples/s (20 steps) | peak memory MiB (fw / plain) | MFU "
             "| host reads/step (fw / plain) | plain loop has EMA |", "|---" * 13 + "|"]
    for name, r in w.items():
        fw, pl = r["framework"], r["plain"]
        lines.append(f"| {name} | {r['batch']} | {r['steps']} | {fmt(fw['samples_per_s'])} | {fmt(pl['samples_per_s'])} "
                     f"| {r['ratio']:.3f} | {r['cpu_ratio']:.3f} | {r['overhead_ms']:.2f} "
                     f"| {fmt(r['sampling']['samples_per_s'])} | {fw['peak_memory_mib']:.0f} / {pl['peak_memory_mib']:.0f} "
                     f"| {fmt(r['mfu'], '.1%')} | {fw['host_reads_per_step']} / {pl['host_reads_per_step']} "
                     f"| {'yes' if pl['ema'] else 'no (nor has the run)'} |")
    lines += ["", "| sampling | sampler | batch | forwards/step | host reads/step | with CFG: forwards/step "
              "| with CFG: host reads/step |", "|---" * 7 + "|"]
    for name, r in w.items():
        s, c = r["sampling"], r["sampling_cfg"] or {}
        lines.append(f"| {name} | {s['sampler']} | {s['batch']} | {s['forwards_per_step']:g} | {s['host_reads_per_step']:g} "
                     f"| {fmt(c.get('forwards_per_step'), 'g')} | {fmt(c.get('host_reads_per_step'), 'g')} |")
    options = list(dict.fromkeys(o for r in w.values() for o in r["options"]))
    if options:
        lines += ["", "Options: framework samples/s relative to its default run (MFU against the matching peak).", "",
                  "| option | " + " | ".join(w) + " |", "|---" * (len(w) + 1) + "|"]
        lines += [f"| {o} | " + " | ".join(_option_cell(r["options"].get(o)) for r in w.values()) + " |" for o in options]
    return "\n".join(lines) + "\n"


def _option_cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    if "error" in r:
        return r["error"]
    return f"x{r['relative']:.2f} ({fmt(r['samples_per_s'])}/s, MFU {fmt(r['mfu'], '.1%')})"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--options", nargs="*", help=f"of {list(OPTIONS)}, or `all`; default: a per-workload list on CPU, all on GPU")
    p.add_argument("--steps", type=int, help="timed optimizer steps (default: per workload)")
    p.add_argument("--warmup", type=int, help="untimed steps before them (>= 1; the last counts host reads)")
    p.add_argument("--repeats", type=int, help="framework and plain runs per workload, alternated; the best is kept")
    p.add_argument("--sample-batch", type=int, help="samples drawn at once when timing sampling")
    p.add_argument("--out", default="outputs/benchmark", help="directory for benchmark.json and benchmark.md")
    p.add_argument("--profile", action="store_true", help="cProfile the framework's timed window: profile_<workload>.txt")
    p.add_argument("--quick", action="store_true", help="a smoke run in seconds: toy, 10 steps, one option")
    args = p.parse_args(argv)
    if args.quick:
        args.workloads, args.steps, args.warmup, args.repeats = ["toy"], args.steps or 10, args.warmup or 3, 1
        args.options = ["fused_adamw"] if args.options is None else args.options
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and log intervals, irrelevant to timing
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = 8192 if device.type == "cuda" else 1024 if args.quick else 2048
    peaks = {"fp32": peak_matmul(device, torch.float32, n), "bf16": peak_matmul(device, torch.bfloat16, n)}
    report = dict(machine=machine(device, peaks), args=vars(args), workloads={})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            report["workloads"][name] = bench_workload(name, args, tmp, peaks, device)
    (Path(args.out) / "benchmark.json").write_text(json.dumps(report, indent=2))
    (Path(args.out) / "benchmark.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()

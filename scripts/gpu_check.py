"""The GPU half in one command: `python scripts/gpu_check.py --out DIR [--mnist DIR] [--dry-run]`.

Runs each part below in its own process, stopped at its time budget (seconds; --scale multiplies them all), and
after each part rewrites DIR/gpu_check.json and DIR/gpu_check.md, so a run cut off anywhere leaves what it measured.
The budgets add up to under 8 minutes on one GPU. --dry-run runs every part at toy size on whatever device there
is (CPU here), as tests/test_gpu_check.py does, so that the script cannot rot between GPU machines.

  machine     GPU name, memory, driver, torch and CUDA versions; measured fp32, TF32 and bf16 matrix-product peaks
  cuda_tests  `pytest -m cuda` (tests that need a GPU; on a CPU they skip, saying so)
  throughput  scripts/benchmark.py on the FashionMNIST-sized DiT and U-Net: framework against the plain loop in paired
              rounds, speed=fast, and the options fp32 (default), TF32, bf16 autocast and bf16 + torch.compile with
              their MFU and warm-up seconds (compilation); sampling at batch 1024 with per-sample noise streams
              against one generator, and with speed=fast
  max_batch   the largest training batch that fits (bf16 autocast, AdamW, EMA) for each, and its peak memory
  quality     experiment=mnist_dit on the real MNIST test files for the same seconds in fp32 and in bf16 + compile,
              each scored by classifier_fd (512 samples against 512 real digits) beside the floor, with a sample grid
  ddp_resume  trainer=ddp trainer.devices=1 for some steps, then resumed in the same run directory (ckpt_path=auto)

On the device machine (../shared does not travel): copy ../shared/data/mnist into an ignored folder of the checkout,
carry it, and pass it: `python scripts/gpu_check.py --out $OUT/gpu --mnist .gpu_data/mnist`.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
PARTS = {"machine": 20, "cuda_tests": 40, "throughput": 150, "max_batch": 40, "quality": 170, "ddp_resume": 50}
WORKLOADS = ("dit", "unet")


def record(out: Path, part: str, **values) -> None:
    """Adds values to the part's JSON file (rewritten whole, so a killed part leaves what it had)."""
    path = out / "parts" / f"{part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, **values}, indent=1, default=str))


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def part_machine(out: Path, args) -> None:
    import torch

    from benchmarking.measure import peak_matmul
    from diffusion_lab.machine import provenance

    dev = device()
    info = provenance(dev)
    record(out, "machine", **{k: info[k] for k in ("gpu", "cpu", "cores", "torch", "date", "commit", "command")},
           cuda=torch.version.cuda, memory_gib=torch.cuda.get_device_properties(dev).total_memory / 2**30
           if dev.type == "cuda" else None, driver=nvidia_smi("driver_version"))
    n = 256 if args.dry_run else 8192
    peaks = {"fp32": peak_matmul(dev, torch.float32, n)}
    torch.backends.cuda.matmul.allow_tf32 = True
    peaks["tf32"] = peak_matmul(dev, torch.float32, n) if dev.type == "cuda" else None
    torch.backends.cuda.matmul.allow_tf32 = False
    peaks["bf16"] = peak_matmul(dev, torch.bfloat16, n)
    record(out, "machine", peak_tflops={k: v and v / 1e12 for k, v in peaks.items()})


def nvidia_smi(field: str) -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def part_cuda_tests(out: Path, args) -> None:
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                        "tests/test_cuda.py"], cwd=ROOT, capture_output=True, text=True, env=script_env())
    lines = r.stdout.strip().splitlines()
    record(out, "cuda_tests", returncode=r.returncode, summary=lines[-1] if lines else r.stderr[-300:],
           skipped=[x for x in lines if x.startswith("SKIPPED")][:5])


def part_throughput(out: Path, args) -> None:
    from benchmark import main as benchmark

    options = ["tf32", "bf16"] if args.dry_run else ["tf32", "bf16", "bf16+compile"]
    for name in ["toy"] if args.dry_run else WORKLOADS:
        extra = ["--steps", "4", "--warmup", "2", "--rounds", "2", "--sample-batch", "16", "--noise-batch", "16",
                 "--noise-rounds", "2"] \
            if args.dry_run else ["--rounds", "3", "--steps", "30", "--warmup", "8"]
        report = benchmark(["--workloads", name, "--options", *options, "--out", str(out / f"benchmark_{name}"), *extra])
        record(out, "throughput", **{name: report["workloads"][name]}, machine=report["machine"])


def part_max_batch(out: Path, args) -> None:
    import torch

    from benchmarking.workloads import compose_run
    from diffusion_lab.app.train import build

    dev, cap = device(), 64 if args.dry_run else 1 << 16
    for name in ["toy"] if args.dry_run else WORKLOADS:
        module, _ = build(compose_run(name, [], str(out), 0, 1))
        model = module.objective.to(dev).train()
        optimizer, shadow = torch.optim.AdamW(model.parameters()), [p.detach().clone() for p in model.parameters()]
        fits, batch = None, 8
        while batch <= cap:
            if not train_step_fits(model, optimizer, module.schedule, dev, batch):
                break
            fits = dict(batch=batch, peak_memory_gib=peak_gib(dev))
            record(out, "max_batch", **{name: dict(fits, capped=False, params=sum(p.numel() for p in shadow))})
            batch *= 2
        record(out, "max_batch", **{name: dict(fits or {}, capped=batch > cap, tried_up_to=batch)})
        del model, optimizer, shadow


def train_step_fits(model, optimizer, schedule, dev, batch: int) -> bool:
    """Whether one bf16-autocast training step at this batch fits in the device's memory."""
    import torch

    from diffusion_lab.core import diffusion_loss

    x0 = torch.randn(batch, *model.input_dims, device=dev)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = diffusion_loss(model, x0, schedule)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return True
    except torch.OutOfMemoryError:
        optimizer.zero_grad(set_to_none=True)
        return False


def peak_gib(dev) -> float:
    import torch

    from benchmarking.measure import peak_memory_mib

    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else peak_memory_mib(dev) / 1024


def part_quality(out: Path, args) -> None:
    """Each precision trains for the same seconds, then its last checkpoint is scored in process."""
    seconds = 6 if args.dry_run else int((PARTS["quality"] * args.scale - 70) / 2)
    if args.dry_run:
        recipe = ["experiment=digits_dit", "trainer.accelerator=cpu", "data.val_size=64"]
    else:
        recipe = ["experiment=mnist_dit", "trainer=gpu", f"data.dataset.root={Path(args.mnist).resolve()}",
                  "data.dataset.split=test", "data.dataset.download=false"]
    runs = {"fp32": ["trainer.precision=32-true"], "bf16+compile": ["trainer.precision=bf16-mixed", "compile=true"]}
    for name, precision in runs.items():
        run_dir = out / f"quality_{name.replace('+', '_')}"
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "train.py", *recipe, *precision, f"hydra.run.dir={run_dir}",
                            f"+trainer.max_time={{seconds: {seconds}}}", "trainer.max_steps=1000000",
                            "trainer.val_check_interval=1000000", "trainer.enable_progress_bar=false",
                            "logger=csv"], cwd=ROOT, capture_output=True, text=True, env=script_env())
        result = dict(returncode=r.returncode, train_seconds=seconds, wall_seconds=time.perf_counter() - t0,
                      error=r.stderr.strip().splitlines()[-1] if r.returncode and r.stderr.strip() else None)
        if r.returncode == 0:
            result |= score(run_dir, 64 if args.dry_run else 512)
        record(out, "quality", **{name: result})


def score(run_dir: Path, num_samples: int) -> dict:
    """classifier_fd of num_samples samples (the run's sampler, or 20 DPM-Solver++ steps for a 1000-step one) against
    as many real items, its floor, the steps trained, and a grid of 64 samples."""
    import torch
    from omegaconf import OmegaConf

    from diffusion_lab.app.evaluate import evaluator_for
    from diffusion_lab.app.sampling import with_overrides
    from diffusion_lab.build import load_model
    from diffusion_lab.evaluation.plotting import save_samples
    from diffusion_lab.sampling import generate

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    model = load_model(ckpt, device=device(), precision="32-true")
    if model.sampler.steps > 100:
        model = with_overrides(model, sampler={"_target_": "diffusion_lab.core.Sampler", "steps": 20, "method": {
            "_target_": "diffusion_lab.core.sample_dpmpp", "_partial_": True, "order": 2}})
    cfg = OmegaConf.create(dict(metric=["classifier_fd"], num_samples=num_samples, classifier_cache=str(run_dir.parent /
                                "feature_classifiers"), classifier_steps=500, inception_weights=None))
    evaluator, floor = evaluator_for(cfg, model.config, conditional=False, device=device())
    samples = generate(model, num_samples, batch_size=256, seed=0)
    grid = save_samples(samples.x[:64], run_dir.parent / f"{run_dir.name}.png", title=run_dir.name)
    steps = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    return dict(steps=steps, samples=num_samples, nfe=model.nfe, **evaluator(samples.x, None), **floor, grid=str(grid))


def part_ddp_resume(out: Path, args) -> None:
    run_dir = out / "ddp_run"
    base = ["trainer=ddp", "trainer.devices=1", "callbacks.model_checkpoint.every_n_train_steps=10",
            "trainer.val_check_interval=10", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
            "logger=csv", "num_samples=64"]
    if device().type != "cuda":
        base.append("trainer.accelerator=cpu")
    for name, steps in (("first", 10), ("resumed", 20)):
        r = subprocess.run([sys.executable, "train.py", *base, f"trainer.max_steps={steps}", "ckpt_path=auto"],
                           cwd=ROOT, capture_output=True, text=True, env=script_env())
        import torch

        ckpt = run_dir / "checkpoints" / "last.ckpt"
        step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] if ckpt.is_file() else None
        record(out, "ddp_resume", **{name: dict(returncode=r.returncode, global_step=step,
                                                 error=r.stderr.strip().splitlines()[-1] if r.returncode else None)})


def run_part(cmd: list[str], budget: float, log: Path) -> str:
    """Runs one part's process (and the processes it starts) for at most budget seconds; its status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True, env=script_env(),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and the runs it started
            proc.wait()
            return "stopped at its budget (what it measured by then is kept)"
    tail = [x for x in log.read_text().strip().splitlines() if x.strip()]
    return "ok" if rc == 0 else f"failed: {(tail or ['?'])[-1][:200]} (log: parts/{log.name})"


def script_env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def markdown(report: dict) -> str:
    """The report as Markdown: the machine, then one section per part with its status."""
    m = report["parts"].get("machine", {})
    peaks = m.get("peak_tflops", {})
    lines = [f"GPU check: {m.get('gpu') or 'no GPU (' + str(m.get('cpu')) + ')'}, {fmt(m.get('memory_gib'), '.0f')} GiB, "
             f"driver {m.get('driver')}, torch {m.get('torch')}, CUDA {m.get('cuda')}; commit {str(m.get('commit'))[:7]}, "
             f"{m.get('date')}; `{report['command']}`" + (" (dry run: toy sizes)" if report["dry_run"] else ""), "",
             "Matrix-product peaks measured: " + ", ".join(f"{k} {fmt(v)} TFLOP/s" for k, v in peaks.items()), "",
             "| part | status | seconds (budget) |", "|---|---|---|"]
    lines += [f"| {p} | {s['status']} | {s['seconds']:.0f} ({s['budget']:.0f}) |" for p, s in report["status"].items()]
    parts = report["parts"]
    if "cuda_tests" in parts:
        lines += ["", f"CUDA tests: {parts['cuda_tests'].get('summary')}"]
    throughput = dict(parts.get("throughput", {}))
    bench_machine = throughput.pop("machine", None)
    if throughput:
        from benchmarking.report import noise_table, options_table, sampling_table, training_table

        lines += ["", *training_table(bench_machine, throughput), "", *sampling_table(throughput), "",
                  *noise_table(throughput), "", *options_table(throughput)]
    if parts.get("max_batch"):
        lines += ["", "| largest training batch (bf16 autocast, AdamW) | batch | peak memory GiB |", "|---|---|---|"]
        lines += [f"| {k} | {v.get('batch')}{' (cap)' if v.get('capped') else ''} | {fmt(v.get('peak_memory_gib'))} |"
                  for k, v in parts["max_batch"].items()]
    if parts.get("quality"):
        lines += ["", "| same training seconds | steps | classifier_fd (floor) | samples, NFE | grid |", "|---|---|---|---|---|"]
        for k, v in parts["quality"].items():
            fd = f"{fmt(v.get('classifier_fd'))} ({fmt(v.get('classifier_fd_floor'))})" if "classifier_fd" in v else v.get("error")
            lines.append(f"| {k}, {v.get('train_seconds')} s | {v.get('steps')} | {fd} | {v.get('samples')}, {v.get('nfe')} "
                         f"| {Path(v['grid']).relative_to(report['out']) if v.get('grid') else ''} |")
    if parts.get("ddp_resume"):
        d = parts["ddp_resume"]
        lines += ["", "DDP (1 device) then resume: " + "; ".join(
            f"{k}: rc {v['returncode']}, global step {v['global_step']}" for k, v in d.items())]
    return "\n".join(lines) + "\n"


def fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def write(out: Path, report: dict) -> None:
    report["parts"] = {p.stem: json.loads(p.read_text()) for p in sorted((out / "parts").glob("*.json"))}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json, gpu_check.md and the runs")
    p.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"), help="MNIST IDX files")
    p.add_argument("--dry-run", action="store_true", help="every part at toy size, on any device")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every part's time budget")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # run one part in this process
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part:
        globals()[f"part_{args.part}"](args.out, args)
        return {}
    if "quality" in args.parts and not args.dry_run and not Path(args.mnist).is_dir():
        sys.exit(f"error: --mnist {args.mnist}: no such folder (the MNIST IDX files; see this script's docstring)")
    report = {"command": " ".join(["gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "dry_run": args.dry_run, "out": str(args.out), "status": {}}
    for part in args.parts:
        budget, t0 = PARTS[part] * args.scale, time.perf_counter()
        cmd = [sys.executable, __file__, "--part", part, "--out", str(args.out), "--mnist", args.mnist,
               "--scale", str(args.scale), *(["--dry-run"] if args.dry_run else [])]
        status = run_part(cmd, budget, args.out / "parts" / f"{part}.log")
        report["status"][part] = dict(status=status, seconds=time.perf_counter() - t0, budget=budget)
        print(f"[gpu_check] {part}: {status} ({report['status'][part]['seconds']:.0f} s)", flush=True)
        write(args.out, report)
    print((args.out / "gpu_check.md").read_text())
    return report


if __name__ == "__main__":
    main()

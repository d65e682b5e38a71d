"""smalldiffusion's own loop, DiT and sampler on the data of a diffusion_lab run, for the run's training seconds,
scored by the same metric beside the same floor.

    pip install --target /tmp/sd --no-deps smalldiffusion accelerate      # for this comparison only
    PYTHONPATH=/tmp/sd python scripts/benchmarking/smalldiffusion_compare.py --run RUN_DIR --out DIR

The run is a finished train.py run of unconditional image data (e.g. experiment=mnist_dit_uncond_cpu); smalldiffusion
trains a DiT of the run's size (in_dim, patch size, depth, heads) with its FashionMNIST recipe's schedule (DDPM betas
1e-4..0.02, N=1000), optimizer (AdamW lr 1e-3), EMA (0.99, torch-ema) and sampler (20 steps, gam=1.6), on the run's
data set and batch size, for as many seconds as the run trained (its summary.json; evaluations excluded on both
sides), then draws the run's num_samples samples. Both are scored by the run's first metric against the same real
items. Writes comparison.json (also an evaluation artifact: scripts/figures.py collect evaluation DIR ...).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from diffusion_lab.app.evaluate import evaluator_for  # noqa: E402
from diffusion_lab.app.sampling import build_dataset  # noqa: E402
from diffusion_lab.build import load_model  # noqa: E402
from diffusion_lab.evaluation.plotting import save_samples  # noqa: E402
from diffusion_lab.machine import provenance  # noqa: E402
from diffusion_lab.sampling import generate  # noqa: E402


def train_smalldiffusion(config: dict, seconds: float, seed: int):
    """smalldiffusion's DiT trained by its training_loop for `seconds` of wall clock; (EMA model, schedule, steps)."""
    from smalldiffusion import DiT, ScheduleDDPM, training_loop
    from torch.utils.data import DataLoader
    from torch_ema import ExponentialMovingAverage

    torch.manual_seed(seed)
    net, data = config["model"], config["data"]
    model = DiT(in_dim=data["input_dims"][1], channels=data["input_dims"][0], patch_size=net["patch_size"],
                depth=net["depth"], head_dim=net["head_dim"], num_heads=net["num_heads"], mlp_ratio=net["mlp_ratio"])
    dataset = build_dataset(config)
    images = torch.stack([dataset[i][0] if isinstance(dataset[i], tuple) else dataset[i] for i in range(len(dataset))])
    loader = DataLoader(images, batch_size=data["batch_size"], shuffle=True, drop_last=True)
    schedule = ScheduleDDPM(beta_start=0.0001, beta_end=0.02, N=1000)
    ema = ExponentialMovingAverage(model.parameters(), decay=0.99)
    steps, start = 0, time.perf_counter()
    for _ in training_loop(loader, model, schedule, epochs=10**6, lr=1e-3):
        if steps and time.perf_counter() - start >= seconds:
            break
        if steps:
            ema.update()  # after the step the loop took once we handed it back
        steps += 1
    ema.copy_to(model.parameters())
    return model.eval(), schedule, steps - 1, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished diffusion_lab run directory")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, help="training seconds (default: the run's train_seconds)")
    args = p.parse_args()
    from smalldiffusion import samples

    config = OmegaConf.to_container(OmegaConf.load(args.run / "config.yaml"), resolve=True)
    summary = json.loads((args.run / "summary.json").read_text())
    seconds = args.seconds or summary["train_seconds"]
    ours = load_model(args.run / "checkpoints" / "last.ckpt")
    n = config["num_samples"]
    cfg = OmegaConf.create(dict(metric=None, num_samples=n, classifier_cache=config["callbacks"]["evaluate"][
        "classifier_cache"], classifier_steps=config["callbacks"]["evaluate"]["classifier_steps"], inception_weights=None))
    evaluator, floor = evaluator_for(cfg, config, conditional=False, device=torch.device("cpu"))
    rows = [{"ema": "diffusion_lab", "steps": summary["steps"], "train_seconds": summary["train_seconds"],
             "nfe": ours.nfe, **evaluator(generate(ours, n, batch_size=256, seed=0).x, None), **floor}]
    model, schedule, steps, took = train_smalldiffusion(config, seconds, config["seed"])
    torch.manual_seed(0)
    *_, x0 = samples(model, schedule.sample_sigmas(20), gam=1.6, batchsize=n)
    x0 = x0.clamp(-1, 1)
    save_samples(x0[:100], args.out / "smalldiffusion.png", title=f"smalldiffusion, {steps} steps")
    rows.append({"ema": "smalldiffusion", "steps": steps, "train_seconds": took, "nfe": 20, **evaluator(x0, None),
                 **floor})
    metric = evaluator.metrics[0]
    for row in rows:
        print(f"{row['ema']}: {row['steps']} steps in {row['train_seconds']:.0f} s, {metric} {row[metric]:.4g} "
              f"(floor {row[metric + '_floor']:.4g}, {row[metric] / row[metric + '_floor']:.2f} floors)")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"run": str(args.run), "num_samples": n, "metrics": evaluator.metrics, "rows": rows, **provenance()}
    (args.out / "evaluation.json").write_text(json.dumps(record, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()

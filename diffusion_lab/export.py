"""A trained model as a folder anyone can load: safetensors weights, the model's config as JSON and a model card.

    export_model("outputs/.../checkpoints/last.ckpt", "my_model")     # my_model/{model.safetensors, config.json, README.md}
    model = load_model("my_model")                                     # diffusion_lab.load_model: folder, .ckpt or hub id

The folder is what `huggingface_hub.upload_folder` (or `huggingface-cli upload user/repo my_model`) pushes, and
`load_model("user/repo")` reads it back through the hub's cache. Loading needs only torch and safetensors.
"""
import json
import shutil
from pathlib import Path

import torch

from diffusion_lab.checkpoints import PARTS_KEY, has_ema, read_checkpoint, weights
from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.evaluation.grid import logged

FORMAT = "diffusion_lab/1"
WEIGHTS, CONFIG, CARD, GRID = "model.safetensors", "config.json", "README.md", "samples.png"
MODEL_KEYS = ("model", "objective", "schedule", "sampler", "guidance", "seed")  # what a model config keeps of a run's


def model_config(train_config: dict) -> dict:
    """What building and sampling the model needs of a run's config: the network, objective, schedule, sampler,
    guidance, a latent run's VAE and classifier, the data's shape and classes, the training precision."""
    config = {k: train_config[k] for k in MODEL_KEYS if k in train_config}
    if str((config.get("guidance") or {}).get("_target_", "")).endswith(".autoguidance"):
        # its guide is a file on this machine: the exported model samples unguided (guidance=... adds it back)
        config["guidance"] = {"_target_": "diffusion_lab.core.Guidance"}
    module = train_config.get("module") or {}
    config["module"] = {k: module[k] for k in ("vae", "classifier") if k in module}
    data = train_config.get("data") or {}
    config["data"] = {"input_dims": data.get("input_dims"), "num_classes": data.get("num_classes", 0),
                      "dataset": str((data.get("dataset") or {}).get("_target_", "")).rsplit(".", 1)[-1]}
    config["trainer"] = {"precision": (train_config.get("trainer") or {}).get("precision")}
    return config


def model_card(config: dict, run_dir: Path, weights_kind: str) -> str:
    """The README.md of an exported folder: what the model is, how it scored, the command that trained it."""
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    metrics = {k: values[-1][1] for k, values in logged(run_dir).items() if k.startswith("val/")}  # the last of each
    names = sorted(k for k in metrics if not k.endswith(("_floor", "_seconds", "loss")) and f"{k}_floor" in metrics)
    scores = [f"| {k} | {metrics[k]:.4g} | {metrics[f'{k}_floor']:.4g} |" for k in names]
    data, what = config["data"], [config[k]["_target_"].rsplit(".", 1)[-1] for k in ("model", "objective")]
    lines = ["---", "library_name: diffusion_lab", "license: mit", "tags: [diffusion, diffusion_lab]", "---", "",
             f"# {summary.get('command', 'a diffusion_lab model').split(' ', 1)[-1] or 'a diffusion_lab model'}", "",
             f"A {what[0]} trained with {what[1]} on {data['dataset']} ({'x'.join(map(str, data['input_dims']))}, "
             f"{data['num_classes'] or 'no'} classes); {weights_kind} weights.", ""]
    if summary:
        lines += [f"Trained by `{summary['command']}` for {summary['steps']} steps ({summary['train_seconds'] / 60:.1f} "
                  f"min) on {summary['machine']}; commit {str(summary.get('commit'))[:7]}, {summary.get('date')}.", ""]
    if scores:
        samples = int(metrics.get("val/eval_samples", 0))
        lines += [f"Its last in-training evaluation ({samples} samples against as many real items; the floor is the "
                  "same metric between two real sets, a difference below it is noise):", "",
                  "| metric | value | floor |", "|---|---|---|", *scores, ""]
    if (run_dir / "samples").is_dir() and any((run_dir / "samples").glob("*.png")):
        lines += [f"![samples]({GRID})", ""]
    lines += ["```python", "from diffusion_lab import load_model", "", 'model = load_model("path/or/user/repo")',
              "x = model.sample(16, seed=0)", "```", ""]
    return "\n".join(lines)


def export_model(ckpt_path: str | Path, out: str | Path, ema: bool = True) -> Path:
    """Writes the folder `out`: the objective's weights (EMA by default; a latent run's VAE and classifier too) as
    safetensors, the model config as JSON, a model card and the run's last sample grid; returns out."""
    from safetensors.torch import save_file

    ckpt_path, out = Path(ckpt_path), Path(out)
    ckpt = read_checkpoint(ckpt_path)
    parts = ckpt.get(PARTS_KEY, ["objective"])
    if "objective" not in parts:
        raise CheckpointError(f"ckpt={ckpt_path}: its denoiser was never trained; export a checkpoint of a stage that "
                              "trained it")
    config = model_config(ckpt["config"])
    state = {}
    for part in parts:
        state |= {f"{part}.{k}": v.contiguous() for k, v in weights(ckpt, part, ema=ema).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT})
    config["format"], config["parts"], config["ema"] = FORMAT, sorted(parts), ema and has_ema(ckpt)
    (out / CONFIG).write_text(json.dumps(config, indent=1, default=float) + "\n")
    posthoc = ckpt.get("posthoc_ema")  # scripts/reconstruct_ema.py's: the run is where its snapshots are
    run_dir = Path(posthoc["snapshots"]).parent if posthoc else ckpt_path.resolve().parents[1]  # <run>/checkpoints/
    kind = (f"post-hoc EMA (relative std {posthoc['std']:g} at step {posthoc['step']})" if posthoc and config["ema"]
            else "EMA" if config["ema"] else "raw training")
    (out / CARD).write_text(model_card(config, run_dir, kind))
    grids = sorted((run_dir / "samples").glob("*.png"))
    if grids:
        shutil.copyfile(grids[-1], out / GRID)
    return out


def read_exported(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model config, weights by part-prefixed key) of an exported folder; ConfigError when it is not one."""
    from safetensors.torch import load_file

    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise ConfigError(f"{folder}: not an exported diffusion_lab model (needs {CONFIG} and {WEIGHTS})")
    config = json.loads((folder / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ConfigError(f"{folder}/{CONFIG}: format {config.get('format')!r}, this diffusion_lab reads {FORMAT!r}")
    return config, load_file(str(folder / WEIGHTS))

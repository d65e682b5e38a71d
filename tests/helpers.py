"""Helpers the test modules share: paths, run overrides, config composition, script runs, tiny data and checkpoints."""
from __future__ import annotations

import csv
import gzip
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from diffusion_lab.app.config import CONFIG_DIR  # importing it registers the resolvers the configs use
from diffusion_lab.checkpoints import LAYOUT, LAYOUT_KEY, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
REAL_MNIST = ROOT.parent / "shared" / "data" / "mnist"  # the real MNIST test set, when this machine has it

FAST = ["trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.log_every_n_steps=5",
        "callbacks.model_checkpoint.every_n_train_steps=10", "num_samples=16", "sampler.steps=5",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "callbacks.evaluate.classifier_steps=20"]
# 8 batches of 512 per epoch; checkpoints every 5 optimizer steps.
BASE = [*FAST, "data.epoch_size=4096", "data.batch_size=512", "model.hidden_dims=[16,32,16]",
        "trainer.val_check_interval=5", "callbacks.model_checkpoint.every_n_train_steps=5"]
TINY_DIT = ["model=dit", "data=digits", "model.depth=1", "model.num_heads=2", "model.head_dim=8", "model.patch_size=2"]
CONDITIONAL = "model.num_classes=${data.num_classes}"  # the network takes the data's labels


def config_options(group: str) -> list[str]:
    """The option names of a config group, as `group=<name>` takes them."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def compose_train(overrides: list[str], out_dir, data_dir=None) -> DictConfig:
    """The config `python train.py <overrides>` composes, writing under out_dir, reading data from data_dir."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root_dir = str(out_dir)
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.data_dir = str(data_dir or os.path.join(out_dir, "data"))
    return cfg


def script_env(one_thread: bool = True) -> dict[str, str]:
    """The environment of a script run: wandb and the hub offline, this checkout importable, one thread if asked."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return {**env, "OMP_NUM_THREADS": "1"} if one_thread else env


def script_command(script: str, args: list[str], launcher: list[str] = ()) -> list[str]:
    """`python [launcher] <ROOT/script> <args>`: launcher is e.g. ["-m", "torch.distributed.run", ...]."""
    return [sys.executable, *launcher, str(ROOT / script), *args]


def start_script(script: str, args: list[str], cwd=ROOT, one_thread: bool = True, launcher: list[str] = (),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    """A script run started in the background, its output piped, for runs that overlap."""
    return subprocess.Popen(script_command(script, args, launcher), cwd=cwd, env=script_env(one_thread), text=True,
                            stdout=stdout, stderr=stderr)


def run_script(script: str, args: list[str], cwd=ROOT, timeout: float = 600, one_thread: bool = True,
               launcher: list[str] = (), check: bool = False) -> subprocess.CompletedProcess:
    """A script run to its end, its output captured; check asserts it exited 0."""
    r = subprocess.run(script_command(script, args, launcher), cwd=cwd, env=script_env(one_thread), text=True,
                       capture_output=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def run_train(args: list[str], run_dir, check: bool = True) -> subprocess.CompletedProcess:
    """`python train.py <args>` into run_dir, on the default threads (its state is compared with in-process runs)."""
    return run_script("train.py", [*args, f"hydra.run.dir={run_dir}"], one_thread=False, check=check)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_step(ckpt_path) -> int:
    """The optimizer step a checkpoint was saved at."""
    return torch.load(ckpt_path, weights_only=False)["global_step"]


def assert_same_training_state(a_path, b_path) -> None:
    """Two checkpoints hold the same step, weights, EMA weights, post-hoc EMA profiles and optimizer state, bit for
    bit (each read in today's layout)."""
    a, b = (read_checkpoint(p) for p in (a_path, b_path))
    assert a["global_step"] == b["global_step"]
    for key in ["state_dict", "ema_state_dict"]:
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    ema_a, ema_b = ([v for k, v in c.get("callbacks", {}).items() if k.startswith("EMA")] for c in (a, b))
    for x, y in zip(ema_a, ema_b, strict=True):
        assert x.get("num_updates") == y.get("num_updates") and ("power" in x) == ("power" in y)
        if "power" in x:
            assert x["power"]["step"] == y["power"]["step"] == a["global_step"]
            assert all(torch.equal(u, v) for pa, pb in zip(x["power"]["averages"], y["power"]["averages"])
                       for u, v in zip(pa, pb, strict=True))


def logged_metrics(run_dir: Path) -> dict[str, list[float]]:
    """Each key of a run's CSV log -> its logged values in order."""
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows if r[k]] for k in rows[0]}


def write_idx(path: Path, array: np.ndarray) -> None:
    """uint8 `array` in IDX format (magic 2051 for images, 2049 for labels), gzip'd when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_square_digits(raw: Path) -> None:
    """An MNIST-format train split in folder raw: 40 images 28x28, a bright square whose place is the label."""
    labels = np.arange(40) % 10
    images = np.zeros((40, 28, 28), dtype=np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 * y : 2 * y + 8, 4:12] = 255
    write_idx(raw / "train-images-idx3-ubyte.gz", images)
    write_idx(raw / "train-labels-idx1-ubyte.gz", labels)


def write_random_pngs(folder: Path, n: int, height: int, width: int, prefix: str = "") -> None:
    """n random RGB PNGs named <prefix><i>.png in folder (seeded: the same images every time)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{prefix}{i}.png")


def write_corrupt_image_folder(root: Path, n: int = 5) -> Path:
    """n valid 12x10 RGB PNGs and one file with a .png name holding garbage bytes; returns the corrupt file."""
    write_random_pngs(root, n, 12, 10, prefix="img")
    bad = root / "img2_corrupt.png"
    bad.write_bytes(b"this is not a png\x00" * 8)
    return bad


def write_checkpoint(path: Path, overrides: list[str], config_patch: dict | None = None) -> Path:
    """A checkpoint laid out as train.py writes it (Lightning keys, model.-prefixed weights, EMA, config), untrained."""
    cfg = compose_train(overrides, path.parent)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = instantiate(cfg.objective, net=instantiate(cfg.model))
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    raw = {f"objective.{k}": v + 0.05 if v.is_floating_point() else v for k, v in ema.items()}  # raw weights != EMA
    config = OmegaConf.to_container(OmegaConf.merge(cfg, config_patch or {}), resolve=True)
    torch.save({"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2", "state_dict": raw,
                "ema_state_dict": ema, "config": config, LAYOUT_KEY: LAYOUT}, path)
    return path


def write_tiny_checkpoints(folder: Path) -> dict[str, Path]:
    """Sampling checkpoints: toy (2-D MLP), corrupt (its first half), other, cond (8x8 class DiT), missing (no file)."""
    toy = write_checkpoint(folder / "toy.ckpt", ["sampler.steps=4"])
    corrupt = folder / "corrupt.ckpt"
    corrupt.write_bytes(toy.read_bytes()[: toy.stat().st_size // 2])
    return {"toy": toy, "corrupt": corrupt,
            "other": write_checkpoint(folder / "other.ckpt", [], {"model": {"hidden_dims": [16, 64, 16]}}),
            "cond": write_checkpoint(folder / "cond.ckpt", [*TINY_DIT, CONDITIONAL, "guidance=cfg",
                                                            "sampler.steps=3"]),
            "missing": folder / "missing.ckpt"}


LATENT_STAGES = {"reconstruction": ["vae"], "diffusion": ["objective", "vae"], "joint": ["classifier", "objective", "vae"]}


def write_latent_checkpoint(path: Path, stage: str) -> Path:
    """A latent-diffusion checkpoint of `stage` laid out as train.py experiment=mnist_latent writes it (model., vae.
    and classifier. weights, EMA, config, latent_parts), tiny and untrained."""
    cfg = compose_train(["experiment=mnist_latent", f"stage={stage}", "module.vae.ch=8", "module.classifier.ch=8",
                         "model.ch=8", "model.ch_mult=[1]", "model.attn_levels=[]"], path.parent)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        nets = {"objective": instantiate(cfg.objective, net=instantiate(cfg.model)),
                "vae": instantiate(cfg.module.vae), "classifier": instantiate(cfg.module.classifier)}
    state = {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}
    torch.save({"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2", "state_dict": state,
                "ema_state_dict": nets["objective"].state_dict(), "config": OmegaConf.to_container(cfg, resolve=True),
                "latent_parts": LATENT_STAGES[stage], LAYOUT_KEY: LAYOUT}, path)
    return path


MAX_TOKENS = 16  # the tiny text encoder's context length


def tiny_tokenizer():
    """Character-level CLIP BPE: every letter alone and as a word end, no merges (needs transformers)."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) + i for i, c in enumerate(letters)})
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(letters)})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def tiny_pipeline(prediction_type: str):
    """A random Stable-Diffusion-layout pipeline of 16x16 images, 8x8x4 latents (needs diffusers and transformers)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=16)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    # Stable Diffusion's scheduler settings (v1 model card)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)

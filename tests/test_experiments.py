"""Experiments: every configs/experiment recipe composes, builds and trains; class-ordered CFG grids.

MNIST, FashionMNIST and CIFAR-10 are not on this machine: MNIST-format runs read tiny IDX files written here
(real format: gzip'd, magic numbers 2051 and 2049); CIFAR-10 runs swap in data=image_folder over a few 32x32
RGB PNGs, for the smoke run only: the network, schedule and sampler are the recipe's.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.app.config import CONFIG_DIR
from diffusion_lab.core import NoiseStreams
from diffusion_lab.sampling import generate
from diffusion_lab.app.train import build, train
from tests.helpers import REAL_MNIST, compose_train, logged_metrics, write_random_pngs, write_square_digits

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
ISSUE_EXPERIMENTS = {"toy_swissroll", "tree_cfg", "swissroll3d", "swissroll3d_cfg", "gaussian", "sinusoid",
                     "fashion_mnist_dit", "fashion_mnist_dit_cond", "fashion_mnist_unet", "cifar_unet", "mnist_dit",
                     "mnist_dit_crossattn", "digits_dit", "digits_unet"}
CIFAR_LIKE = ["cifar_unet"]  # data=cifar10: smoke runs read a folder of PNGs instead
# Sizes only: the architecture, schedule, parameterization and guidance stay the recipe's.
SMOKE = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
         "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "data.batch_size=2", "++data.val_size=2",
         "++data.num_workers=0", "sampler.steps=2", "num_samples=8",
         "callbacks.evaluate.classifier_steps=2"]  # ++: set, or add where data leaves the default
# One optimizer step at batch 2 on a shared 2-core CPU (measured): mnist_dit (130M parameters, 1024 tokens) 35-40 s,
# mnist_dit_crossattn (80M) 7-15 s, cifar_unet (36M) 2-11 s. Their smoke runs are in the slow suite; the default
# suite builds them and checks a forward pass.
SLOW = {"mnist_dit", "mnist_dit_crossattn", "cifar_unet"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """MNIST and FashionMNIST train splits of 40 images (28x28, a bright square whose place is the label) in
    torchvision's layout root/<name>/raw, and a flat folder of 8 RGB 32x32 PNGs standing in for CIFAR-10."""
    root = tmp_path_factory.mktemp("data")
    for name in ("MNIST", "FashionMNIST"):
        write_square_digits(root / name / "raw")
    write_random_pngs(root / "cifar_like", 8, 32, 32)
    return root


def smoke_overrides(name: str, data_dir: Path) -> list[str]:
    swap = ["data=image_folder", f"data.dataset.root={data_dir / 'cifar_like'}"] if name in CIFAR_LIKE else []
    return [f"experiment={name}", *SMOKE, *swap]


def test_every_recipe_of_the_issue_is_an_experiment():
    assert ISSUE_EXPERIMENTS <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        text = (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n"), name
        assert "  - override /" in text, f"{name} overrides no group"
        assert "\n# Sized for: " in text, f"{name} does not say what device it is sized for"


# Leaves each recipe must set (resolved): the numbers of the seed projects.
M, C, T = "diffusion_lab.models.", "diffusion_lab.core.", "diffusion_lab.training."
CFG = {"guidance._target_": C + "ClassifierFreeGuidance"}
JAX_TOY = {"model._target_": M + "ToyUNet", "schedule._target_": C + "ScheduleDDPM", "schedule.N": 1000,
           "schedule.beta_start": 0.0001, "schedule.beta_end": 0.02, "optimizer._target_": "torch.optim.Adam",
           "lr_scheduler._target_": T + "WarmupCosine", "lr_scheduler.warmup_steps": 0,
           "sampler.method._target_": C + "sample_ddim", "sampler.method.eta": 0.0, "trainer.gradient_clip_val": 1.0}
FASHION_DIT = {"model._target_": M + "DiT", "model.in_dim": 28, "model.patch_size": 2, "model.depth": 6,
               "model.head_dim": 32, "model.num_heads": 6, "model.mlp_ratio": 4.0,
               "schedule._target_": C + "ScheduleDDPM", "schedule.N": 1000, "schedule.beta_start": 0.0001,
               "schedule.beta_end": 0.02, "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 0.001,
               "data.batch_size": 1024, "callbacks.ema.decay": 0.99, "sampler.steps": 20, "sampler.method.gam": 1.6}
RECIPES = {
    "toy_swissroll": {"model._target_": M + "TimeInputMLP", "model.hidden_dims": [16, 128, 128, 128, 128, 16],
                      "schedule._target_": C + "ScheduleLogLinear", "schedule.N": 200, "schedule.sigma_min": 0.005,
                      "schedule.sigma_max": 10.0, "data.batch_size": 100, "data.epoch_size": 10000, "trainer.max_steps": 15000,
                      "sampler.steps": 20, "sampler.method.gam": 2.0},
    "tree_cfg": {**CFG, "data.dataset.branching_factor": 4, "data.dataset.depth": 3, "data.num_classes": 64,
                 "model._target_": M + "ConditionalMLP", "model.cond_dim": 4, "model.cond_dropout": 0.1,
                 "model.num_classes": 64, "schedule._target_": C + "ScheduleLogLinear", "schedule.N": 200,
                 "schedule.sigma_min": 0.01, "schedule.sigma_max": 10.0, "guidance.scale": 4.0},
    "swissroll3d": {**JAX_TOY, "sampler.steps": 50},
    "swissroll3d_cfg": {**JAX_TOY, **CFG, "sampler.steps": 50, "guidance.scale": 7.5, "guidance.convention": "uncond",
                        "model.num_classes": 4},
    "gaussian": JAX_TOY,
    "sinusoid": JAX_TOY,
    "fashion_mnist_dit": {**FASHION_DIT, "model.num_classes": 0},
    "fashion_mnist_dit_cond": {**FASHION_DIT, **CFG, "model.num_classes": 10, "model.cond_dropout": 0.1},
    "fashion_mnist_unet": {"model._target_": M + "Unet", "objective.scaled_input": True, "model.ch": 64,
                           "model.ch_mult": [1, 1, 2], "model.attn_levels": [1],
                           "schedule._target_": C + "ScheduleLogLinear", "schedule.N": 800, "schedule.sigma_min": 0.01,
                           "schedule.sigma_max": 20.0, "sampler.steps": 20, "sampler.method.gam": 1.6},
    "cifar_unet": {"model._target_": M + "Unet", "objective.scaled_input": True, "model.ch": 128,
                   "model.ch_mult": [1, 2, 2, 2], "model.attn_levels": [1],
                   "schedule._target_": C + "ScheduleSigmoid", "sampler.schedule._target_": C + "ScheduleLogLinear",
                   "sampler.schedule.sigma_min": 0.01, "sampler.schedule.sigma_max": 35.0, "sampler.steps": 10,
                   "sampler.method.gam": 2.1},
    "mnist_dit": {"model._target_": M + "DiT", "data.input_dims": [1, 64, 64], "model.in_dim": 64, "model.channels": 1,
                  "model.patch_size": 2, "model.num_classes": 0},
    "mnist_dit_crossattn": {**CFG, "model._target_": M + "DiT", "model.in_dim": 32, "model.patch_size": 4,
                            "model.cond_mode": "cross_attn", "model.num_classes": 10,
                            "lr_scheduler._target_": "torch.optim.lr_scheduler.StepLR"},
    "digits_dit": {"model._target_": M + "DiT", "data.dataset._target_": "diffusion_lab.data.Digits"},
    "digits_unet": {"model._target_": M + "Unet", "data.dataset._target_": "diffusion_lab.data.Digits"},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_experiment_sets_the_recipe(name, tmp_path):
    cfg = OmegaConf.create(OmegaConf.to_container(compose_train([f"experiment={name}"], tmp_path), resolve=True))
    got = {key: OmegaConf.select(cfg, key) for key in RECIPES[name]}
    got = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in got.items()}
    assert got == RECIPES[name]
    assert cfg.task_name == name


def recipe_parts(cfg: DictConfig) -> dict:
    """What a smoke run may not change: the network, its wrapper, the noise schedules and the guidance."""
    keep = ["model", "objective", "schedule", "guidance", "sampler._target_", "sampler.schedule", "sampler.method"]
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return {k: OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(resolved, k)})) for k in keep}


def run_smoke(name: str, tmp_path: Path, data_dir: Path) -> None:
    recipe = compose_train([f"experiment={name}"], tmp_path / "recipe", data_dir)
    cfg = compose_train(smoke_overrides(name, data_dir), tmp_path / "run", data_dir)
    assert recipe_parts(cfg) == recipe_parts(recipe)
    train(cfg)
    assert (tmp_path / "run" / "samples" / "samples_step0000002.png").is_file()
    losses = logged_metrics(tmp_path / "run")["train/loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n not in SLOW])
def test_smoke_experiment_trains_two_steps_and_samples(name, tmp_path, data_dir):
    run_smoke(name, tmp_path, data_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_smoke_big_experiment_trains_two_steps_and_samples(name, tmp_path, data_dir):
    run_smoke(name, tmp_path, data_dir)


@pytest.mark.parametrize("name", sorted(SLOW))
def test_big_experiment_builds_and_denoises_the_right_shape(name, tmp_path, data_dir):
    module, datamodule = build(compose_train(smoke_overrides(name, data_dir), tmp_path, data_dir))
    x0 = datamodule.dataset[0]
    x0 = (x0[0] if isinstance(x0, tuple) else x0)[None]  # (1, C, H, W)
    assert tuple(x0.shape[1:]) == tuple(module.objective.input_dims)
    with torch.no_grad():
        assert module.objective(x0, torch.tensor([1.0])).shape == x0.shape


# `python train.py model=X data=Y` as the issue types them; unet + cifar10 reads the PNG folder (same 3x32x32 shape).
PAIRS = [["model=dit", "data=fashion_mnist"], ["model=unet", "data=cifar10"], ["model=dit", "data=digits"]]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "+".join(p))
def test_model_data_pair_trains_as_typed(pair, tmp_path, data_dir):
    swap = ["data=image_folder", f"data.dataset.root={data_dir / 'cifar_like'}"] if "data=cifar10" in pair else []
    cfg = compose_train([*pair, *SMOKE, *swap], tmp_path, data_dir)
    train(cfg)
    assert (tmp_path / "samples" / "samples_step0000002.png").is_file()


@pytest.mark.parametrize("dims", [[1, 8, 8], [1, 16, 16], [1, 28, 28], [3, 32, 32]], ids=lambda d: f"{d[1]}px")
def test_unet_default_attention_level_fits_each_image_size(dims, tmp_path):
    cfg = compose_train(["model=unet", "data=digits", f"data.input_dims=[{dims[0]},{dims[1]},{dims[2]}]"], tmp_path)
    net = build(cfg)[0].objective.net
    assert cfg.model.attn_levels == [1]  # attention at half the image size
    assert any(type(m).__name__ == "AttnBlock" for m in net.down.modules())  # attention below the middle block too
    x = torch.randn(2, *dims)
    with torch.no_grad():
        assert net(x, torch.tensor([0.5, 2.0])).shape == x.shape


CONDITIONAL = ["tree_cfg", "swissroll3d_cfg", "fashion_mnist_dit_cond", "mnist_dit_crossattn", "digits_dit",
               "digits_unet"]


def randomize(net: torch.nn.Module) -> None:
    """Untrained DiTs and U-Nets output zeros (zero-initialised output layers): give those small random weights."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name", [n for n in CONDITIONAL if n not in SLOW])
def test_conditional_samples_follow_labels_0_to_k_and_the_grid_columns_are_classes(name, tmp_path, data_dir):
    cfg = compose_train(smoke_overrides(name, data_dir), tmp_path, data_dir)
    module, _ = build(cfg)
    randomize(module.objective)
    module.eval()  # as at validation: no label dropout, no dropout
    K = module.objective.num_classes
    n = min(K + 3, 13)
    drawn = generate(module.diffusion_model(), n, batch_size=n, seed=100)  # sample i: seed 100 + i, label i % K
    assert drawn.labels.tolist() == [i % K for i in range(n)]
    x = drawn.x

    def alone(i: int, label: int) -> torch.Tensor:
        *_, xi = module.sampler(module.objective, module.schedule, cond=torch.tensor([label]),
                                guidance=module.guidance, generator=NoiseStreams([100 + i]))
        return xi[0]

    for i in (0, n - 1):  # the batch holds what each label gives alone, up to batched-matmul rounding
        scale = x[i].abs().max()
        right = (alone(i, i % K) - x[i]).abs().max()
        wrong = (alone(i, (i + K // 2) % K) - x[i]).abs().max()
        assert right < 1e-3 * scale and wrong > 10 * max(right, 1e-5 * scale)
    full = compose_train([f"experiment={name}"], tmp_path / "full")
    if len(module.objective.input_dims) == 3:  # image grids have int(sqrt(max_images)) columns
        assert int(full.callbacks.sample_images.max_images**0.5) == K, "each grid column should hold one class"


@pytest.mark.parametrize("name", CONDITIONAL)
def test_conditioning_changes_samples_and_the_null_label_is_not_a_class(name, tmp_path, data_dir):
    module, datamodule = build(compose_train(smoke_overrides(name, data_dir), tmp_path, data_dir))
    randomize(module.objective)
    module.eval()
    K = module.objective.num_classes
    labels = torch.arange(K)
    assert module.objective.null_cond(labels).tolist() == [K] * K
    table = module.objective.net.label_emb
    assert (table[0] if isinstance(table, torch.nn.Sequential) else table).num_embeddings == K + 1
    assert int(datamodule.dataset.labels.max()) < K

    def sample(label: int) -> torch.Tensor:  # the same noise (seeds 7, 8) whatever the label
        *_, x = module.sampler(module.objective, module.schedule, cond=torch.full((2,), label),
                               guidance=module.guidance, generator=NoiseStreams([7, 8]))
        return x

    a, b, c = sample(0), sample(K // 2), sample(0)
    assert torch.equal(a, c) and (a - b).abs().max() > 1e-3


def test_real_mnist_test_files_train_as_documented(tmp_path):
    """The README's command for a folder with only the t10k IDX files (the real MNIST test set, when present)."""
    if not (REAL_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST test set not present at {REAL_MNIST}")
    cfg = compose_train(["model=dit", "data=mnist", f"data.dataset.root={REAL_MNIST}", "data.dataset.split=test",
                       "data.dataset.download=false", "model.depth=1", *SMOKE], tmp_path)
    train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "samples" / "samples_step0000002.png").is_file()

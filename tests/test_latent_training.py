"""Latent diffusion in stages (experiment mnist_latent) on CPU; text-to-image from a saved pipeline (stable_diffusion).

MNIST is not on this machine: the runs read 40 tiny images written in the real IDX format (gzip'd, magic numbers
2051 and 2049). Sizes are shrunk (batch, steps, channels); the stages and their wiring are the experiment's.
"""
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.app.config import user_error
from diffusion_lab.app.train import build, train
from tests.helpers import compose_train, logged_metrics, start_script, tiny_pipeline, write_square_digits

TINY = ["experiment=mnist_latent", "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "data.batch_size=4", "data.val_size=4",
        "data.num_workers=0", "sampler.steps=2", "callbacks.model_checkpoint.every_n_train_steps=2",
        "module.vae.ch=8", "module.classifier.ch=8", "model.ch=8", "num_samples=8",
        "callbacks.evaluate.classifier_steps=5"]




@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """An MNIST train split of 40 images (28x28, a bright square whose place is the label) in root/MNIST/raw."""
    root = tmp_path_factory.mktemp("data")
    write_square_digits(root / "MNIST" / "raw")
    return root


def stage_cfg(stage: str, out: Path, data_dir: Path, *extra: str):
    return compose_train([*TINY, f"stage={stage}", *extra], out, data_dir)


def initial(cfg) -> dict:
    """The weights a run of cfg starts from (train() seeds, then builds)."""
    L.seed_everything(cfg.seed, verbose=False)
    return {k: v.clone() for k, v in build(cfg)[0].state_dict().items()}


def part(state: dict, name: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(name + ".")}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict:
    """The recommended chain reconstruction -> diffusion -> joint, and classifier from diffusion, 2 steps each.

    stage -> (run dir, last checkpoint, weights at the start of the run).
    """
    root = tmp_path_factory.mktemp("stages")
    out = {}
    for stage, previous in [("reconstruction", None), ("diffusion", "reconstruction"), ("joint", "diffusion"),
                            ("classifier", "diffusion")]:
        extra = [f"init_from={out[previous][0] / 'checkpoints' / 'last.ckpt'}"] if previous else []
        extra += ["module.classifier_scale=1.0"] if stage != "reconstruction" else []
        cfg = stage_cfg(stage, root / stage, data_dir, *extra)
        start = initial(cfg)
        train(cfg)
        ckpt = torch.load(root / stage / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        out[stage] = (root / stage, ckpt, start)
    return out


def test_reconstruction_trains_only_the_vae_and_draws_reconstructions_beside_originals(runs):
    run, ckpt, start = runs["reconstruction"]
    state = ckpt["state_dict"]
    assert ckpt["latent_parts"] == ["vae"]
    assert not same(part(state, "vae"), part(start, "vae"))
    assert same(part(state, "objective"), part(start, "objective")) and same(part(state, "classifier"), part(start, "classifier"))
    assert state["vae.scale_factor"] == 1.0  # fitted by the next stage
    logged = logged_metrics(run)
    assert len(logged["train/loss"]) == 2 and np.isfinite(logged["val/recon_mse"]).all()
    # 4 tiles of 32x64 (an image and its reconstruction side by side) in a 2x2 grid with 1-pixel padding
    assert Image.open(run / "samples" / "samples_step0000002.png").size == (2 * 65 + 1, 2 * 33 + 1)


def test_diffusion_starts_from_the_trained_vae_keeps_it_frozen_and_saves_the_fitted_scale(runs, data_dir):
    run, ckpt, start = runs["diffusion"]
    state, vae_before = ckpt["state_dict"], part(runs["reconstruction"][1]["state_dict"], "vae")
    assert ckpt["latent_parts"] == ["objective", "vae"]
    assert same({k: v for k, v in part(state, "vae").items() if k != "vae.scale_factor"},
                {k: v for k, v in vae_before.items() if k != "vae.scale_factor"})
    assert not same(part(state, "objective"), part(start, "objective"))
    assert "ema_state_dict" in ckpt and "val/classifier_fd" in logged_metrics(run)
    # the saved scale factor is 1 / std of the trained VAE's latents of the validation images
    module, datamodule = build(stage_cfg("diffusion", run / "check", data_dir, f"init_from={run.parent}/"
                                         "reconstruction/checkpoints/last.ckpt"))
    expected = module.vae.fit_scale_factor(datamodule.val_dataloader(), torch.Generator().manual_seed(0))
    assert expected != 1.0 and state["vae.scale_factor"].item() == pytest.approx(expected, rel=1e-6)
    assert Image.open(run / "samples" / "samples_step0000002.png").size == (2 * 33 + 1, 4 * 33 + 1)  # 8 samples


def test_joint_continues_the_diffusion_stage_and_logs_classifier_accuracy(runs):
    run, ckpt, start = runs["joint"]
    state, before = ckpt["state_dict"], runs["diffusion"][1]
    assert ckpt["latent_parts"] == ["classifier", "objective", "vae"]
    assert same(part(state, "vae"), part(before["state_dict"], "vae"))  # the scale factor too: fitted once
    assert same(part(start, "objective"), {f"objective.{k}": v for k, v in before["ema_state_dict"].items()})
    assert not same(part(state, "objective"), part(start, "objective"))
    assert not same(part(state, "classifier"), part(start, "classifier"))
    logged = logged_metrics(run)
    assert 0 <= logged["val/accuracy"][-1] <= 1 and {"val/diffusion_loss", "val/classifier_loss"} <= logged.keys()
    assert (run / "samples" / "samples_step0000002.png").is_file()  # drawn with classifier guidance


def test_classifier_stage_trains_only_the_classifier(runs):
    run, ckpt, start = runs["classifier"]
    state = ckpt["state_dict"]
    assert same(part(state, "objective"), part(start, "objective")) and same(part(state, "vae"), part(start, "vae"))
    assert not same(part(state, "classifier"), part(start, "classifier"))
    assert "val/accuracy" in logged_metrics(run)


def test_frozen_parts_stay_in_eval_mode_without_gradients(runs, data_dir, tmp_path):
    init = runs["reconstruction"][0] / "checkpoints" / "last.ckpt"
    module, _ = build(stage_cfg("diffusion", tmp_path, data_dir, f"init_from={init}"))
    module.train()
    assert module.objective.training and not module.vae.training and not module.classifier.training
    assert all(p.requires_grad for p in module.objective.parameters())
    assert not any(p.requires_grad for p in [*module.vae.parameters(), *module.classifier.parameters()])


@pytest.mark.parametrize("case", ["missing", "foreign", "other_vae", "untrained_vae", "none", "bad_stage"])
def test_bad_init_from_or_stage_is_a_one_line_error(case, runs, data_dir, tmp_path):
    recon = runs["reconstruction"][0] / "checkpoints" / "last.ckpt"
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"config": {"model": {}}, "state_dict": {"objective.net.w": torch.zeros(1)}}, foreign)
    untrained = tmp_path / "untrained.ckpt"
    torch.save({**runs["reconstruction"][1], "latent_parts": []}, untrained)
    args, error, text = {
        "missing": (["stage=diffusion", f"init_from={tmp_path / 'absent.ckpt'}"], CheckpointError, "no such file"),
        "foreign": (["stage=diffusion", f"init_from={foreign}"], CheckpointError, "not a latent-diffusion checkpoint"),
        "other_vae": (["stage=diffusion", f"init_from={recon}", "module.vae.ch=16"], CheckpointError, "shape"),
        "untrained_vae": (["stage=diffusion", f"init_from={untrained}"], CheckpointError, "VAE was never trained"),
        "none": (["stage=joint"], ConfigError, "needs init_from"),
        "bad_stage": (["stage=sampling"], ConfigError, "stage='sampling'"),
    }[case]
    cfg = compose_train([*TINY, *args], tmp_path, data_dir)
    with pytest.raises(Exception) as info:
        build(cfg)
    message = user_error(info.value)  # what train.py prints after `error: `
    assert message is not None and text in message and "\n" not in message, message
    assert isinstance(info.value.__cause__, error)
    if error is CheckpointError:
        assert message.startswith("module: init_from: "), message


def test_data_of_another_shape_than_the_vae_takes_is_one_line_naming_the_key(data_dir, tmp_path):
    cfg = stage_cfg("reconstruction", tmp_path, data_dir, "module.vae.channels=1")  # the data stay RGB
    with pytest.raises(ConfigError) as info:
        build(cfg)
    message = str(info.value)
    assert message.startswith("module.vae: VAE takes images of shape [1, 32, 32] but data gives [3, 32, 32]")
    assert "\n" not in message


def test_sample_pretrained_writes_one_row_per_prompt(tmp_path):
    """Its bad inputs (an unknown hub id offline) are cases of test_bad_input.py."""
    pytest.importorskip("diffusers")
    tiny_pipeline("epsilon").save_pretrained(tmp_path / "pipe")
    good = start_script("scripts/sample_pretrained.py", [f"pretrained={tmp_path / 'pipe'}", "prompts=[a cat,a dog]",
                                                         "sampler.steps=2", f"hydra.run.dir={tmp_path / 'good'}"],
                        cwd=tmp_path)
    _, err = good.communicate(timeout=300)
    assert good.returncode == 0, err[-3000:]
    assert Image.open(tmp_path / "good" / "samples.png").size == (17 + 1, 2 * 17 + 1)  # 2 of 16x16, one per row

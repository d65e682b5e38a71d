"""Every kind of checkpoint train.py writes samples and evaluates with the default settings of the scripts.

Latent diffusion (experiment=mnist_latent, tiny: stage reconstruction, then diffusion, then joint, 2 steps each,
on 40 square-digit images in the MNIST format) samples latents that its VAE decodes to images, and guides with its
classifier on request (classifier_scale); a run trained without EMA (experiment=toy_swissroll) samples with its raw
weights and says so. The script runs start together and overlap the in-process checks. The one-line refusals of
the command line are in test_bad_input.py.
"""
import csv
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion_lab.app.sampling import with_overrides
from diffusion_lab.app.train import train
from diffusion_lab.build import load_model
from diffusion_lab.checkpoints import read_checkpoint, strip_prefixes
from diffusion_lab.core import ClassifierGuidance
from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.sampling import generate, trajectory
from tests.helpers import compose_train, start_script, write_square_digits

QUIET = ["trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger=none",
         "++callbacks.evaluate=null"]  # validation quality metrics are not what these runs are for
LATENT = ["experiment=mnist_latent", "trainer.max_steps=2", "trainer.val_check_interval=2", "data.batch_size=4",
          "data.val_size=4", "data.num_workers=0", "num_samples=4", "sampler.steps=2",
          "callbacks.model_checkpoint.every_n_train_steps=2", "module.vae.ch=8", "module.classifier.ch=8",
          "model.ch=8", *QUIET]
NO_EMA = ["experiment=toy_swissroll", "trainer.max_steps=2", "trainer.val_check_interval=2", "data.batch_size=64",
          "model.hidden_dims=[16,32,16]", "num_samples=8", "sampler.steps=3",
          "callbacks.model_checkpoint.every_n_train_steps=2", *QUIET]
IMAGE = (3, 32, 32)  # the data's images; the denoiser's latents are (2, 8, 8)



@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Trained checkpoints: the latent stages reconstruction -> diffusion -> joint, and a toy run without EMA."""
    root = tmp_path_factory.mktemp("kinds")
    write_square_digits(root / "data" / "MNIST" / "raw")
    out, previous = {}, []
    for stage in ("reconstruction", "diffusion", "joint"):
        train(compose_train([*LATENT, f"stage={stage}", *previous], root / stage, root / "data"))
        out[stage] = root / stage / "checkpoints" / "last.ckpt"
        previous = [f"init_from={out[stage]}"]
    train(compose_train(NO_EMA, root / "no_ema", root / "data"))
    out["no_ema"] = root / "no_ema" / "checkpoints" / "last.ckpt"
    return out


@pytest.fixture(scope="module")
def cli(ckpts, tmp_path_factory):
    """The script runs, started at once with the defaults but for sizes; name -> (exit code, stderr, run dir)."""
    out = tmp_path_factory.mktemp("cli")
    runs = {
        "sample": ("sample", "diffusion", ["num_samples=4", "save=[png,pt]", "trajectory=true",
                                           "trajectory_samples=2"]),
        "evaluate": ("evaluate", "diffusion", ["num_samples=8", "classifier_steps=5",
                                               f"classifier_cache={out / 'cache'}", "metric=[classifier_fd]"]),
        "guided": ("sample", "joint", ["num_samples=4", "save=[pt]", "classifier_scale=2"]),
        "no_ema": ("sample", "no_ema", ["num_samples=8", "save=[pt]"]),
    }
    procs = {name: start_script(f"scripts/{script}.py", [f"ckpt={ckpts[ckpt]}", f"hydra.run.dir={out / name}",
                                                         "progress=false", "device=cpu", *args])
             for name, (script, ckpt, args) in runs.items()}

    def result(name: str) -> tuple[int, str, Path]:
        _, stderr = procs[name].communicate(timeout=300)
        return procs[name].returncode, stderr, out / name

    yield result
    for p in procs.values():
        if p.poll() is None:
            p.kill()


def test_latent_run_loads_the_ema_denoiser_and_the_trained_vae_and_classifier(ckpts):
    for stage, parts in [("diffusion", ["objective", "vae"]), ("joint", ["classifier", "objective", "vae"])]:
        ckpt, model = read_checkpoint(ckpts[stage]), load_model(ckpts[stage])
        assert ckpt["latent_parts"] == parts and (model.classifier is not None) == ("classifier" in parts)
        for net, state in [(model.objective, ckpt["ema_state_dict"]),
                           (model.vae, strip_prefixes(ckpt["state_dict"], "vae."))]:
            assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
        assert model.vae.scale_factor.item() != 1.0  # fitted by the diffusion stage, saved with the VAE


def test_latent_samples_are_the_vae_decoding_of_the_sampled_latents(ckpts):
    model = load_model(ckpts["diffusion"])
    images = generate(model, 4, batch_size=3, seed=7)
    latents = generate(model.replace(vae=None), 4, batch_size=3, seed=7)
    assert latents.x.shape == (4, 2, 8, 8) and images.x.shape == (4, *IMAGE) and images.labels is None
    assert torch.allclose(images.x, model.vae.decode(latents.x).clamp(-1, 1), atol=1e-6)
    assert images.x.abs().max() <= 1
    frames = trajectory(model, 2, seed=7)
    assert all(f.shape == (2, *IMAGE) for f in frames) and torch.allclose(frames[-1], images.x[:2], atol=1e-5)


def test_classifier_guidance_draws_labels_for_an_unconditional_denoiser_and_moves_the_samples(ckpts):
    plain = load_model(ckpts["joint"])
    guided = with_overrides(plain, classifier_scale=2.0)
    assert isinstance(guided.guidance, ClassifierGuidance) and guided.guidance.scale == 2.0
    assert guided.guidance.classifier is plain.classifier and type(guided.guidance.base) is type(plain.guidance)
    assert plain.objective.num_classes == 0 and plain.num_classes == 0 and guided.num_classes == 10
    assert guided.nfe == plain.nfe  # the classifier's passes are not denoiser evaluations
    a, b = generate(plain, 12, seed=0), generate(guided, 12, seed=0)
    assert a.labels is None and b.labels.tolist() == [*range(10), 0, 1]
    assert b.x.shape == (12, *IMAGE) and not torch.allclose(a.x, b.x, atol=1e-4)
    assert torch.equal(generate(with_overrides(plain, classifier_scale=0), 12, seed=0).x, a.x)  # 0 = off


def test_checkpoints_that_cannot_sample_or_guide_are_refused_naming_the_setting(ckpts):
    with pytest.raises(CheckpointError, match="denoiser was never trained .*stage=reconstruction.*diffusion or joint"):
        load_model(ckpts["reconstruction"])
    for ckpt in ("diffusion", "no_ema"):  # a classifier never trained, or none at all
        with pytest.raises(ConfigError, match=r"^classifier_scale=1.0: the checkpoint has no trained classifier"):
            with_overrides(load_model(ckpts[ckpt]), classifier_scale=1.0)
    with pytest.raises(ConfigError, match="classifier_scale=-0.5 must be a number >= 0"):
        with_overrides(load_model(ckpts["joint"]), classifier_scale=-0.5)


def test_a_run_without_ema_loads_its_raw_weights_by_default(ckpts, caplog):
    ckpt = read_checkpoint(ckpts["no_ema"])
    assert "ema_state_dict" not in ckpt
    model = load_model(ckpts["no_ema"])
    assert [r.getMessage() for r in caplog.records] == [
        f"ckpt={ckpts['no_ema']}: no EMA weights (trained without callbacks.ema); sampling with the raw training "
        "weights"]
    raw = strip_prefixes(ckpt["state_dict"], "objective.")
    assert all(torch.equal(v, raw[k]) for k, v in model.objective.state_dict().items())
    caplog.clear()
    load_model(ckpts["no_ema"], ema=False)
    assert caplog.records == []  # raw weights asked for: nothing to note


def test_sample_script_writes_the_decoded_images_of_a_latent_checkpoint(cli, ckpts):
    rc, stderr, run_dir = cli("sample")
    assert rc == 0, stderr[-3000:]
    saved = torch.load(run_dir / "samples.pt")
    expected = generate(load_model(ckpts["diffusion"]), 4, seed=0)
    assert saved["samples"].shape == (4, *IMAGE) and torch.allclose(saved["samples"], expected.x, atol=1e-5)
    side = 2 * (IMAGE[1] + 1) + 1  # a 2x2 grid of 32x32 images, 1 pixel apart
    assert Image.open(run_dir / "samples.png").size == (side, side)
    width, height = Image.open(run_dir / "trajectory.png").size
    assert height == side and (width - 1) % (IMAGE[2] + 1) == 0  # 2 samples, each a strip of 32x32 frames


def test_evaluate_script_scores_the_decoded_images_of_a_latent_checkpoint(cli):
    rc, stderr, run_dir = cli("evaluate")
    assert rc == 0, stderr[-3000:]
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["steps"] == "2" and math.isfinite(float(rows[0]["classifier_fd"]))


def test_sample_script_guides_with_the_classifier_of_a_joint_checkpoint(cli, ckpts):
    rc, stderr, run_dir = cli("guided")
    assert rc == 0, stderr[-3000:]
    saved = torch.load(run_dir / "samples.pt")
    expected = generate(with_overrides(load_model(ckpts["joint"]), classifier_scale=2), 4, seed=0)
    assert saved["labels"].tolist() == [0, 1, 2, 3] and saved["samples"].shape == (4, *IMAGE)
    assert torch.allclose(saved["samples"], expected.x, atol=1e-5)


def test_sample_script_samples_a_run_without_ema_with_a_one_line_warning(cli, ckpts):
    rc, stderr, run_dir = cli("no_ema")
    assert rc == 0, stderr[-3000:]
    log = (run_dir / "sample.log").read_text().splitlines()  # Hydra's log of the job, as printed on the console
    notes = [line for line in log if "WARNING" in line]
    assert len(notes) == 1 and "no EMA weights" in notes[0] and "raw training weights" in notes[0]
    assert "Traceback" not in stderr and not any(line.startswith("error:") for line in stderr.splitlines())
    saved = torch.load(run_dir / "samples.pt")
    expected = generate(load_model(ckpts["no_ema"], ema=False), 8, seed=0)
    assert torch.allclose(saved["samples"], expected.x, atol=1e-5)

"""Sampling and evaluation from checkpoints: determinism per seed, metric rankings, the scripts."""
from pathlib import Path

import pytest
import torch
import functools

from diffusion_lab.app.sampling import guidance_config, with_overrides
from diffusion_lab.build import load_model
from diffusion_lab.checkpoints import read_checkpoint
from diffusion_lab.core import PredEps, Sampler, ScheduleLogLinear, sample_generalized
from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.evaluation import Evaluator, data_tensors
from diffusion_lab.sampling import DiffusionModel, generate, trajectory
from tests.helpers import start_script

STOCHASTIC = {"_target_": "diffusion_lab.core.Sampler", "steps": 4, "schedule": None,
              "method": {"_target_": "diffusion_lab.core.sample_generalized", "_partial_": True, "gam": 1.0, "mu": 0.5}}
# (script, checkpoint, overrides); the bad inputs of both scripts are in test_bad_input.py.
GOOD = {
    "sample": ("sample", "toy", ["num_samples=20", "batch_size=7", "seed=5", "save=[png,pt,npz]", "trajectory=true"]),
    "grid": ("evaluate", "toy", ["num_samples=64", "grid.steps=[2,4]", "grid.gam=[1,2]"]),
}


@pytest.fixture(scope="module")
def cli(tiny_ckpts, tmp_path_factory):
    """Starts every script run at once (they overlap with the in-process tests); results are read on demand."""
    out = tmp_path_factory.mktemp("cli")
    procs = {name: start_script(f"scripts/{script}.py", [f"ckpt={tiny_ckpts[ckpt]}", f"hydra.run.dir={out / name}",
                                                         "progress=false", *args])
             for name, (script, ckpt, args) in GOOD.items()}

    def result(name: str) -> tuple[int, str, str, Path]:
        stdout, stderr = procs[name].communicate(timeout=120)
        return procs[name].returncode, stdout, stderr, out / name

    yield result
    for p in procs.values():
        if p.poll() is None:
            p.kill()


def test_sample_script_writes_grid_raw_samples_and_trajectory_equal_to_in_process_samples(cli, tiny_ckpts):
    rc, stdout, stderr, run_dir = cli("sample")
    assert rc == 0, stderr
    for name in ("samples.png", "samples.pt", "samples.npz", "trajectory.png"):
        assert (run_dir / name).stat().st_size > 0
    saved = torch.load(run_dir / "samples.pt")
    expected = generate(load_model(tiny_ckpts["toy"]), 20, batch_size=20, seed=5)
    assert torch.allclose(saved["samples"], expected.x, atol=1e-5)
    assert saved["seeds"].tolist() == list(range(5, 25))


def test_same_seed_gives_the_same_samples_whatever_the_batch_size_or_process_split(tiny_ckpts):
    setup = with_overrides(load_model(tiny_ckpts["toy"]), sampler=STOCHASTIC)  # fresh noise at every step
    first = generate(setup, 64, batch_size=64, seed=3).x
    assert torch.equal(first, generate(setup, 64, batch_size=64, seed=3).x)
    assert torch.allclose(first, generate(setup, 64, batch_size=1, seed=3).x, atol=1e-5)
    shards = [generate(setup, 64, batch_size=16, seed=3, rank=r, world_size=3) for r in range(3)]
    order = torch.cat([s.indices for s in shards]).argsort()
    assert torch.allclose(torch.cat([s.x for s in shards])[order], first, atol=1e-5)
    assert not torch.allclose(first, generate(setup, 64, seed=4).x)


def test_precision_runs_the_network_in_bf16_and_keeps_the_samples_float32(tiny_ckpts):
    full_model = load_model(tiny_ckpts["toy"])
    assert full_model.config["trainer"]["precision"] == "32-true"
    assert full_model.autocast is None  # auto: as the run trained
    setup = load_model(tiny_ckpts["toy"], precision="bf16-mixed")
    assert setup.autocast is torch.bfloat16
    dtypes = []
    hook = setup.objective.net.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    low = generate(setup, 8, batch_size=8, seed=1)
    hook.remove()
    full = generate(full_model, 8, batch_size=8, seed=1)
    assert dtypes and set(dtypes) == {torch.bfloat16} and low.x.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: close to the float32 samples (scale ~1), but not equal
    assert 0 < (low.x - full.x).abs().max() < 0.1 * full.x.abs().max()
    assert torch.equal(low.x[:4], generate(setup, 4, batch_size=2, seed=1).x)  # still per-sample seeded
    with pytest.raises(ConfigError, match=r"precision='fp8' must be one of"):
        load_model(tiny_ckpts["toy"], precision="fp8")


def test_conditional_samples_follow_their_labels_and_seeds(tiny_ckpts):
    setup = with_overrides(load_model(tiny_ckpts["cond"]), cfg_scale=2.0)
    a = generate(setup, 6, batch_size=6, seed=0, labels=[7, 2])
    b = generate(setup, 6, batch_size=4, seed=0, labels=[7, 2])
    assert a.labels.tolist() == [7, 2, 7, 2, 7, 2] and a.x.shape == (6, 1, 8, 8)
    assert torch.allclose(a.x, b.x, atol=1e-5) and setup.nfe == 2 * setup.sampler.steps
    frames = trajectory(setup, 2, seed=0, labels=[7, 2])
    assert len(frames) == setup.sampler.steps and torch.allclose(frames[-1], a.x[:2], atol=1e-5)


def test_ema_weights_by_default_and_raw_weights_on_request(tiny_ckpts):
    ckpt = read_checkpoint(tiny_ckpts["toy"])
    ema = load_model(tiny_ckpts["toy"]).objective.state_dict()
    raw = load_model(tiny_ckpts["toy"], ema=False).objective.state_dict()
    key = next(k for k in ema if k.endswith("weight"))
    assert torch.equal(ema[key], ckpt["ema_state_dict"][key])
    assert torch.equal(raw[key], ckpt["state_dict"][f"objective.{key}"])


def test_checkpoint_prefixes_are_stripped_and_foreign_files_rejected(tiny_ckpts, tmp_path):
    ckpt = read_checkpoint(tiny_ckpts["toy"])
    raw = ckpt["state_dict"]
    ckpt["state_dict"] = {k.replace("objective.", "objective._orig_mod.module.", 1): v for k, v in raw.items()}
    torch.save(ckpt, tmp_path / "compiled.ckpt")
    compiled = load_model(tmp_path / "compiled.ckpt", ema=False).objective.state_dict()
    assert all(torch.equal(v, raw[f"objective.{k}"]) for k, v in compiled.items())
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a diffusion_lab checkpoint"):
        read_checkpoint(tmp_path / "foreign.ckpt")


def test_shortcuts_must_belong_to_the_sampler(tiny_ckpts):
    model = load_model(tiny_ckpts["toy"])
    ddim = {"_target_": "diffusion_lab.core.Sampler", "steps": 5,
            "method": {"_target_": "diffusion_lab.core.sample_ddim", "_partial_": True}}
    assert with_overrides(model, sampler=ddim, eta=0.5, steps=3).sampler.settings == {"eta": 0.5}
    assert with_overrides(model, sampler=ddim, steps=3).sampler.steps == 3
    with pytest.raises(ConfigError, match="^gam=2.0: the sampler's sample_ddim has no gam"):
        with_overrides(model, sampler=ddim, gam=2.0)


def test_cfg_scale_turns_guidance_on_whatever_the_checkpoint_saved():
    for saved in (None, {}, {"_target_": "diffusion_lab.core.Guidance"}):  # older checkpoints; guidance=none now
        assert guidance_config(saved, None) == saved
        guided = guidance_config(saved, 2.0)
        assert guided == {"_target_": "diffusion_lab.core.ClassifierFreeGuidance", "scale": 2.0}
    saved = {"_target_": "diffusion_lab.core.ClassifierFreeGuidance", "scale": 4.0, "convention": "uncond"}
    assert guidance_config(saved, 7.5) == {**saved, "scale": 7.5}


def test_toy_metrics_rank_the_ideal_denoiser_above_a_fresh_model_and_noise():
    from diffusion_lab.data import Swissroll
    from diffusion_lab.models import IdealDenoiser, TimeInputMLP

    data = Swissroll().data
    schedule = ScheduleLogLinear(N=200, sigma_min=0.005, sigma_max=10.0)
    sampler = Sampler(functools.partial(sample_generalized, gam=2.0), steps=20)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fresh_net = TimeInputMLP(dim=2)
    draw = lambda net: DiffusionModel(PredEps(net).eval(), schedule, sampler).sample(512)  # noqa: E731
    evaluate = Evaluator(data, ["swd", "mean_distance", "mmd", "coverage", "precision", "recall"])
    ideal, fresh = evaluate(draw(IdealDenoiser(data))), evaluate(draw(fresh_net))
    noise = evaluate(torch.randn(512, 2, generator=torch.Generator().manual_seed(0)))
    for other in (fresh, noise):
        for lower_is_better in ("swd", "mean_distance", "mmd"):
            assert ideal[lower_is_better] < other[lower_is_better], (lower_is_better, ideal, other)
        for higher_is_better in ("coverage", "precision"):
            assert ideal[higher_is_better] > other[higher_is_better], (higher_is_better, ideal, other)
    # recall (real points inside the samples' k-NN balls) is not ranked: samples spread over the plane score 1.0 too
    assert ideal["coverage"] > 0.9 and ideal["mean_distance"] < 0.02 and ideal["recall"] >= 0.95


def test_classifier_distance_between_real_halves_is_far_below_real_versus_noise(tmp_path, monkeypatch):
    from diffusion_lab.data import Digits
    from diffusion_lab.evaluation import classifier

    x, y = data_tensors(Digits(split="train"))
    metrics = ["classifier_fd", "precision", "recall", "confident", "accuracy"]
    build = lambda: Evaluator(x[::2], metrics, labels=y[::2], num_classes=10,  # noqa: E731
                              classifier_cache=tmp_path / "c.pt", classifier_steps=100, conditional=True)
    real = build()(x[1::2], y[1::2])
    # the second evaluator loads the cached classifier: training again would fail
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("cache not used"))
    noise = build()(torch.randn(x[1::2].shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1), y[1::2])
    assert real["classifier_fd"] * 10 < noise["classifier_fd"], (real, noise)
    assert real["accuracy"] > 0.8 and noise["accuracy"] < 0.3
    assert real["precision"] > 0.8 and noise["precision"] < 0.3
    assert real["confident"] > 0.6 and noise["confident"] < real["confident"] / 2, (real, noise)


def test_fid_without_inception_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    from diffusion_lab.evaluation.inception import inception_features

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError, match="pass inception_weights=PATH"):
        inception_features()
    with pytest.raises(ConfigError, match="inception_weights=.*missing.pth: cannot load"):
        inception_features(str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="metric=\\['fid'\\]: not a metric for point data"):
        Evaluator(torch.zeros(10, 2), ["fid"])


class StandInInception(torch.nn.Module):
    """uint8 RGB images -> 16 features (4x4 average-pooled grey levels): the contract of torchmetrics' Inception."""

    num_features = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return torch.nn.functional.adaptive_avg_pool2d(x.float().mean(1, keepdim=True), 4).flatten(1)  # (B, 16)


def test_fid_and_kid_through_torchmetrics_rank_real_images_above_noise(monkeypatch):
    from diffusion_lab.data import Digits
    from diffusion_lab.evaluation import inception

    monkeypatch.setattr(inception, "inception_features", lambda weights=None: StandInInception())
    x, _ = data_tensors(Digits(split="train"), max_items=600)
    evaluate = Evaluator(x[:300], ["fid", "kid"])
    noise = torch.rand(x[300:].shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    real, fake = evaluate(x[300:]), evaluate(noise)
    assert evaluate(x[300:]) == real  # the real features are kept between calls
    assert real["fid"] * 10 < fake["fid"] and real["kid"] < fake["kid"], (real, fake)


def test_grid_evaluation_writes_its_csv_and_plot(cli):
    rc, stdout, stderr, run_dir = cli("grid")
    assert rc == 0, stderr
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    metrics = ["swd", "coverage", "precision", "recall", "mean_distance"]
    header = ["steps", "gam", "guidance", "guidance_scale", "nfe", *metrics, *(f"{m}_floor" for m in metrics)]
    assert lines[0].split(",") == header
    assert len(lines) == 1 + 4
    floors = {line.split(",")[-5] for line in lines[1:]}
    assert len(floors) == 1 and float(floors.pop()) > 0  # one floor, the same on every row
    assert "floor (50 real items against 50 others): swd=" in stdout  # the toy run's 100 points: 50 each
    assert (run_dir / "metrics_vs_nfe.png").stat().st_size > 0

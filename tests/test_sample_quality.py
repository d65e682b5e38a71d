"""In-training evaluation: equal-size real sets and their noise floor, the SampleQuality callback, samplers in eval mode."""
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from diffusion_lab.app.train import build
import functools

from diffusion_lab.core import Guidance, PredEps, Sampler, ScheduleDDPM, sample_ddim, sample_generalized
from diffusion_lab.data import Digits, GaussianMixture, Swissroll
from diffusion_lab.errors import ConfigError
from diffusion_lab.evaluation import Evaluator, data_classifier, evaluation_sets
from diffusion_lab.evaluation.metrics import image_patches

from diffusion_lab.training import SampleQuality
from tests.helpers import FAST, compose_train, logged_metrics, run_script


def test_evaluation_sets_are_disjoint_of_equal_size_and_fixed():
    data = GaussianMixture(n_samples=1000, seed=0)
    sets = evaluation_sets(data, 300)
    assert sets.size == 300 and sets.reference.shape == sets.floor.shape == (300, 2)
    rows = {tuple(r.tolist()) for r in sets.reference}
    assert not rows & {tuple(r.tolist()) for r in sets.floor}  # no item in both
    assert torch.equal(evaluation_sets(data, 300).floor, sets.floor)
    assert torch.equal(sets.reference_labels, data.labels[torch.randperm(1000, generator=torch.Generator()
                                                                         .manual_seed(0))[:300]])
    assert evaluation_sets(Swissroll(), 512).size == 50  # half of the 100 points each
    with pytest.raises(ConfigError, match="num_samples=4 must be >= 8"):
        evaluation_sets(data, 4)
    with pytest.raises(ConfigError, match="the data set has 12 items: evaluation needs at least 16"):
        evaluation_sets(GaussianMixture(n_samples=12), 8)


def test_point_metrics_of_real_samples_sit_at_the_floor_and_degraded_samples_above_it():
    data = GaussianMixture(n_samples=4000, seed=0)
    sets = evaluation_sets(data, 512)
    evaluate = Evaluator(sets.reference, ["swd", "coverage", "precision"])
    floor = evaluate(sets.floor)
    assert evaluate(sets.reference)["swd"] == 0 < floor["swd"]  # identical sets: no distance at all
    third = data.data[torch.randperm(4000, generator=torch.Generator().manual_seed(0))[1024:1536]]  # other real items
    real = evaluate(third)
    assert real["swd"] < 2 * floor["swd"] and real["coverage"] > floor["coverage"] - 0.1, (real, floor)
    shifted = evaluate(third + 0.5)
    noised = evaluate(third + 0.5 * torch.randn(third.shape, generator=torch.Generator().manual_seed(1)))
    for worse in (shifted, noised):
        assert worse["swd"] > 2 * floor["swd"] and worse["precision"] < floor["precision"] - 0.1, (worse, floor)


def test_image_patches_are_the_pixel_neighbourhoods():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float).reshape(2, 1, 6, 6)
    rows = image_patches(x, size=4, stride=2)
    assert rows.shape == (2 * 2 * 2, 16)
    assert torch.equal(rows[3], x[0, 0, 2:6, 2:6].flatten()) and torch.equal(rows[4], x[1, 0, :4, :4].flatten())
    assert len(image_patches(x, size=4, stride=2, max_patches=5)) == 5


def test_image_metrics_floor_is_below_noised_and_dimmed_digits(tmp_path):
    """classifier_fd sees contrast, not faint grain; patch_fd sees both (Digits at 16x16, 400 against 400)."""
    data = Digits(split="train", image_size=16)
    sets = evaluation_sets(data, 400)
    classifier = data_classifier(data, {"_target_": "Digits"}, tmp_path, steps=100)
    assert len(list(tmp_path.glob("Digits_*.pt"))) == 1  # cached for the next evaluation
    evaluate = Evaluator(sets.reference, ["classifier_fd", "patch_fd"], classifier=classifier)
    assert evaluate(sets.reference)["patch_fd"] < 1e-6  # identical sets
    floor = evaluate(sets.floor)
    g = torch.Generator().manual_seed(0)
    noised = evaluate(sets.floor + 0.1 * torch.randn(sets.floor.shape, generator=g))
    dimmed = evaluate(sets.floor * 0.5 - 0.5)
    assert noised["patch_fd"] > 5 * floor["patch_fd"], (floor, noised)
    assert dimmed["patch_fd"] > 5 * floor["patch_fd"] and dimmed["classifier_fd"] > 2 * floor["classifier_fd"], dimmed


def tiny_run(tmp_path, *overrides):
    cfg = compose_train([*FAST, "data=gaussian", "model.hidden_dims=[16,32,16]", "data.batch_size=256",
                         "num_samples=64", "logger=csv", *overrides], tmp_path)
    module, datamodule = build(cfg)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=[instantiate(cfg.logger.csv)])
    return cfg, module, datamodule, trainer


def test_callback_logs_each_validation_with_its_floor_once_and_is_repeatable(tmp_path):
    cfg, module, datamodule, trainer = tiny_run(tmp_path)
    trainer.fit(module, datamodule=datamodule)
    logged = logged_metrics(tmp_path)
    assert len(logged["val/swd"]) == 2 and len(logged["val/swd_floor"]) == 1  # steps 10 and 20; the floor once
    assert logged["val/eval_samples"] == [64.0, 64.0]
    assert 0 < logged["val/swd_floor"][0] < logged["val/swd"][0]
    quality = next(c for c in trainer.callbacks if isinstance(c, SampleQuality))
    assert quality.metrics[0] == "swd"
    first, second = (trainer.validate(module, datamodule=datamodule, verbose=False)[0] for _ in range(2))
    assert first["val/swd"] == second["val/swd"] == pytest.approx(logged["val/swd"][-1])
    assert module.validation_samples is None  # drawn for one validation, cleared when it ends


def sliced_w2(x: torch.Tensor, y: torch.Tensor, projections: int = 128) -> float:
    """An independent sliced 2-Wasserstein distance for sets of equal size: project on the metric's random unit
    directions (torch.randn seeded 0, normalised), sort, and average the squared gaps of the sorted pairs."""
    theta = torch.randn(x.shape[1], projections, generator=torch.Generator().manual_seed(0))
    theta = theta / theta.norm(dim=0, keepdim=True)  # (D, P)
    return float(((x @ theta).sort(0).values - (y @ theta).sort(0).values).pow(2).mean().sqrt())


def test_callback_scores_the_modules_samples_against_the_data_with_a_floor_far_below_noise(tmp_path):
    """The logged val/swd is the distance between the run's samples (seed + i, EMA weights) and the fixed real
    subset, computed here independently; pure noise (a model that never learnt) scores far above the floor."""
    cfg, module, datamodule, trainer = tiny_run(tmp_path, "trainer.max_steps=10")
    trainer.fit(module, datamodule=datamodule)
    from diffusion_lab.sampling import generate

    module.eval()
    callbacks = [c for c in trainer.callbacks if type(c).__name__ == "EMA"]
    callbacks[0].swap_in(module)
    x = generate(module.diffusion_model(), 64, seed=module.seed).x
    sets = evaluation_sets(datamodule.dataset, 64)
    logged = logged_metrics(tmp_path)
    assert logged["val/swd"][-1] == pytest.approx(sliced_w2(x, sets.reference), rel=1e-4)
    assert logged["val/swd_floor"][0] == pytest.approx(sliced_w2(sets.floor, sets.reference), rel=1e-4)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) * float(module.schedule.sigmas[-1])
    assert sliced_w2(noise, sets.reference) > 10 * logged["val/swd_floor"][0]


class DropoutNet(nn.Module):
    """eps = dropout(x) scaled: different in train mode at every call."""

    input_dims, num_classes = (4,), 0

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        self.frozen = nn.Dropout(0.5).eval()  # a part the user keeps in eval mode

    def forward(self, x, sigma, cond=None):
        return self.frozen(self.inner(x)) * 0.1


@pytest.mark.parametrize("sampler", [Sampler(functools.partial(sample_generalized, gam=2.0), steps=5),
                                     Sampler(sample_ddim, steps=5)])
def test_samplers_run_the_model_in_eval_mode_and_restore_each_module_mode(sampler):
    model = PredEps(DropoutNet())
    schedule = ScheduleDDPM(N=100)

    def draw(train: bool) -> torch.Tensor:
        model.train(train)
        model.net.frozen.eval()
        *_, x = sampler(model, schedule, batch_size=8, guidance=Guidance(), generator=torch.Generator().manual_seed(0))
        return x

    in_train, in_eval = draw(True), draw(False)
    assert torch.equal(in_train, in_eval)
    model.train(True)
    model.net.frozen.eval()
    *_, _ = sampler(model, schedule, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert model.training and model.net.inner[1].training and not model.net.frozen.training


def test_quality_report_reads_a_run_and_rescores_its_last_validation_exactly(tmp_path):
    from diffusion_lab.app.train import train

    train(compose_train([*FAST, "data=gaussian", "model.hidden_dims=[16,32,16]", "data.batch_size=256",
                         "num_samples=64"], tmp_path))
    r = run_script("scripts/quality_report.py", [str(tmp_path), "--out", str(tmp_path / "q.png")], check=True)
    row = next(line for line in r.stdout.splitlines() if line.startswith(f"| {tmp_path.name} | swd (64) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    last_logged = float(cells[3].split("->")[1].split()[0])
    assert float(cells[4]) == pytest.approx(last_logged, rel=1e-3)  # rescored as training scored it
    # the same samples with N(0, 0.1^2) added (the script's generator, seed 0), scored independently here
    from diffusion_lab.build import load_model
    from diffusion_lab.sampling import generate

    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    x = generate(model, 64, 256, model.config["seed"]).x
    noised = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    reference = evaluation_sets(GaussianMixture(**{k: v for k, v in model.config["data"]["dataset"].items()
                                                   if k != "_target_"}), 64).reference
    assert float(cells[5]) == pytest.approx(sliced_w2(noised, reference), rel=1e-3)
    assert (tmp_path / "q.png").stat().st_size > 0
    bad = run_script("scripts/quality_report.py", [str(tmp_path / "nowhere")])
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error:"), bad.stderr

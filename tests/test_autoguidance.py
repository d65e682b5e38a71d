"""Autoguidance: the combination in denoised space against its closed form, the guide's condition and device, NFE,
the one-line refusals, every sampler, sample/evaluate overrides and in-training evaluation."""
import pytest
import torch
from torch import nn

from diffusion_lab.app.sampling import with_overrides
from diffusion_lab.app.train import train
from diffusion_lab.build import autoguidance, check_guidance, load_model
from diffusion_lab.core import AutoGuidance
from diffusion_lab.errors import ConfigError
from diffusion_lab.sampling import generate
from tests.helpers import FAST, config_options, write_checkpoint


@pytest.fixture(scope="module")
def smaller(tmp_path_factory):
    """A guide for the tiny 2-D checkpoint: an untrained narrower MLP of the same data."""
    return write_checkpoint(tmp_path_factory.mktemp("guide") / "smaller.ckpt", ["model.hidden_dims=[16,32,16]"])


class Linear(nn.Module):
    """eps(x, sigma, cond) = a x (+ cond), recording the conditions it was called with."""

    def __init__(self, a: float, num_classes: int = 0):
        super().__init__()
        self.a, self.num_classes, self.input_dims, self.seen = nn.Parameter(torch.tensor(a)), num_classes, (2,), []

    def forward(self, x, sigma, cond=None):
        self.seen.append(cond)
        return self.a * x + (0 if cond is None else cond[:, None].float())


def test_the_combination_is_guide_plus_scale_times_difference_in_denoised_space():
    x, sigma = torch.randn(5, 2), torch.full((5,), 0.7)
    main, guide = Linear(0.9), Linear(0.4)
    for w in (1.0, 2.5):
        eps = AutoGuidance(guide, w)(main, x, sigma)
        D_main, D_guide = x - 0.7 * 0.9 * x, x - 0.7 * 0.4 * x  # D = x - sigma eps of each linear model
        assert torch.allclose(x - 0.7 * eps, D_guide + w * (D_main - D_guide), atol=1e-6)
    assert torch.allclose(AutoGuidance(guide, 1.0)(main, x, sigma), main(x, sigma), atol=1e-7)


def test_an_unconditional_guide_gets_no_labels_and_a_conditional_one_gets_them():
    x, sigma, y = torch.randn(3, 2), torch.ones(3), torch.tensor([0, 1, 2])
    main, plain, cond = Linear(1.0, 3), Linear(0.5), Linear(0.5, 3)
    AutoGuidance(plain, 2.0)(main, x, sigma, y)
    AutoGuidance(cond, 2.0)(main, x, sigma, y)
    assert plain.seen == [None] and torch.equal(cond.seen[0], y) and torch.equal(main.seen[0], y)


def test_a_guide_of_other_data_or_classes_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"guidance.guide: the guide takes inputs of shape \[3\], the model \[2\]"):
        wrong = Linear(1.0)
        wrong.input_dims = (3,)
        check_guidance(AutoGuidance(wrong), Linear(1.0))
    with pytest.raises(ConfigError, match="the guide is conditional on 4 classes, the model on 3"):
        check_guidance(AutoGuidance(Linear(1.0, 4)), Linear(1.0, 3))
    check_guidance(AutoGuidance(Linear(1.0)), Linear(1.0, 3))  # an unconditional guide for a conditional model
    with pytest.raises(ConfigError, match="guide=/nowhere/g.ckpt: no such checkpoint"):
        autoguidance("/nowhere/g.ckpt")


def test_the_guide_is_read_once_and_both_networks_count_in_nfe(tiny_ckpts):
    assert autoguidance(str(tiny_ckpts["toy"])).guide is autoguidance(str(tiny_ckpts["toy"]), scale=3).guide
    model = load_model(tiny_ckpts["toy"])
    guided = with_overrides(model, guidance={"_target_": "diffusion_lab.build.autoguidance",
                                             "guide": str(tiny_ckpts["toy"])}, guidance_scale=1.5)
    assert guided.guidance.scale == 1.5 and guided.nfe == 2 * model.nfe
    with pytest.raises(ConfigError, match=r"guidance_scale=2: the guidance \(Guidance\) has no scale"):
        with_overrides(model, guidance={"_target_": "diffusion_lab.core.Guidance"}, guidance_scale=2)


@pytest.mark.parametrize("sampler", config_options("sampler"))
def test_every_sampler_samples_with_autoguidance_and_scale_one_is_the_model_alone(tiny_ckpts, smaller, sampler):
    from diffusion_lab.app.config import CONFIG_DIR
    from omegaconf import OmegaConf

    model = load_model(tiny_ckpts["toy"])
    config = OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/sampler/{sampler}.yaml"), resolve=False)
    config["steps"] = 4
    guide = {"_target_": "diffusion_lab.build.autoguidance", "guide": str(smaller)}
    plain = generate(with_overrides(model, sampler=config), 6, seed=1).x
    same = generate(with_overrides(model, sampler=config, guidance=guide, guidance_scale=1.0), 6, seed=1).x
    guided = generate(with_overrides(model, sampler=config, guidance=guide, guidance_scale=3.0), 6, seed=1).x
    assert torch.allclose(plain, same, atol=1e-4)
    assert guided.isfinite().all() and not torch.allclose(plain, guided, atol=1e-2)


def test_in_training_evaluation_samples_with_the_guide(compose_cfg, tiny_ckpts, tmp_path):
    cfg = compose_cfg([*FAST, "trainer.max_steps=10", "guidance=autoguidance", f"guidance.guide={tiny_ckpts['toy']}",
                       "guidance.scale=2"])
    train(cfg)
    from tests.helpers import logged_metrics

    assert len(logged_metrics(tmp_path)["val/swd"]) == 1
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(model.guidance, AutoGuidance) and model.guidance.scale == 2


def test_evaluate_grid_reports_the_guidance_and_its_scale_at_each_point(tiny_ckpts, smaller):
    from diffusion_lab.app.evaluate import settings
    from diffusion_lab.evaluation import grid_points

    model = load_model(tiny_ckpts["toy"])
    guide = {"_target_": "diffusion_lab.build.autoguidance", "guide": str(smaller)}
    rows = [settings(with_overrides(model, guidance=guide, **{k: v for k, v in p.items() if v is not None}))
            for p in grid_points(steps=[2, 4], guidance_scale=[1.5, 3.0])]
    assert [(r["steps"], r["guidance"], r["guidance_scale"], r["nfe"]) for r in rows] == [
        (2, "autoguidance", 1.5, 4), (2, "autoguidance", 3.0, 4), (4, "autoguidance", 1.5, 8), (4, "autoguidance", 3.0, 8)]

"""Tests of the diffusers wrapper on a tiny random Stable-Diffusion-layout pipeline saved to disk (no network)."""

import time

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: E402

from diffusion_lab.core import ClassifierFreeGuidance, Sampler, sample_ddim  # noqa: E402
from diffusion_lab.core.schedules import sigma_from_alpha_bar  # noqa: E402
from diffusion_lab.errors import ConfigError  # noqa: E402
from diffusion_lab.pretrained import DiffusersDenoiser, text_to_image  # noqa: E402
from tests.helpers import MAX_TOKENS, tiny_pipeline  # noqa: E402



@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def saved(request, tmp_path_factory) -> tuple[str, StableDiffusionPipeline]:
    """(folder, pipeline): the pipeline written with save_pretrained and kept in memory for the reference loop."""
    pipe = tiny_pipeline(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    pipe.save_pretrained(folder)
    return str(folder), pipe


@pytest.fixture(scope="module")
def denoiser(saved) -> DiffusersDenoiser:
    return DiffusersDenoiser(saved[0])


def test_loads_components_and_schedule(denoiser, saved):
    pipe = saved[1]
    assert denoiser.input_dims == (4, 8, 8)  # 16x16 pixels, VAE downsampling 2
    assert denoiser.prediction == pipe.scheduler.config.prediction_type
    ab = pipe.scheduler.alphas_cumprod
    torch.testing.assert_close(denoiser.schedule.alpha_bar, ab, rtol=1e-5, atol=0)
    t = torch.tensor([0, 1, 500, 999])
    torch.testing.assert_close(denoiser.schedule.timestep(denoiser.schedule.sigmas[t]), t.float(), atol=1e-3, rtol=0)


def test_text_to_image_gives_finite_images(denoiser):
    g = torch.Generator().manual_seed(0)
    images = text_to_image(denoiser, ["a cat", "a dog"], sampler=Sampler(sample_ddim, steps=3), guidance_scale=7.5,
                           generator=g)
    assert images.shape == (2, 3, 16, 16)
    assert torch.isfinite(images).all() and images.abs().max() <= 1
    assert not torch.allclose(images[0], images[1])


def test_null_cond_is_the_negative_prompt(denoiser):
    cond = denoiser.encode_prompt(["a cat", "a dog"], ["blurry", "blurry"])  # (B, 2, L, D)
    assert cond.shape == (2, 2, MAX_TOKENS, 32)
    null = denoiser.null_cond(cond)
    torch.testing.assert_close(null[:, 0], denoiser.encode_prompt(["blurry"] * 2)[:, 0])
    plain = denoiser.null_cond(cond[:, 0])  # a (B, L, D) embedding: null is the empty prompt
    torch.testing.assert_close(plain, denoiser.encode_prompt([""] * 2)[:, 0])


def reference_ddim(pipe: StableDiffusionPipeline, text: torch.Tensor, noise: torch.Tensor, steps: int, scale: float):
    """The diffusers way: the pipeline's DDIMScheduler.step on its own timesteps, guidance as in the pipeline."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = pipe.unet(torch.cat([latents, latents]), t, encoder_hidden_states=text).sample
        out_u, out_c = out.chunk(2)
        latents = scheduler.step(out_u + scale * (out_c - out_u), t, latents).prev_sample
    return latents, scheduler


@torch.no_grad()
def test_core_ddim_matches_diffusers_scheduler(denoiser, saved):
    pipe, steps, scale = saved[1], 4, 3.0
    cond = denoiser.encode_prompt(["a cat", "a dog"], ["", "blurry"])  # (B, 2, L, D)
    noise = torch.randn((2, *denoiser.input_dims), generator=torch.Generator().manual_seed(1))  # (B, 4, 8, 8)
    text = torch.cat([cond[:, 1], cond[:, 0]])  # (2B, L, D): the pipeline's [uncond, cond] order
    expected, scheduler = reference_ddim(pipe, text, noise, steps, scale)
    # the same alpha_bar levels: the scheduler's timesteps, then its final_alpha_cumprod (= alphas_cumprod[0])
    ab = torch.cat([scheduler.alphas_cumprod[scheduler.timesteps], scheduler.final_alpha_cumprod.view(1)])
    sigmas = sigma_from_alpha_bar(ab.double())  # (steps + 1,) decreasing
    xt = noise * (1 + sigmas[0] ** 2).sqrt().float()  # the same initial noise in the sigma frame
    guidance = ClassifierFreeGuidance(scale, convention="uncond")
    *_, x = sample_ddim(denoiser, sigmas, eta=0.0, xt=xt, cond=cond, guidance=guidance)
    latents = x / (1 + sigmas[-1] ** 2).sqrt().float()  # back to the variance-preserving frame
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_forward_is_the_unet_output_as_eps_in_the_sigma_frame(denoiser, tmp_path):
    x0_pipe = tiny_pipeline("sample")  # an x0-predicting model besides the fixture's eps / v one
    x0_pipe.save_pretrained(tmp_path)
    for den in (denoiser, DiffusersDenoiser(str(tmp_path))):
        x = torch.randn((2, *den.input_dims), generator=torch.Generator().manual_seed(3)) * 4  # (B, 4, 8, 8)
        sigma, text = torch.tensor([3.0, 0.4]), den.encode_prompt(["a cat", "a dog"])[:, 0]  # (B,), (B, L, D)
        s = sigma.view(-1, 1, 1, 1)
        out = den.unet(x / (1 + s**2).sqrt(), den.schedule.timestep(sigma), encoder_hidden_states=text).sample
        # x = x0 + sigma eps and v = (eps - sigma x0) / sqrt(1 + sigma^2) (Salimans & Ho 2022) solved for eps
        eps = {"epsilon": out, "sample": (x - out) / s, "v_prediction": out / (1 + s**2).sqrt() + s * x / (1 + s**2)}
        torch.testing.assert_close(den(x, sigma, text), eps[den.prediction], atol=1e-5, rtol=1e-5)


def test_decode_uses_the_vae_scaling(denoiser, saved):
    vae = saved[1].vae
    z = torch.randn(1, *denoiser.input_dims, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(denoiser.decode(z), expected)


def test_unknown_hub_id_offline_is_a_config_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="nobody-here/no-such-model.*save_pretrained") as info:
        DiffusersDenoiser("nobody-here/no-such-model")
    assert "\n" not in str(info.value)
    assert time.perf_counter() - start < 20


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        DiffusersDenoiser(str(tmp_path / "absent"))


def test_bad_arguments_are_config_errors(saved):
    with pytest.raises(ConfigError, match="height=15"):
        DiffusersDenoiser(saved[0], height=15)
    with pytest.raises(ConfigError, match="dtype"):
        DiffusersDenoiser(saved[0], dtype="float8")

"""A pretrained diffusers latent-diffusion pipeline (Stable Diffusion layout) as a diffusion_lab denoiser.

The diffusers UNet works in the variance-preserving frame on integer timesteps; `DiffusersDenoiser`
presents it in the frame of the core samplers, x = x0 + sigma * eps, so any core sampler and
guidance drive it. diffusers and transformers are imported only when a pipeline is loaded.

    den = DiffusersDenoiser("path/to/folder_from_save_pretrained")
    images = text_to_image(den, ["a photo of a cat"], sampler=Sampler(sample_ddim, steps=50), guidance_scale=7.5)
"""

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffusion_lab.core.guidance import ClassifierFreeGuidance, Guidance
from diffusion_lab.core.objectives import PredEps, PredV, PredX0
from diffusion_lab.core.samplers import Generators, Sampler, sample_ddim
from diffusion_lab.core.schedules import Schedule, sigma_from_alpha_bar
from diffusion_lab.errors import CheckpointError, ConfigError, first_line

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
PREDICTIONS = {"epsilon": PredEps, "v_prediction": PredV, "sample": PredX0}  # diffusers' prediction_type


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.isabs(name) or name.count("/") > 1


def load_pipeline(pretrained: str, local_files_only: bool = True, dtype: str = "float32"):
    """The diffusers pipeline saved in folder `pretrained` (or a hub id already in the local cache)."""
    from diffusers import DiffusionPipeline  # optional dependency: imported on use

    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} must be one of {list(DTYPES)}")
    folder = os.path.expanduser(pretrained)
    is_folder = os.path.isdir(folder)
    if not is_folder and _looks_like_path(pretrained):
        raise ConfigError(f"pretrained={pretrained!r}: no such folder; pass a folder written by "
                          "pipeline.save_pretrained")
    try:
        pipe = DiffusionPipeline.from_pretrained(folder if is_folder else pretrained, local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        if is_folder:
            raise CheckpointError(f"pretrained={pretrained!r}: cannot load the pipeline in this folder "
                                  f"({type(err).__name__}: {first_line(err)})") from err
        raise ConfigError(f"pretrained={pretrained!r} is not a local folder and is not available offline "
                          f"({type(err).__name__}); pass a local folder made with save_pretrained") from err
    # cast after loading: from_pretrained's dtype argument is named differently across diffusers versions
    return pipe if dtype == "float32" else pipe.to(DTYPES[dtype])


def schedule_from_scheduler(scheduler) -> Schedule:
    """The training schedule of a diffusers scheduler: sigma_t = sqrt(1 / alpha_bar_t - 1) from its alphas_cumprod."""
    alpha_bar = getattr(scheduler, "alphas_cumprod", None)
    if alpha_bar is None:
        raise ConfigError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod "
                          "(not a DDPM-family schedule)")
    return Schedule(sigma_from_alpha_bar(torch.as_tensor(alpha_bar, dtype=torch.float64)))


class UNetAdapter(nn.Module):
    """A diffusers UNet as a network `net(x_vp, sigma, text)`: sigma -> its fractional training timestep.

    x_vp is the variance-preserving input and text the encoder hidden states (B, L, D); the raw
    output (eps, v or x0, by the pipeline's prediction_type) is returned in x_vp's dtype.
    """

    def __init__(self, unet: nn.Module, schedule: Schedule):
        super().__init__()
        self.unet, self.schedule = unet, schedule

    def forward(self, x_vp: Tensor, sigma: Tensor | float, text: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x_vp.device, dtype=x_vp.dtype).reshape(-1).expand(x_vp.shape[0])  # (B,)
        t = self.schedule.timestep(sigma).to(x_vp.device)  # (B,) fractional training timestep
        out = self.unet(x_vp.to(self.unet.dtype), t, encoder_hidden_states=text.to(self.unet.dtype)).sample
        return out.to(x_vp.dtype)


class DiffusersDenoiser(nn.Module):
    """A frozen Stable-Diffusion-layout pipeline as an eps-predictor `forward(x, sigma, cond)` in the sigma frame.

    The UNet, a `UNetAdapter` wrapped by the objective of its prediction_type (scaled_input), gets x_vp = x / sqrt(1 + sigma^2)
    at the fractional timestep `schedule.timestep(sigma)`; its eps, v (Salimans & Ho 2022) or x0 output is returned
    as eps. `cond` comes from `encode_prompt`: (B, 2, L, D) with the prompt's and the negative prompt's text
    embeddings, so `null_cond` needs no state and `ClassifierFreeGuidance(scale, convention="uncond")` is the usual
    text guidance (scale 7.5). A plain (B, L, D) embedding also works; its null is the empty prompt.
    height and width (pixels) default to the UNet's sample_size times the VAE's downsampling.
    """

    def __init__(self, pretrained: str, height: int | None = None, width: int | None = None,
                 local_files_only: bool = True, dtype: str = "float32") -> None:
        super().__init__()
        pipe = load_pipeline(pretrained, local_files_only, dtype)
        missing = [name for name in COMPONENTS if getattr(pipe, name, None) is None]
        if missing:
            raise ConfigError(f"pretrained={pretrained!r}: {type(pipe).__name__} lacks {missing}; "
                              f"need the Stable Diffusion layout {list(COMPONENTS)}")
        self.vae, self.text_encoder = pipe.vae, pipe.text_encoder
        self.tokenizer, self.scheduler = pipe.tokenizer, pipe.scheduler
        self.prediction = self.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"prediction_type={self.prediction!r} must be one of {list(PREDICTIONS)}")
        self.schedule = schedule_from_scheduler(self.scheduler)
        self.denoiser = PREDICTIONS[self.prediction](UNetAdapter(pipe.unet, self.schedule), scaled_input=True)
        self.input_dims = self._latent_dims(height, width)
        self.requires_grad_(False).eval()
        self.register_buffer("empty_embedding", self._embed([""]), persistent=False)  # (1, L, D)

    def _latent_dims(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = self.unet.config.sample_size * f
        height, width = height or side, width or side
        for name, value in (("height", height), ("width", width)):
            if value % f:
                raise ConfigError(f"{name}={value} must be a multiple of the VAE downsampling {f}")
        return (self.unet.config.in_channels, height // f, width // f)

    @property
    def unet(self) -> nn.Module:
        """The pipeline's UNet."""
        return self.denoiser.net.unet

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @torch.no_grad()
    def _embed(self, texts: Sequence[str]) -> Tensor:
        """Text-encoder hidden states (B, L, D) of `texts`, padded to the tokenizer's maximum length."""
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(self.device) if use_mask else None
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]

    def encode_prompt(self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None) -> Tensor:
        """cond (B, 2, L, D): [:, 0] embeds the prompts, [:, 1] the negative prompts (default empty)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negative = [""] * len(prompts) if negative_prompts is None else list(negative_prompts)
        if len(negative) != len(prompts):
            raise ConfigError(f"negative_prompts has {len(negative)} entries for {len(prompts)} prompts")
        return torch.stack([self._embed(prompts), self._embed(negative)], dim=1)

    def null_cond(self, cond: Tensor) -> Tensor:
        """The unconditional input shaped like cond: the negative prompt, or the empty prompt for a (B, L, D) cond."""
        if cond.ndim == 4:
            return cond[:, 1:2].expand_as(cond)
        return self.empty_embedding.to(cond.dtype).expand_as(cond)

    def rand_input(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal latents (batch_size, *input_dims)."""
        return torch.randn((batch_size, *self.input_dims), generator=generator, device=self.device)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """eps (B, c, h, w) of latents x at level sigma; cond: `encode_prompt`'s (B, 2, L, D), a (B, L, D) or None."""
        if cond is None:
            text = self.empty_embedding.expand(x.shape[0], -1, -1)  # (B, L, D)
        else:
            text = cond[:, 0] if cond.ndim == 4 else cond  # (B, L, D)
        return self.denoiser(x, sigma, text)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] from variance-preserving latents (the pipeline's own scaling)."""
        z = latents / self.vae.config.scaling_factor
        if self.vae.config.get("shift_factor") is not None:
            z = z + self.vae.config.shift_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample.float().clamp(-1, 1)


@torch.no_grad()
def text_to_image(denoiser: DiffusersDenoiser, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                  sampler: Sampler | None = None, guidance_scale: float = 7.5, generator: Generators = None) -> Tensor:
    """Text-to-image with a core sampler (default DDIM, 50 steps) and classifier-free guidance; images in [-1, 1]."""
    sampler = sampler or Sampler(sample_ddim, steps=50)
    cond = denoiser.encode_prompt(prompts, negative_prompts)  # (B, 2, L, D)
    guidance = Guidance() if guidance_scale == 1 else ClassifierFreeGuidance(guidance_scale, convention="uncond")
    x = None
    for x in sampler(denoiser, denoiser.schedule, batch_size=len(cond), cond=cond, guidance=guidance,
                     generator=generator):
        pass
    sigma_last = sampler.sigmas(denoiser.schedule)[-1].item()
    return denoiser.decode(x / (1 + sigma_last**2) ** 0.5)  # the pipeline decodes the variance-preserving latent

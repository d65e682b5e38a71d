"""Latent diffusion trained in stages (Rombach et al. 2022): a KL autoencoder, a denoiser on its latents, a classifier.

One run trains one stage, chosen by `mode`; the next stage starts from the last checkpoint of the one before
(`init_from`). configs/experiment/mnist_latent.yaml gives the recommended sequence:

    python train.py experiment=mnist_latent stage=reconstruction
    python train.py experiment=mnist_latent stage=diffusion init_from=outputs/mnist_latent/reconstruction/checkpoints/last.ckpt
    python train.py experiment=mnist_latent stage=joint init_from=outputs/mnist_latent/diffusion/checkpoints/last.ckpt
"""
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from diffusion_lab.models.weights import load_weights, read_checkpoint, strip_prefixes
from diffusion_lab.core import ClassifierGuidance, Guidance, Sampler, Schedule, diffusion_loss
from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.models.classifier import noisy_classification_loss
from diffusion_lab.models.vae import VAE
from diffusion_lab.sampling import SamplingSetup
from diffusion_lab.training.module import DiffusionModule, seed_device, step_seed
from diffusion_lab.utils import split_batch

# The parts each mode trains; the others are frozen (no gradients, eval mode).
TRAINED = {"reconstruction": ("vae",), "diffusion": ("model",), "classifier": ("classifier",),
           "joint": ("model", "classifier")}
PARTS_KEY = "latent_parts"  # checkpoint entry: the parts trained in this stage or an earlier one


class LatentDiffusionModule(DiffusionModule):
    """One stage of latent diffusion: `vae` on images, `model` (the denoiser) and `classifier` on its latents.

    mode: reconstruction trains the VAE (KL-regularised reconstruction loss); diffusion trains the denoiser on
    latents of the frozen VAE; classifier trains the noise-aware classifier on noised latents; joint trains both,
    on diffusion loss + classifier_weight * classifier cross-entropy. init_from: a checkpoint of an earlier
    stage; the parts it trained are loaded (the denoiser with its EMA weights when it has them). Every mode but
    reconstruction needs a trained VAE; a VAE whose scale_factor was never fitted is fitted on the validation
    images when training starts, so the denoiser sees unit-variance latents and the value is saved.
    classifier_scale > 0: validation samples use classifier guidance (Dhariwal & Nichol 2021) with this
    scale once the classifier is trained, on top of `guidance` (none or classifier-free).
    """

    def __init__(self, model: nn.Module, schedule: Schedule, sampler: Sampler, optimizer: Callable, vae: VAE,
                 classifier: nn.Module, mode: str = "reconstruction", init_from: str | None = None,
                 classifier_weight: float = 1.0, classifier_scale: float = 0.0,
                 lr_scheduler: Callable | None = None, guidance: Guidance | None = None, conditional: bool = False,
                 seed: int = 0, num_samples: int = 64, nonfinite: str = "error", max_skipped_steps: int = 10,
                 config: dict | None = None):
        super().__init__(model=model, schedule=schedule, sampler=sampler, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, guidance=guidance, conditional=conditional, seed=seed,
                         num_samples=num_samples, nonfinite=nonfinite, max_skipped_steps=max_skipped_steps,
                         config=config)
        if mode not in TRAINED:
            raise ConfigError(f"stage={mode!r} must be one of {list(TRAINED)}")
        for name, net in (("model", model), ("classifier", classifier)):
            if tuple(net.input_dims) != vae.latent_dims:
                raise ConfigError(f"module: the {name} takes inputs of shape {list(net.input_dims)} but the VAE "
                                  f"makes latents of shape {list(vae.latent_dims)}")
        self.vae, self.classifier = vae, classifier
        self.mode, self.classifier_weight = mode, classifier_weight
        self.trained_parts = self._load_stage(init_from) | set(TRAINED[mode])
        self.requires_grad_(False)
        for part in TRAINED[mode]:
            getattr(self, part).requires_grad_(True)
        if classifier_scale > 0 and "classifier" in self.trained_parts:
            self.guidance = ClassifierGuidance(classifier, classifier_scale, base=self.guidance)

    def _load_stage(self, init_from: str | None) -> set[str]:
        """Loads the parts an earlier stage trained from its checkpoint; returns their names."""
        if init_from is None:
            if self.mode != "reconstruction":
                raise ConfigError(f"stage={self.mode} needs init_from=PATH, the last.ckpt of a run whose VAE is "
                                  "trained (run stage=reconstruction first)")
            return set()
        path = Path(init_from)
        try:
            ckpt = read_checkpoint(path)
            parts = ckpt.get(PARTS_KEY)
            if parts is None:
                raise CheckpointError(f"ckpt={path}: not a latent-diffusion checkpoint (no {PARTS_KEY}); use a "
                                      "last.ckpt of an earlier stage of this experiment")
            if self.mode != "reconstruction" and "vae" not in parts:
                raise CheckpointError(f"ckpt={path}: its VAE was never trained (trained parts: {parts})")
            for part in parts:
                if part == "model" and "ema_state_dict" in ckpt:
                    state = strip_prefixes(ckpt["ema_state_dict"])
                else:
                    state = strip_prefixes(ckpt["state_dict"], part + ".")
                load_weights(getattr(self, part), state, path)
        except CheckpointError as err:
            raise CheckpointError(f"init_from: {err}") from None
        return set(parts)

    def train(self, mode: bool = True) -> "LatentDiffusionModule":
        super().train(mode)
        for part in {"vae", "model", "classifier"} - set(TRAINED[self.mode]):
            getattr(self, part).eval()  # frozen parts never see dropout or label dropout
        return self

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule  # its shape against the VAE's is checked where both are built (app.train)
        if data is None:
            return
        if "classifier" in TRAINED[self.mode] and data.num_classes != self.classifier.num_classes:
            raise ConfigError(f"stage={self.mode} needs labelled data with module.classifier.num_classes="
                              f"{self.classifier.num_classes} classes; data.num_classes={data.num_classes}")

    def on_fit_start(self) -> None:
        # scale_factor starts at exactly 1 and a fitted one is never exactly 1: fit it once, then keep it.
        data = self.trainer.datamodule
        if self.mode != "reconstruction" and self.vae.scale_factor.item() == 1.0 and data is not None:
            generator = torch.Generator(self.device).manual_seed(self.seed)
            scale = self.vae.fit_scale_factor(data.val_dataloader(), generator)
            rank_zero_info(f"latent scale factor fitted on the validation images: {scale:.4f}")

    def losses(self, x0: Tensor, labels: Tensor | None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The mode's loss terms on images x0 (B, C, H, W); `loss` is the one minimized."""
        if self.mode == "reconstruction":
            loss, recon_mse, kl = self.vae.loss(x0, generator)
            return {"loss": loss, "recon_mse": recon_mse, "kl": kl}
        with torch.no_grad():
            z0 = self.vae.sample_latent(x0, generator)  # (B, c, h, w), about unit variance
        terms = {}
        if "model" in TRAINED[self.mode]:
            cond = labels if self.conditional else None
            terms["diffusion_loss"] = diffusion_loss(self.model, z0, self.schedule, cond, generator)
        if "classifier" in TRAINED[self.mode]:
            terms["classifier_loss"], terms["accuracy"] = noisy_classification_loss(
                self.classifier, z0, labels, self.schedule, generator)
        if self.mode == "joint":
            terms["loss"] = terms["diffusion_loss"] + self.classifier_weight * terms["classifier_loss"]
        else:
            terms["loss"] = terms.get("diffusion_loss", terms.get("classifier_loss"))
        return terms

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x0, labels = split_batch(batch)  # (B, C, H, W), (B,) or None
        seed_device(x0.device, step_seed(self.seed, self.global_step, self.global_rank, batch_idx))
        terms = self.losses(x0, labels)
        if self.logs_this_step():
            self.log_dict({f"train/{k}": v for k, v in terms.items()}, on_step=True, on_epoch=False)
        return terms["loss"]

    def trained_parameters(self) -> list[nn.Parameter]:
        return [p for part in TRAINED[self.mode] for p in getattr(self, part).parameters()]

    def validation_step(self, batch, batch_idx: int) -> None:
        x0, labels = split_batch(batch)  # (B, C, H, W), (B,) or None
        generator = torch.Generator(x0.device).manual_seed(step_seed(self.seed, batch_idx, -1))
        terms = self.losses(x0, labels, generator)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)
        if batch_idx == 0:
            self._reference = x0[: max(self.num_samples, 1)]

    def on_validation_epoch_end(self) -> None:
        """Reconstructions beside their originals (reconstruction), else images decoded from sampled latents."""
        if self.mode != "reconstruction":
            if self.can_sample:
                super().on_validation_epoch_end()  # sampling_setup() decodes
            return
        ref = getattr(self, "_reference", None)
        if not self.trainer.sanity_checking and self.num_samples > 0 and ref is not None:
            self.last_samples = self.reconstructions(ref)

    @property
    def can_sample(self) -> bool:
        """A denoiser trained in this stage or an earlier one, on a trained VAE."""
        return self.mode != "reconstruction" and "model" in self.trained_parts

    def sampling_setup(self) -> SamplingSetup:
        """The denoiser on latents, and the VAE's decoder to images in [-1, 1]."""
        return dataclasses.replace(super().sampling_setup(), decode=lambda z: self.vae.decode(z).clamp(-1, 1))

    @torch.no_grad()
    def reconstructions(self, x0: Tensor) -> Tensor:
        """Each image (B, C, H, W) with its reconstruction from the posterior mean on its right: (B, C, H, 2W)."""
        x_hat = self.vae.decode(self.vae.mean_latent(x0)).clamp(-1, 1)
        return torch.cat([x0, x_hat], dim=-1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[PARTS_KEY] = sorted(self.trained_parts)

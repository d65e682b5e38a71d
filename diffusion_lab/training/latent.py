"""Latent diffusion trained in stages (Rombach et al. 2022): a KL autoencoder, a denoiser on its latents, a classifier.

One run trains one stage, chosen by `stage`; the next stage starts from the last checkpoint of the one before
(`init_from`). configs/experiment/mnist_latent.yaml gives the recommended sequence:

    python train.py experiment=mnist_latent stage=reconstruction
    python train.py experiment=mnist_latent stage=diffusion init_from=outputs/mnist_latent/reconstruction/checkpoints/last.ckpt
    python train.py experiment=mnist_latent stage=joint init_from=outputs/mnist_latent/diffusion/checkpoints/last.ckpt
"""
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from diffusion_lab.checkpoints import PARTS_KEY, load_weights, read_checkpoint, weights
from diffusion_lab.core import ClassifierGuidance, Guidance, Sampler, Schedule, diffusion_loss
from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.models.classifier import noisy_classification_loss
from diffusion_lab.models.vae import VAE
from diffusion_lab.sampling import DiffusionModel, Samples
from diffusion_lab.training.module import DiffusionModule, seed_device, step_seed
from diffusion_lab.utils import split_batch

# The parts each stage trains; the others are frozen (no gradients, eval mode).
TRAINED = {"reconstruction": ("vae",), "diffusion": ("objective",), "classifier": ("classifier",),
           "joint": ("objective", "classifier")}


class LatentDiffusionModule(DiffusionModule):
    """One stage of latent diffusion: `vae` on images, `objective` (the denoiser) and `classifier` on its latents.

    stage: reconstruction trains the VAE (KL-regularised reconstruction loss); diffusion trains the denoiser on
    latents of the frozen VAE; classifier trains the noise-aware classifier on noised latents; joint trains both,
    on diffusion loss + classifier_weight * classifier cross-entropy. init_from: a checkpoint of an earlier
    stage; the parts it trained are loaded (the denoiser with its EMA weights when it has them). Every stage but
    reconstruction needs a trained VAE; a VAE whose scale_factor was never fitted is fitted on the validation
    images when training starts, so the denoiser sees unit-variance latents and the value is saved.
    classifier_scale > 0: validation samples use classifier guidance (Dhariwal & Nichol 2021) with this
    scale once the classifier is trained, on top of `guidance` (none or classifier-free).
    """

    def __init__(self, objective: nn.Module, schedule: Schedule, sampler: Sampler, optimizer: Callable, vae: VAE,
                 classifier: nn.Module, stage: str = "reconstruction", init_from: str | None = None,
                 classifier_weight: float = 1.0, classifier_scale: float = 0.0,
                 lr_scheduler: Callable | None = None, guidance: Guidance | None = None, seed: int = 0,
                 num_samples: int = 512, sample_batch_size: int = 256, nonfinite: str = "error",
                 max_skipped_steps: int = 10, train_config: dict | None = None):
        super().__init__(objective=objective, schedule=schedule, sampler=sampler, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, guidance=guidance, seed=seed, num_samples=num_samples,
                         sample_batch_size=sample_batch_size, nonfinite=nonfinite,
                         max_skipped_steps=max_skipped_steps, train_config=train_config)
        if stage not in TRAINED:
            raise ConfigError(f"stage={stage!r} must be one of {list(TRAINED)}")
        for name, net in (("model", objective), ("classifier", classifier)):
            if tuple(net.input_dims) != vae.latent_dims:
                raise ConfigError(f"module: the {name} takes inputs of shape {list(net.input_dims)} but the VAE "
                                  f"makes latents of shape {list(vae.latent_dims)}")
        self.vae, self.classifier = vae, classifier
        self.stage, self.classifier_weight = stage, classifier_weight
        self.trained_parts = self._load_stage(init_from) | set(TRAINED[stage])
        self.requires_grad_(False)
        for part in TRAINED[stage]:
            getattr(self, part).requires_grad_(True)
        if classifier_scale > 0 and "classifier" in self.trained_parts:
            self.guidance = ClassifierGuidance(classifier, classifier_scale, base=self.guidance)

    def _load_stage(self, init_from: str | None) -> set[str]:
        """Loads the parts an earlier stage trained from its checkpoint; returns their names."""
        if init_from is None:
            if self.stage != "reconstruction":
                raise ConfigError(f"stage={self.stage} needs init_from=PATH, the last.ckpt of a run whose VAE is "
                                  "trained (run stage=reconstruction first)")
            return set()
        path = Path(init_from)
        try:
            ckpt = read_checkpoint(path)
            parts = ckpt.get(PARTS_KEY)
            if parts is None:
                raise CheckpointError(f"ckpt={path}: not a latent-diffusion checkpoint (no {PARTS_KEY}); use a "
                                      "last.ckpt of an earlier stage of this experiment")
            if self.stage != "reconstruction" and "vae" not in parts:
                raise CheckpointError(f"ckpt={path}: its VAE was never trained (trained parts: {parts})")
            for part in parts:
                load_weights(getattr(self, part), weights(ckpt, part, ema=True), path)
        except CheckpointError as err:
            raise CheckpointError(f"init_from: {err}") from None
        return set(parts)

    def train(self, mode: bool = True) -> "LatentDiffusionModule":
        super().train(mode)
        for part in {"vae", "objective", "classifier"} - set(TRAINED[self.stage]):
            getattr(self, part).eval()  # frozen parts never see dropout or label dropout
        return self

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule  # its shape against the VAE's is checked where both are built (app.train)
        if data is None:
            return
        if "classifier" in TRAINED[self.stage] and data.num_classes != self.classifier.num_classes:
            raise ConfigError(f"stage={self.stage} needs labelled data of the classifier's "
                              f"{self.classifier.num_classes} classes; the data has {data.num_classes}")

    def on_fit_start(self) -> None:
        # scale_factor starts at exactly 1 and a fitted one is never exactly 1: fit it once, then keep it.
        data = self.trainer.datamodule
        if self.stage != "reconstruction" and self.vae.scale_factor.item() == 1.0 and data is not None:
            generator = torch.Generator(self.device).manual_seed(self.seed)
            scale = self.vae.fit_scale_factor(data.val_dataloader(), generator)
            rank_zero_info(f"latent scale factor fitted on the validation images: {scale:.4f}")

    def losses(self, x0: Tensor, labels: Tensor | None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The stage's loss terms on images x0 (B, C, H, W); `loss` is the one minimized."""
        if self.stage == "reconstruction":
            loss, recon_mse, kl = self.vae.loss(x0, generator)
            return {"loss": loss, "recon_mse": recon_mse, "kl": kl}
        with torch.no_grad():
            z0 = self.vae.sample_latent(x0, generator)  # (B, c, h, w), about unit variance
        terms = {}
        if "objective" in TRAINED[self.stage]:
            cond = labels if self.objective.num_classes else None
            terms["diffusion_loss"] = diffusion_loss(self.objective, z0, self.schedule, cond, generator)
        if "classifier" in TRAINED[self.stage]:
            terms["classifier_loss"], terms["accuracy"] = noisy_classification_loss(
                self.classifier, z0, labels, self.schedule, generator)
        if self.stage == "joint":
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
        return [p for part in TRAINED[self.stage] for p in getattr(self, part).parameters()]

    def validation_step(self, batch, batch_idx: int) -> None:
        x0, labels = split_batch(batch)  # (B, C, H, W), (B,) or None
        generator = torch.Generator(x0.device).manual_seed(step_seed(self.seed, batch_idx, -1))
        terms = self.losses(x0, labels, generator)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)

    def draw_validation_samples(self) -> Samples | None:
        """Images decoded from sampled latents; in stage reconstruction, the first validation batch's images with their
        reconstructions beside them; None when there is nothing to sample from yet."""
        if self.stage == "reconstruction":
            x0, _ = split_batch(next(iter(self.trainer.datamodule.val_dataloader())))
            x = self.reconstructions(x0[: self.num_samples].to(self.device)).cpu()
            return Samples(x=x, labels=None, indices=torch.arange(len(x)))
        return super().draw_validation_samples() if self.can_sample else None

    @property
    def can_sample(self) -> bool:
        """A denoiser trained in this stage or an earlier one, on a trained VAE."""
        return self.stage != "reconstruction" and "objective" in self.trained_parts

    def diffusion_model(self) -> DiffusionModel:
        """The denoiser on latents, which the VAE decodes to images."""
        return super().diffusion_model().replace(vae=self.vae, classifier=self.classifier)

    @torch.no_grad()
    def reconstructions(self, x0: Tensor) -> Tensor:
        """Each image (B, C, H, W) with its reconstruction from the posterior mean on its right: (B, C, H, 2W)."""
        return torch.cat([x0, self.vae.decode_images(self.vae.mean_latent(x0))], dim=-1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[PARTS_KEY] = sorted(self.trained_parts)

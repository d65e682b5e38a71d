"""Denoiser networks sharing one forward contract: `net(x, sigma, cond=None)` returns a tensor shaped like x."""

from diffusion_lab.models.base import DenoiserNet, SigmaEmbedding
from diffusion_lab.models.classifier import NoiseAwareClassifier, noisy_classification_loss
from diffusion_lab.models.dit import DiT
from diffusion_lab.models.ideal import IdealDenoiser
from diffusion_lab.models.mlp import ConditionalMLP, TimeInputMLP
from diffusion_lab.models.toy_unet import ToyUNet
from diffusion_lab.models.unet import Unet
from diffusion_lab.models.vae import VAE

__all__ = [
    "ConditionalMLP",
    "DenoiserNet",
    "DiT",
    "IdealDenoiser",
    "NoiseAwareClassifier",
    "SigmaEmbedding",
    "TimeInputMLP",
    "ToyUNet",
    "Unet",
    "VAE",
    "noisy_classification_loss",
]

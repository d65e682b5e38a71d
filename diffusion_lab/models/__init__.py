"""Denoiser networks sharing one forward contract: `net(x, sigma, cond=None)` returns a tensor shaped like x."""

from diffusion_lab.models.base import DenoiserNet, SigmaEmbedding
from diffusion_lab.models.dit import DiT
from diffusion_lab.models.ideal import IdealDenoiser
from diffusion_lab.models.mlp import ConditionalMLP, TimeInputMLP
from diffusion_lab.models.toy_unet import ToyUNet
from diffusion_lab.models.unet import Unet

__all__ = [
    "ConditionalMLP",
    "DenoiserNet",
    "DiT",
    "IdealDenoiser",
    "SigmaEmbedding",
    "TimeInputMLP",
    "ToyUNet",
    "Unet",
]

"""Torch data sets: toy point clouds generated in code and image sets (MNIST, FashionMNIST, CIFAR10, Digits, folders,
Hugging Face `datasets`).

Every set has `num_classes` (0 when unlabelled) and `input_dims`, returns `x` or `(x, y)` per item,
and a whole batch from `get_batch(indices)` (the framework's data module fetches batches with it).
"""

from diffusion_lab.data.base import InMemoryDataset
from diffusion_lab.data.folder import IMAGE_EXTENSIONS, ImageFolder
from diffusion_lab.data.hf import HFImageDataset
from diffusion_lab.data.images import CIFAR10, MNIST, Digits, FashionMNIST, ImageTensorDataset
from diffusion_lab.data.toy import GaussianMixture, Sinusoid, Swissroll, Swissroll3D, TreeDataset

__all__ = [
    "CIFAR10",
    "IMAGE_EXTENSIONS",
    "MNIST",
    "Digits",
    "FashionMNIST",
    "GaussianMixture",
    "HFImageDataset",
    "ImageFolder",
    "ImageTensorDataset",
    "InMemoryDataset",
    "Sinusoid",
    "Swissroll",
    "Swissroll3D",
    "TreeDataset",
]

"""Image data sets (MNIST, FashionMNIST, CIFAR10, scikit-learn's Digits), all returned in [-1, 1] as (C, H, W).

Images stay in memory (uint8 where the source is uint8) and are converted per batch in
`get_batch`: to float in [-1, 1], to `channels` (1 -> 3 repeats the grey channel, 3 -> 1 takes the
ITU-R 601 luma), bilinearly resized to `image_size`, and randomly flipped left-right if `hflip`.
The flip uses torch's global RNG on purpose: DataLoader seeds it differently in each worker,
whereas a local generator would be copied into every worker and flip the same way in all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from diffusion_lab.data.base import InMemoryDataset, check_choice, check_int
from diffusion_lab.data.idx import load_idx_split
from diffusion_lab.errors import DataError

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights of PIL's convert("L")
DIGITS_TEST_FRACTION = 0.1
DIGITS_SPLIT_SEED = 0  # fixed, so "train" and "test" never overlap whatever the run's seed


def check_image_args(image_size: int, channels: int) -> None:
    """Raise ConfigError unless image_size >= 1 and channels is 1 or 3."""
    check_int("image_size", image_size, 1)
    check_choice("channels", channels, (1, 3))


def square_pixels(image, image_size: int, channels: int) -> torch.Tensor:
    """A PIL image as uint8 (channels, image_size, image_size): converted to L or RGB, shorter side resized to
    image_size, then centre-cropped."""
    pixels = TF.pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))  # (C, H, W)
    return TF.center_crop(TF.resize(pixels, [image_size], antialias=True), [image_size, image_size])


def standardise_images(x: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] images (B, C, H, W) -> float32 [-1, 1] (B, channels, image_size, image_size)."""
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and channels == 1:
        x = torch.einsum("bchw,c->bhw", x, x.new_tensor(LUMA)).unsqueeze(1)  # (B, 1, H, W)
    if x.shape[-2:] != (image_size, image_size):
        x = TF.resize(x, [image_size, image_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        x = x.clamp(-1.0, 1.0)
    return x.contiguous()


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    """Flip each image of the batch (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5  # (B,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class ImageTensorDataset(InMemoryDataset):
    """Labelled images held in memory as `data` (N, C, H, W), returned as float32 in [-1, 1].

    Items have shape `input_dims` = (channels, image_size, image_size).
    """

    def __init__(
        self, data: torch.Tensor, labels: torch.Tensor, num_classes: int, image_size: int, channels: int, hflip: bool
    ) -> None:
        check_image_args(image_size, channels)
        super().__init__(data, labels, num_classes)
        self.image_size, self.channels, self.hflip = image_size, channels, bool(hflip)
        self.input_dims = (channels, image_size, image_size)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Convert a batch of stored images to the model's range, channels and size; flip if `hflip`."""
        x = standardise_images(x, self.image_size, self.channels)
        return random_hflip(x) if self.hflip else x


class MNIST(ImageTensorDataset):
    """MNIST handwritten digits (28x28 grey, 10 classes) read from the original IDX files.

    The files of `split` ("train": 60,000 images, "test": 10,000) are looked up, gzip'd or not, in
    `root` and in torchvision's layout `root/MNIST/raw`. If they are missing and `download`, torchvision
    downloads them into `root/MNIST/raw`; otherwise a one-line DataError says which files to put where.
    """

    source_name = "MNIST"  # torchvision class and folder name

    def __init__(
        self,
        root: str = "data",
        split: str = "train",
        image_size: int = 28,
        channels: int = 1,
        hflip: bool = False,
        download: bool = True,
    ) -> None:
        check_choice("split", split, ("train", "test"))
        check_image_args(image_size, channels)
        self.root, self.split = Path(root).expanduser().absolute(), split
        images, labels = load_idx_split(self.root, self.source_name, split, download)
        if labels.size and labels.max() >= 10:
            raise DataError(f"{self.source_name} {split} labels must be 0..9, found {int(labels.max())}")
        images_t = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 28, 28) uint8
        super().__init__(images_t, torch.from_numpy(labels), 10, image_size, channels, hflip)


class FashionMNIST(MNIST):
    """Zalando's Fashion-MNIST (28x28 grey clothing, 10 classes): MNIST's file names and format.

    Files are looked up in `root` and in `root/FashionMNIST/raw`.
    """

    source_name = "FashionMNIST"


class CIFAR10(ImageTensorDataset):
    """CIFAR-10 (32x32 colour, 10 classes; 50,000 train / 10,000 test) through torchvision.

    Expects the folder `cifar-10-batches-py` in `root`; torchvision downloads and checks it on first
    use when online and `download` is true.
    """

    def __init__(
        self,
        root: str = "data",
        split: str = "train",
        image_size: int = 32,
        channels: int = 3,
        hflip: bool = False,
        download: bool = True,
    ) -> None:
        check_choice("split", split, ("train", "test"))
        check_image_args(image_size, channels)
        self.root, self.split = Path(root).expanduser().absolute(), split
        try:
            source = torchvision.datasets.CIFAR10(str(self.root), train=split == "train", download=download)
        except (RuntimeError, OSError) as err:
            why = " ".join(str(err).split())[:300] if download else "download=False"
            raise DataError(
                f"CIFAR10 split {split!r} not found or corrupt: expected the folder cifar-10-batches-py in "
                f"{self.root} (torchvision downloads it on first use when online, with download=True; {why})"
            ) from None
        images = torch.from_numpy(source.data).permute(0, 3, 1, 2)  # (N, 3, 32, 32) uint8
        labels = torch.as_tensor(source.targets, dtype=torch.int64)
        super().__init__(images, labels, 10, image_size, channels, hflip)


def digits_split_indices(split: str, n: int) -> np.ndarray:
    """Sorted indices of a fixed split of n items: "test" is a seeded 10%, "train" the rest, "all" everything."""
    if split == "all":
        return np.arange(n)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(n)
    n_test = round(DIGITS_TEST_FRACTION * n)
    return np.sort(order[:n_test] if split == "test" else order[n_test:])


class Digits(ImageTensorDataset):
    """scikit-learn's bundled handwritten digits (8x8 grey, 17 levels, 10 classes): a real image set that works offline.

    Splits: "train" (1,617 images), "test" (a fixed held-out 10%: 180 images) and "all" (1,797).
    Pixels 0..16 map linearly to [-1, 1]; resizing to `image_size` (bilinear) is done once, up front.
    """

    def __init__(self, image_size: int = 8, channels: int = 1, hflip: bool = False, split: str = "train") -> None:
        check_choice("split", split, ("train", "test", "all"))
        check_image_args(image_size, channels)
        from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import

        bunch = load_digits()
        keep = digits_split_indices(split, len(bunch.target))
        images = torch.from_numpy(bunch.images[keep]).unsqueeze(1) / 8.0 - 1.0  # (N, 1, 8, 8)
        images = standardise_images(images.float(), image_size, channels)
        super().__init__(images, torch.from_numpy(bunch.target[keep]), 10, image_size, channels, hflip)
        self.split = split

"""A data set over any folder of image files, with or without class sub-folders."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from diffusion_lab.data.images import check_image_args, random_hflip, square_pixels, standardise_images
from diffusion_lab.errors import DataError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def image_files(folder: Path, recursive: bool) -> list[Path]:
    """Sorted image files in `folder` (and its sub-folders if `recursive`), skipping hidden ones."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in entries
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of an image folder; class mode if any non-hidden sub-folder holds images."""
    accepted = ", ".join(IMAGE_EXTENSIONS)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: expected a folder of images ({accepted}) or class sub-folders")
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    per_class = [(d.name, image_files(d, recursive=True)) for d in class_dirs]
    per_class = [(name, files) for name, files in per_class if files]
    if per_class:
        files = [f for _, class_files in per_class for f in class_files]
        labels = [k for k, (_, class_files) in enumerate(per_class) for _ in class_files]
        return files, labels, [name for name, _ in per_class]
    files = image_files(root, recursive=False)
    if not files:
        raise DataError(f"image folder {root} holds no images: expected files ({accepted}) in it or in sub-folders")
    return files, [], []


class ImageFolder(Dataset):
    """Images from a folder, center-cropped and resized to `image_size`, returned in [-1, 1] as (C, H, W).

    With class sub-folders (sorted by name; each searched recursively) the label is the sub-folder's
    index and `num_classes` their count; image files next to the sub-folders are then ignored. A flat
    folder of images has no labels (`num_classes` 0). Images are decoded from disk on every access.
    """

    def __init__(self, root: str, image_size: int = 32, channels: int = 3, hflip: bool = False) -> None:
        check_image_args(image_size, channels)
        self.root = Path(root).expanduser().absolute()
        self.files, labels, self.classes = scan_image_folder(self.root)
        self.labels = torch.as_tensor(labels, dtype=torch.int64) if self.classes else None
        self.num_classes = len(self.classes)
        self.image_size, self.channels, self.hflip = image_size, channels, bool(hflip)
        self.input_dims = (channels, image_size, image_size)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """Decode file `index` as uint8 (C, image_size, image_size): shorter side resized, then center-cropped."""
        path = self.files[index]
        try:
            with Image.open(path) as image:
                return square_pixels(image, self.image_size, self.channels)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's ways to fail a file
            why = str(err).replace(f" {str(path)!r}", "").strip().split("\n")[0] or type(err).__name__
            raise DataError(f"cannot read image {path} ({why})") from None

    def get_batch(self, indices: list[int]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([self.load(i) for i in indices])  # (B, C, S, S) uint8
        x = standardise_images(x, self.image_size, self.channels)
        x = random_hflip(x) if self.hflip else x
        if self.labels is None:
            return x
        return x, self.labels[torch.as_tensor(indices, dtype=torch.long)]

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch = self.get_batch([index])
        if self.labels is None:
            return batch[0]
        return batch[0][0], batch[1][0]

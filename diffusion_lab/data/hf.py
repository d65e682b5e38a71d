"""Hugging Face `datasets` image sets: a Hub name, a folder saved with save_to_disk, parquet files or an image folder.

    HFImageDataset("mnist", image_column="image", label_column="label", image_size=28, channels=1)   # from the Hub
    HFImageDataset("parquet", data_files="train/*.parquet", image_size=32)                           # offline
    HFImageDataset("imagefolder", data_dir="my_images", label_column="label")                        # class folders
    HFImageDataset("path/written/by/save_to_disk", from_disk=True)

Images are decoded once, resized (shorter side) and centre-cropped to `image_size`, and kept in memory as uint8 when
they fit in `max_memory_gib`; larger sets are decoded per batch. Needs the `datasets` package (`pip install
"diffusion_lab[hf]"`); it is imported only when such a set is built.
"""
import torch

from diffusion_lab.data.base import InMemoryDataset
from diffusion_lab.data.images import check_image_args, random_hflip, square_pixels, standardise_images
from diffusion_lab.errors import DataError, first_line


def load_hf(path: str, name: str | None, split: str, data_dir: str | None, data_files, from_disk: bool):
    """The split of a `datasets` data set, loaded by `datasets.load_dataset` or `load_from_disk`."""
    try:
        import datasets
    except ImportError:
        raise DataError('data=hf needs the datasets package, which is not installed: pip install "diffusion_lab[hf]"') \
            from None
    try:
        if from_disk:
            loaded = datasets.load_from_disk(path)
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(path, name, split=split, data_dir=data_dir, data_files=data_files)
    except (FileNotFoundError, ValueError, KeyError, ConnectionError, OSError) as err:
        raise DataError(f"Hugging Face data set {path!r} (split {split!r}): cannot load it ({first_line(err)})") \
            from None


class HFImageDataset(InMemoryDataset):
    """Images (and labels) of a Hugging Face `datasets` split, returned in [-1, 1] as (channels, image_size,
    image_size); labels from `label_column` (None: unlabelled), their count from the column's ClassLabel feature or,
    failing that, the largest label + 1."""

    def __init__(self, path: str, split: str = "train", image_column: str = "image", label_column: str | None = None,
                 image_size: int = 32, channels: int = 3, hflip: bool = False, name: str | None = None,
                 data_dir: str | None = None, data_files=None, from_disk: bool = False,
                 max_memory_gib: float = 4.0) -> None:
        check_image_args(image_size, channels)
        self.source = load_hf(path, name, split, data_dir, data_files, from_disk)
        missing = [c for c in (image_column, label_column) if c is not None and c not in self.source.column_names]
        if missing:
            raise DataError(f"Hugging Face data set {path!r}: no column {missing[0]!r}; its columns are "
                            f"{self.source.column_names}")
        self.image_column, self.image_size, self.channels, self.hflip = image_column, image_size, channels, hflip
        labels = None if label_column is None else torch.as_tensor(self.source[label_column], dtype=torch.int64)
        num_classes = 0 if labels is None else self._count(label_column, labels)
        self.in_memory = len(self.source) * channels * image_size**2 <= max_memory_gib * 2**30
        images = self._decode(range(len(self.source))) if self.in_memory else torch.empty(len(self.source), 0)
        super().__init__(images, labels, num_classes)
        self.input_dims = (channels, image_size, image_size)

    def _count(self, column: str, labels: torch.Tensor) -> int:
        feature = self.source.features[column]
        return getattr(feature, "num_classes", None) or (int(labels.max()) + 1 if len(labels) else 0)

    def _decode(self, indices) -> torch.Tensor:
        """uint8 images (B, channels, image_size, image_size): shorter side resized, then centre-cropped."""
        out = [square_pixels(self.source[int(i)][self.image_column], self.image_size, self.channels) for i in indices]
        return torch.stack(out) if out else torch.empty(0, self.channels, self.image_size, self.image_size)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        x = standardise_images(x, self.image_size, self.channels)
        return random_hflip(x) if self.hflip else x

    def get_batch(self, indices: list[int]):
        if self.in_memory:
            return super().get_batch(indices)
        x = self.transform(self._decode(indices))  # (B, C, S, S)
        return x if self.labels is None else (x, self.labels[torch.as_tensor(indices, dtype=torch.long)])

    def __getitem__(self, index: int):
        batch = self.get_batch([index])
        return batch[0] if self.labels is None else (batch[0][0], batch[1][0])

"""Finding and reading the IDX files of MNIST-format data sets (MNIST, FashionMNIST), gzip'd or not.

IDX (LeCun's format): a big-endian magic number 0x0000TTNN (TT = 0x08 for uint8, NN = number of
dimensions), NN big-endian uint32 sizes, then the payload. Only the files of the requested split
are needed, so a partial copy holding just the t10k files serves split="test".
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torchvision

from diffusion_lab.errors import DataError

IDX_UINT8 = 0x08
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an uint8 IDX file with `ndim` dimensions; DataError naming the file if it is corrupt or truncated."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    header = 4 * (ndim + 1)
    expected_magic = (IDX_UINT8 << 8) | ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected_magic:
        found = "a file shorter than 4 bytes" if magic is None else f"magic number {magic:#010x}"
        raise DataError(f"{path} is not a {ndim}-d uint8 IDX file: expected magic {expected_magic:#010x}, got {found}")
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
    shape = tuple(int.from_bytes(raw[4 * k : 4 * k + 4], "big") for k in range(1, ndim + 1))
    if len(raw) - header != math.prod(shape):
        raise DataError(
            f"{path} is truncated or corrupt: header says shape {shape} ({math.prod(shape)} bytes) "
            f"but {len(raw) - header} bytes follow"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def split_folders(root: Path, name: str) -> list[Path]:
    """Folders searched for a split's files: root itself, then torchvision's layout root/<name>/raw."""
    return [root, root / name / "raw"]


def find_file(folders: list[Path], stem: str) -> Path | None:
    """First of folder/stem or folder/stem.gz that exists, over `folders` in order."""
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def download_with_torchvision(root: Path, name: str, split: str) -> str | None:
    """Let torchvision download data set `name` into root/<name>/raw; return why it failed, or None."""
    try:
        getattr(torchvision.datasets, name)(str(root), train=split == "train", download=True)
    except (RuntimeError, OSError) as err:
        return " ".join(str(err).split())[:300] or type(err).__name__
    return None


def missing_message(name: str, split: str, missing: list[str], folders: list[Path], why: str) -> str:
    """One line that says which files to put where."""
    files = " and ".join(f"{stem}.gz" for stem in missing)
    where = " or ".join(str(f) for f in folders)
    return f"{name} split {split!r} not found: put {files} in {where} ({why})"


def load_idx_split(root: Path, name: str, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) uint8 of one split, downloading them if allowed and missing."""
    folders = split_folders(root, name)
    paths = [find_file(folders, stem) for stem in SPLIT_FILES[split]]
    why = "download=False; with download=True torchvision fetches them when online"
    if None in paths and download:
        failure = download_with_torchvision(root, name, split)
        why = f"download failed: {failure}" if failure else "download finished but the files are still missing"
        paths = [find_file(folders, stem) for stem in SPLIT_FILES[split]]
    if None in paths:
        missing = [stem for stem, path in zip(SPLIT_FILES[split], paths) if path is None]
        raise DataError(missing_message(name, split, missing, folders, why))
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels")
    return images, labels

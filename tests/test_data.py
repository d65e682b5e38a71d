"""Tests of diffusion_lab.data: toy sets, IDX reading, image sets and image folders (CPU, offline)."""

from __future__ import annotations

import math

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from diffusion_lab.data import (
    CIFAR10,
    MNIST,
    Digits,
    FashionMNIST,
    GaussianMixture,
    ImageFolder,
    Sinusoid,
    Swissroll,
    Swissroll3D,
    TreeDataset,
)
from diffusion_lab.data.images import digits_split_indices
from diffusion_lab.errors import ConfigError, DataError
from tests.helpers import REAL_MNIST, write_idx

# (class, kwargs, input_dims, num_classes, length, random)
TOY_SETS = [
    (Swissroll, {}, (2,), 0, 100, False),
    (Swissroll3D, {"n_samples": 500}, (3,), 0, 500, True),
    (TreeDataset, {}, (2,), 64, 64 * 200, True),
    (GaussianMixture, {"n_samples": 500}, (2,), 8, 500, True),
    (GaussianMixture, {"n_samples": 300, "num_modes": 3, "dim": 5}, (5,), 3, 300, True),
    (GaussianMixture, {"n_samples": 300, "num_modes": 4, "dim": 1}, (1,), 4, 300, True),
    (Sinusoid, {"n_samples": 500}, (2,), 0, 500, True),
]
TOY_IDS = [f"{cls.__name__}-{len(kw)}-{dims}" for cls, kw, dims, *_ in TOY_SETS]


@pytest.mark.parametrize("cls, kwargs, dims, num_classes, length, random", TOY_SETS, ids=TOY_IDS)
def test_toy_shape_dtype_labels(cls, kwargs, dims, num_classes, length, random):
    ds = cls(**kwargs)
    assert len(ds) == length and ds.input_dims == dims and ds.num_classes == num_classes
    assert ds.data.shape == (length, *dims) and ds.data.dtype == torch.float32
    assert ds.data.abs().max() < 1.6  # roughly unit scale
    if num_classes == 0:
        assert ds.labels is None and isinstance(ds[0], torch.Tensor) and ds[0].shape == dims
    else:
        x, y = ds[3]
        assert x.shape == dims and y.dtype == torch.int64
        assert ds.labels.dtype == torch.int64 and 0 <= ds.labels.min() and ds.labels.max() < num_classes
        assert set(ds.labels.tolist()) == set(range(num_classes))


@pytest.mark.parametrize("cls, kwargs, dims, num_classes, length, random", TOY_SETS, ids=TOY_IDS)
def test_toy_deterministic_given_seed(cls, kwargs, dims, num_classes, length, random):
    assert torch.equal(cls(**kwargs).data, cls(**kwargs).data)
    if random:
        assert torch.equal(cls(**kwargs, seed=3).data, cls(**kwargs, seed=3).data)
        assert not torch.equal(cls(**kwargs, seed=3).data, cls(**kwargs, seed=4).data)


@pytest.mark.parametrize("cls, kwargs, dims, num_classes, length, random", TOY_SETS, ids=TOY_IDS)
def test_toy_getitems_equals_stacked_getitem(cls, kwargs, dims, num_classes, length, random):
    ds = cls(**kwargs)
    indices = [0, 7, 3, length - 1, 7]
    batch = ds.get_batch(indices)
    items = [ds[i] for i in indices]
    if num_classes == 0:
        assert torch.equal(batch, torch.stack(items))
    else:
        assert torch.equal(batch[0], torch.stack([x for x, _ in items]))
        assert torch.equal(batch[1], torch.stack([y for _, y in items]))


def test_swissroll_points_are_smalldiffusions():
    # smalldiffusion: t = tmin + linspace(0, 1, N) * tmax, points t (cos t, sin t) / tmax
    ds = Swissroll(tmin=1.0, tmax=10.0, N=5)
    t = torch.tensor([1.0, 3.5, 6.0, 8.5, 11.0])
    assert torch.allclose(ds.data, torch.stack([t * t.cos(), t * t.sin()], 1) / 10.0, atol=1e-6)
    radii = Swissroll(tmin=math.pi / 2, tmax=5 * math.pi, N=100).data.norm(dim=1)  # its documented call
    assert radii[0].item() == pytest.approx(0.1) and radii[-1].item() == pytest.approx(1.1)


def test_tree_default_has_64_balanced_leaves_within_unit_disc():
    ds = TreeDataset()
    assert ds.num_classes == 64
    assert ds.labels.bincount(minlength=64).tolist() == [200] * 64
    assert ds.data.norm(dim=1).max() < 1.05


def test_gaussian_mixture_points_sit_at_their_mode():
    ds = GaussianMixture(n_samples=800, num_modes=8, radius=1.0, std=0.05)
    assert ds.labels.bincount().tolist() == [100] * 8
    assert torch.allclose(ds.means.norm(dim=1), torch.ones(8))
    assert (ds.data - ds.means[ds.labels]).norm(dim=1).max() < 8 * 0.05


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: Swissroll(N=0), "N"),
        (lambda: Swissroll(tmin=3.0, tmax=-2.0), "tmax"),
        (lambda: Swissroll3D(n_samples=-5), "n_samples"),
        (lambda: Swissroll3D(noise=-0.1), "noise"),
        (lambda: TreeDataset(branching_factor=1), "branching_factor"),
        (lambda: TreeDataset(depth=0), "depth"),
        (lambda: GaussianMixture(num_modes=0), "num_modes"),
        (lambda: GaussianMixture(std=-1.0), "std"),
        (lambda: Sinusoid(n_samples=0), "n_samples"),
        (lambda: Digits(split="val"), "split"),
        (lambda: Digits(channels=2), "channels"),
        (lambda: MNIST("unused", split="validation", download=False), "split"),
        (lambda: MNIST("unused", image_size=0, download=False), "image_size"),
        (lambda: ImageFolder("unused", channels=4), "channels"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(build, name):
    with pytest.raises(ConfigError, match=name):
        build()


IMAGES = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
LABELS = np.array([3, 1, 4, 1, 5], dtype=np.uint8)


def write_split(folder: Path, prefix: str, gz: bool) -> None:
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", IMAGES)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", LABELS)


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST])
@pytest.mark.parametrize("layout", ["root", "raw"])
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split, prefix", [("train", "train"), ("test", "t10k")])
def test_mnist_reads_idx_files(tmp_path, cls, layout, gz, split, prefix):
    folder = tmp_path if layout == "root" else tmp_path / cls.__name__ / "raw"
    write_split(folder, prefix, gz)
    ds = cls(str(tmp_path), split=split, download=False)
    assert len(ds) == 5 and ds.num_classes == 10 and ds.input_dims == (1, 28, 28)
    x, y = ds[2]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y.item() == 4 and y.dtype == torch.int64
    assert torch.allclose(x[0], torch.from_numpy(IMAGES[2]).float() / 127.5 - 1)
    assert x.min() >= -1 and x.max() <= 1


def test_mnist_resize_and_rgb(tmp_path):
    write_split(tmp_path, "train", gz=True)
    ds = MNIST(str(tmp_path), image_size=32, channels=3, download=False)
    xb, yb = ds.get_batch([0, 4])
    assert ds.input_dims == (3, 32, 32) and xb.shape == (2, 3, 32, 32) and yb.tolist() == [3, 5]
    assert torch.equal(xb[:, 0], xb[:, 1]) and torch.equal(xb[:, 0], xb[:, 2])
    assert xb.min() >= -1 and xb.max() <= 1


def test_mnist_hflip_returns_image_or_its_mirror(tmp_path):
    write_split(tmp_path, "train", gz=True)
    plain = MNIST(str(tmp_path), download=False).get_batch(list(range(5)) * 8)[0]
    flipped = MNIST(str(tmp_path), hflip=True, download=False).get_batch(list(range(5)) * 8)[0]
    same = (flipped == plain).flatten(1).all(1)
    mirrored = (flipped == plain.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and mirrored.any() and same.any()


def test_partial_copy_loads_test_split_only(tmp_path):
    write_split(tmp_path, "t10k", gz=True)
    assert len(MNIST(str(tmp_path), split="test", download=False)) == 5
    with pytest.raises(DataError) as info:
        MNIST(str(tmp_path), split="train", download=False)
    message = str(info.value)
    assert "\n" not in message and "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert str(tmp_path) in message and str(tmp_path / "MNIST" / "raw") in message


def test_missing_labels_file_is_named_alone(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", IMAGES)
    with pytest.raises(DataError, match="put train-labels-idx1-ubyte.gz in") as info:
        MNIST(str(tmp_path), download=False)
    assert "train-images" not in str(info.value)


def test_failed_download_gives_one_line_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known (offline test)")

    monkeypatch.setattr(socket, "getaddrinfo", offline)  # fail at once, whatever the network
    with pytest.raises(DataError) as info:
        FashionMNIST(str(tmp_path), split="train", download=True)
    message = str(info.value)
    assert "\n" not in message and "download failed" in message and "train-labels-idx1-ubyte.gz" in message


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"])
def test_truncated_file_raises_data_error_naming_it(tmp_path, name):
    write_split(tmp_path, "t10k", gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    write_idx(tmp_path / name, IMAGES)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=name):
        MNIST(str(tmp_path), split="test", download=False)


def test_wrong_magic_number_raises_data_error(tmp_path):
    write_split(tmp_path, "t10k", gz=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", LABELS)  # a 1-d file where a 3-d one belongs
    with pytest.raises(DataError, match="magic"):
        MNIST(str(tmp_path), split="test", download=False)


def test_plain_dataloader_yields_batches(tmp_path):
    write_split(tmp_path, "train", gz=True)
    loader = DataLoader(MNIST(str(tmp_path), download=False), batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 1, 28, 28) and y.tolist() == [3, 1, 4, 1]
    toy = next(iter(DataLoader(Sinusoid(n_samples=10), batch_size=6)))
    assert toy.shape == (6, 2)


def test_real_mnist_test_set():
    if not (REAL_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST test set not present at {REAL_MNIST}")
    ds = MNIST(str(REAL_MNIST), split="test", download=False)
    assert len(ds) == 10000 and ds.data.shape == (10000, 1, 28, 28)
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert ds.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x, _ = ds.get_batch(list(range(100)))
    assert x.min() == -1 and x.max() == 1


def test_cifar10_missing_names_folder(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py") as info:
        CIFAR10(str(tmp_path), download=False)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)



def test_digits_splits_range_and_resize():
    train, test, full = Digits(), Digits(split="test"), Digits(split="all")
    assert (len(train), len(test), len(full)) == (1617, 180, 1797)
    assert train.num_classes == 10 and set(test.labels.tolist()) == set(range(10))
    assert train.data.min() == -1 and train.data.max() == 1 and train.input_dims == (1, 8, 8)
    train_idx, test_idx = digits_split_indices("train", 1797), digits_split_indices("test", 1797)
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist())
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(1797))
    assert torch.equal(full.data[test_idx], test.data) and torch.equal(full.labels[train_idx], train.labels)
    big = Digits(image_size=16, channels=3, split="test")
    x, y = big[0]
    assert x.shape == (3, 16, 16) and big.input_dims == (3, 16, 16) and -1 <= x.min() and x.max() <= 1
    assert y == test.labels[0]



def write_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_with_classes(tmp_path):
    write_png(tmp_path / "cats" / "a.png", (255, 0, 0))
    write_png(tmp_path / "cats" / "b.png", (255, 0, 0))
    write_png(tmp_path / "dogs" / "c.PNG", (0, 0, 255))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(str(tmp_path), image_size=8)
    assert len(ds) == 3 and ds.num_classes == 2 and ds.classes == ["cats", "dogs"]
    assert ds.labels.tolist() == [0, 0, 1] and ds.input_dims == (3, 8, 8)
    x, y = ds[2]
    assert x.shape == (3, 8, 8) and y.item() == 1
    assert torch.allclose(x[2], torch.ones(8, 8)) and torch.allclose(x[0], -torch.ones(8, 8))
    xb, yb = ds.get_batch([0, 2])
    assert xb.shape == (2, 3, 8, 8) and yb.tolist() == [0, 1]


def test_flat_image_folder_has_no_labels(tmp_path):
    for k in range(3):
        write_png(tmp_path / f"{k}.png", (k * 100, 0, 0))
    ds = ImageFolder(str(tmp_path), image_size=6, channels=1)
    assert ds.num_classes == 0 and len(ds) == 3
    assert isinstance(ds[0], torch.Tensor) and ds[0].shape == (1, 6, 6)
    assert ds.get_batch([0, 1]).shape == (2, 1, 6, 6)


def test_image_folder_missing_or_empty_raises(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ImageFolder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"\.png"):
        ImageFolder(str(tmp_path / "empty"))

"""data=hf: Hugging Face `datasets` image sets made here, offline, in three on-disk forms (save_to_disk, parquet,
an imagefolder with class sub-folders), decoded once into memory and trained on."""
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.app.train import train
from diffusion_lab.errors import DataError
from tests.helpers import FAST, compose_train

datasets = pytest.importorskip("datasets")


def squares(n: int = 24) -> tuple[list[Image.Image], list[int]]:
    """n 12x10 RGB images: a bright square whose place is the label (3 classes)."""
    images, labels = [], []
    for i in range(n):
        a = np.zeros((10, 12, 3), dtype=np.uint8)
        a[1:5, 1 + 3 * (i % 3):5 + 3 * (i % 3)] = 255
        images.append(Image.fromarray(a))
        labels.append(i % 3)
    return images, labels


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The same 24 images as a save_to_disk folder, a parquet file and an imagefolder tree."""
    root = tmp_path_factory.mktemp("hf")
    images, labels = squares()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    ds.save_to_disk(str(root / "disk"))
    ds.to_parquet(str(root / "train.parquet"))
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / "folder" / "train" / f"c{label}").mkdir(parents=True, exist_ok=True)
        image.save(root / "folder" / "train" / f"c{label}" / f"{i}.png")
    return root, torch.stack([torch.as_tensor(np.array(im)).permute(2, 0, 1) for im in images]), labels


@pytest.mark.parametrize("form", ["disk", "parquet", "imagefolder"])
def test_each_form_gives_the_images_resized_centre_cropped_and_labelled(stored, form):
    from torchvision.transforms.v2 import functional as TF

    from diffusion_lab.data import HFImageDataset

    root, images, labels = stored
    kwargs = {"disk": dict(path=str(root / "disk"), from_disk=True),
              "parquet": dict(path="parquet", data_files=str(root / "train.parquet")),
              "imagefolder": dict(path="imagefolder", data_dir=str(root / "folder"))}[form]
    data = HFImageDataset(**kwargs, label_column="label", image_size=8, channels=3)
    x, y = data.get_batch(list(range(len(data))))
    assert data.in_memory and x.shape == (24, 3, 8, 8) and data.num_classes == 3 and data.input_dims == (3, 8, 8)
    expected = TF.center_crop(TF.resize(images, [8], antialias=True), [8, 8]).float() / 127.5 - 1  # (24, 3, 8, 8)
    order = torch.as_tensor(labels).argsort(stable=True) if form == "imagefolder" else torch.arange(24)
    assert torch.allclose(x, expected[order], atol=1e-6)  # the imagefolder builder lists files class by class
    assert y.tolist() == torch.as_tensor(labels)[order].tolist()


def test_a_bad_column_or_path_is_one_line(stored):
    from diffusion_lab.data import HFImageDataset

    root, _, _ = stored
    with pytest.raises(DataError, match=r"no column 'digit'; its columns are \['image', 'label'\]"):
        HFImageDataset(str(root / "disk"), from_disk=True, label_column="digit")
    with pytest.raises(DataError, match="cannot load it"):
        HFImageDataset(str(root / "nothing"), from_disk=True)


def test_data_hf_trains_a_conditional_model(stored, tmp_path):
    root, _, _ = stored
    cfg = compose_train(["data=hf", f"data.dataset.path={root / 'disk'}", "data.dataset.from_disk=true",
                         "data.dataset.label_column=label", "data.num_classes=3", "data.input_dims=[3,8,8]",
                         "data.batch_size=8", "data.val_size=8", "model=dit", "model.depth=1", "model.num_heads=2",
                         "model.head_dim=8", "model.num_classes=${data.num_classes}", "guidance=cfg", *FAST,
                         "trainer.max_steps=4", "trainer.val_check_interval=4", "num_samples=12"], tmp_path)
    train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and list((tmp_path / "samples").glob("*.png"))

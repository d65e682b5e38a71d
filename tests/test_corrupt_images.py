"""A corrupt image file ends a run with one `error:` line naming the file, also when a DataLoader worker reads it."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from diffusion_lab.app.config import user_error
from diffusion_lab.data import ImageFolder
from diffusion_lab.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def image_folder(root: Path, n: int = 5) -> Path:
    """n valid 12x10 RGB PNGs and one file with a .png name holding garbage bytes; returns the corrupt file."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    bad = root / "img2_corrupt.png"
    bad.write_bytes(b"this is not a png\x00" * 8)
    return bad


class _Failing(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise DataError("data: cannot read image /x/y.png (cannot identify image file)")


def test_user_error_of_an_error_re_raised_from_a_dataloader_worker_is_the_original_message():
    with pytest.raises(DataError) as err:
        next(iter(DataLoader(_Failing(), num_workers=1)))
    assert str(err.value).startswith("Caught DataError in DataLoader worker process 0.")  # torch's wrapping
    assert user_error(err.value) == "data: cannot read image /x/y.png (cannot identify image file)"
    assert user_error(DataError("plain\nsecond line")) == "plain" and user_error(DataError()) == "DataError"


@pytest.mark.parametrize("content,why", [(b"garbage" * 9, "cannot identify image file"),
                                         (b"", "cannot identify image file"),
                                         ("half", "truncated")])
def test_image_folder_names_the_unreadable_file_and_why(tmp_path, content, why):
    bad = image_folder(tmp_path / "images")
    bad.write_bytes((tmp_path / "images" / "img0.png").read_bytes()[:60] if content == "half" else content)
    data = ImageFolder(str(tmp_path / "images"), image_size=8)
    with pytest.raises(DataError) as err:
        data.get_batch(list(range(len(data))))
    assert str(err.value).startswith(f"cannot read image {bad} (") and why in str(err.value)
    assert str(err.value).count(str(bad)) == 1


def test_train_with_a_corrupt_image_in_a_worker_ends_with_one_error_line_naming_it(tmp_path):
    bad = image_folder(tmp_path / "images")
    args = ["data=image_folder", f"data.dataset.root={tmp_path / 'images'}", "data.input_dims=[3,8,8]",
            "data.batch_size=8", "data.num_workers=1", "model=dit", "model.depth=1", "model.head_dim=8",
            "model.num_heads=2", "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "num_samples=4", "sampler.steps=2", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0], r.stderr[-3000:]
    assert errors[0] == f"error: cannot read image {bad} (cannot identify image file)"

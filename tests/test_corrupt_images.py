"""A corrupt image file is one DataError naming the file, also when a DataLoader worker reads it.

The train.py run that meets one in a worker is a case of test_bad_input.py."""
import pytest
from torch.utils.data import DataLoader, Dataset

from diffusion_lab.app.config import user_error
from diffusion_lab.data import ImageFolder
from diffusion_lab.errors import DataError
from tests.helpers import write_corrupt_image_folder


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
    bad = write_corrupt_image_folder(tmp_path / "images")
    bad.write_bytes((tmp_path / "images" / "img0.png").read_bytes()[:60] if content == "half" else content)
    data = ImageFolder(str(tmp_path / "images"), image_size=8)
    with pytest.raises(DataError) as err:
        data.get_batch(list(range(len(data))))
    assert str(err.value).startswith(f"cannot read image {bad} (") and why in str(err.value)
    assert str(err.value).count(str(bad)) == 1

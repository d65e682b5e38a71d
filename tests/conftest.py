"""Fixtures shared by the test modules: wandb and the hub offline, one thread, composed configs, tiny checkpoints."""
import pytest
import torch

from tests.helpers import compose_train, write_tiny_checkpoints


@pytest.fixture(autouse=True)
def _offline(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Runs the in-process tests on one CPU thread: their models are tiny, and beside a script a test starts (or any
    other load) two spinning threads on 2 cores made a 300-step toy loop take 70 s instead of 0.7 s."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(DEFAULT_THREADS)


@pytest.fixture
def default_threads():
    """torch's own thread count for one test: a convolution's rounding depends on how its work is split."""
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_train with run paths under this test's tmp_path unless out_dir is given."""
    def _compose(overrides=(), out_dir=None):
        return compose_train(list(overrides), out_dir or tmp_path)

    return _compose


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory) -> dict:
    """write_tiny_checkpoints in a folder of this module's: name -> checkpoint path."""
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpts"))

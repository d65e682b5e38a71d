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


@pytest.fixture(scope="module")
def one_thread():
    """Runs a module's tests on one CPU thread: on a busy 2-core machine two spinning threads are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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

"""Shared fixtures: compose the real Hydra config with run paths in a temporary directory; wandb offline."""
import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from diffusion_lab.app.config import CONFIG_DIR

FAST = ["trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.log_every_n_steps=5",
        "callbacks.model_checkpoint.every_n_train_steps=10", "num_samples=16", "sampler.steps=5",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]


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


def compose_train(overrides: list[str], out_dir, config_name: str = "train") -> DictConfig:
    """The composed train config, as `python train.py <overrides>` would see it, writing under out_dir."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root_dir = str(out_dir)
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.data_dir = str(os.path.join(out_dir, "data"))
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(overrides=(), out_dir=None):
        return compose_train(list(overrides), out_dir or tmp_path)

    return _compose

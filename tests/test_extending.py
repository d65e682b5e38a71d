"""docs/extending.md followed to the letter: its code blocks become a package and a config folder in a temporary
directory, and each new objective, sampler and data set trains and samples from its checkpoint."""
import re
from pathlib import Path

import pytest
import torch

from diffusion_lab.app.train import train
from diffusion_lab.build import load_model
from tests.helpers import FAST, ROOT, compose_train

PAGE = ROOT / "docs" / "extending.md"


def blocks() -> dict[str, str]:
    """The page's code blocks that name a file (```python my_lab/x.py), by file name."""
    return {name: code for name, code in re.findall(r"```\w+ (\S+)\n(.*?)```", PAGE.read_text(), re.S)}


@pytest.fixture
def extension(tmp_path, monkeypatch) -> Path:
    """The page's files written under tmp_path, my_lab importable; returns the config folder."""
    files = blocks()
    assert set(files) == {"my_lab/objectives.py", "my_lab/samplers.py", "my_lab/data.py",
                          "my_configs/objective/score.yaml", "my_configs/sampler/midpoint.yaml",
                          "my_configs/data/rings.yaml"}
    for name, code in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code)
    (tmp_path / "my_lab" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "my_configs"


@pytest.mark.parametrize("options", [["objective=score"], ["sampler=midpoint"], ["data=rings"],
                                     ["data=rings", "objective=score", "sampler=midpoint", "model=cond_mlp",
                                      "guidance=cfg"]], ids=" ".join)
def test_each_documented_extension_trains_and_samples(extension, tmp_path, options):
    run = tmp_path / "run"
    cfg = compose_train([f"hydra.searchpath=[file://{extension}]", *options, *FAST, "trainer.max_steps=10",
                         "data.batch_size=64", "model.hidden_dims=[16,32,16]", "sampler.steps=4"], run)
    train(cfg)
    model = load_model(run / "checkpoints" / "last.ckpt")
    targets = {type(model.objective).__name__, model.sampler.function.__name__,
               cfg.data.dataset._target_.rsplit(".", 1)[-1]}
    for option, name in {"objective=score": "PredScore", "sampler=midpoint": "sample_midpoint",
                         "data=rings": "TwoRings"}.items():
        assert (name in targets) == (option in options), (option, targets)
    x = model.sample(8, seed=0)
    assert x.shape == (8, 2) and torch.isfinite(x).all()
    if "sampler=midpoint" in options:
        assert model.nfe == 2 * 4 * (2 if "guidance=cfg" in options else 1)  # two evaluations a step, counted

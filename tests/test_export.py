"""Export and load anywhere: a checkpoint as a folder (safetensors, config.json, model card), loaded by
`diffusion_lab.load_model` from the folder, the .ckpt or a Hugging Face Hub id, without Lightning or Hydra."""
import json
import subprocess
import sys

import pytest
import torch

from diffusion_lab.app.train import train
from diffusion_lab.build import load_model
from diffusion_lab.errors import CheckpointError, ConfigError
from diffusion_lab.export import export_model
from tests.helpers import CONDITIONAL, FAST, ROOT, TINY_DIT, compose_train, run_script


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A conditional tiny DiT with guidance, trained 20 steps."""
    out = tmp_path_factory.mktemp("run")
    train(compose_train([*FAST, *TINY_DIT, CONDITIONAL, "guidance=cfg", "num_samples=20"], out))
    return out


def test_export_writes_safetensors_config_and_a_card_that_load_as_the_checkpoint(run, tmp_path):
    from safetensors.torch import load_file

    ckpt = run / "checkpoints" / "last.ckpt"
    folder = export_model(ckpt, tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "samples.png"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["_target_"].endswith("DiT") and config["data"]["input_dims"] == [1, 8, 8]
    assert config["ema"] is True and config["parts"] == ["objective"] and "optimizer" not in config
    ema = torch.load(ckpt, weights_only=False)["ema_state_dict"]
    state = load_file(str(folder / "model.safetensors"))
    assert state.keys() == {f"objective.{k}" for k in ema} and all(torch.equal(state[f"objective.{k}"], v) for k, v in ema.items())
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusion_lab\n") and "| val/classifier_fd |" in card
    assert "20 samples against as many real items" in card and "![samples](samples.png)" in card
    a, b = load_model(folder).sample(6, seed=3), load_model(ckpt).sample(6, seed=3)
    assert torch.equal(a, b)  # the same model, sampler and guidance
    raw = load_model(export_model(ckpt, tmp_path / "raw", ema=False))
    assert not torch.equal(raw.sample(6, seed=3), a)  # the raw training weights


def test_a_fresh_interpreter_loads_and_samples_an_export_without_lightning_or_hydra(run, tmp_path):
    folder = export_model(run / "checkpoints" / "last.ckpt", tmp_path / "model")
    code = ("import sys\nfrom diffusion_lab import load_model\n"
            f"m = load_model({str(folder)!r})\nx = m.sample(16, seed=0)\n"
            f"m2 = load_model({str(run / 'checkpoints' / 'last.ckpt')!r})\n"
            "print(tuple(x.shape), sorted({n.split('.')[0] for n in sys.modules} & {'lightning', 'pytorch_lightning', "
            "'hydra', 'omegaconf'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(16, 1, 8, 8) []"


def test_a_hub_id_loads_from_the_hubs_cache_offline(run, tmp_path, monkeypatch):
    """What `huggingface_hub.upload_folder` pushed, as snapshot_download finds it in a filled cache (no network)."""
    pytest.importorskip("huggingface_hub")
    folder = export_model(run / "checkpoints" / "last.ckpt", tmp_path / "model")
    cache, revision = tmp_path / "hub", "0" * 40
    snapshot = cache / "models--someone--tiny-dit" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (cache / "models--someone--tiny-dit" / "refs").mkdir()
    (cache / "models--someone--tiny-dit" / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert torch.equal(load_model("someone/tiny-dit").sample(4, seed=1), load_model(folder).sample(4, seed=1))
    with pytest.raises(CheckpointError, match="^nobody/nothing: no such file, and the Hugging Face Hub has no model"):
        load_model("nobody/nothing")


def test_export_script_and_bad_inputs_are_one_line(run, tmp_path):
    r = run_script("scripts/export.py", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'm'}",
                                         f"hydra.run.dir={tmp_path / 'h'}"], check=True)
    assert r.stdout.strip().endswith(f"wrote {tmp_path / 'm'}") and (tmp_path / "m" / "model.safetensors").is_file()
    r = run_script("scripts/export.py", [f"hydra.run.dir={tmp_path / 'h2'}"])
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ckpt_path: which checkpoint?")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not an exported diffusion_lab model"):
        load_model(tmp_path / "empty")

"""The install: optional integrations missing from the environment are one line naming the extra; --help is quick;
the configs ship inside the wheel; console scripts exist."""
import importlib
import importlib.util
import subprocess
import sys
import tomllib

import pytest
from hydra.errors import InstantiationException

from diffusion_lab.app import config
from tests.helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instantiation_error(key: str, cause: Exception) -> InstantiationException:
    """What hydra.utils.instantiate raises when the constructor at config key `key` raises cause."""
    try:
        try:
            raise cause
        except Exception as err:
            raise InstantiationException(f"Error in call to target\nfull_key: {key}") from err
    except InstantiationException as wrapped:
        return wrapped


@pytest.mark.parametrize("key, cause, extra", [
    # Lightning's WandbLogger names the package in the message only
    ("logger.wandb", ModuleNotFoundError("Requirement 'wandb>=0.12.10' not met. HINT: Try running `pip install -U "
                                         "'wandb>=0.12.10'`"), "wandb"),
    ("logger.tensorboard", ModuleNotFoundError("Neither `tensorboard` nor `tensorboardX` is available."), "tensorboard"),
    ("data.dataset", ModuleNotFoundError("No module named 'sklearn'", name="sklearn"), "digits"),
    ("denoiser", ModuleNotFoundError("No module named 'diffusers'", name="diffusers"), "pretrained"),
])
def test_a_missing_optional_package_names_its_extra(key, cause, extra):
    message = config.user_error(instantiation_error(key, cause))
    assert message.startswith(f"{key}: needs ")
    assert message.endswith(f'pip install "diffusion_lab[{extra}]"')
    assert extra in PYPROJECT["project"]["optional-dependencies"]


def test_an_import_error_of_a_base_package_is_not_a_user_error():
    assert config.user_error(ModuleNotFoundError("No module named 'torch_ema'", name="torch_ema")) is None


@pytest.mark.parametrize("arg, extra", [("hparams_search=optuna", "sweep"), ("hydra/launcher=slurm", "slurm")])
def test_a_missing_hydra_plugin_is_one_line(monkeypatch, capsys, arg, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if "hydra_plugins" in name else real(name))
    with pytest.raises(SystemExit) as stop:
        config.check_plugins(["model=mlp", arg])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(f'pip install "diffusion_lab[{extra}]"'), err


def test_installed_plugins_pass_the_check():
    config.check_plugins(["hparams_search=optuna", "hydra/launcher=slurm", "model=dit"])  # dev extras have both


def test_quick_help_lists_every_group_without_importing_torch():
    code = ("import sys; sys.argv = ['train.py', '--help']; from diffusion_lab.app.train import main; main(); "
            "print('heavy:', sorted({'torch', 'lightning'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "heavy: []" in r.stdout
    for group in ("data", "model", "schedule", "sampler", "guidance", "experiment", "trainer", "logger"):
        assert f"\n  {group}: " in r.stdout
    assert "  model: " in r.stdout and "dit" in r.stdout.split("  model: ")[1].splitlines()[0]


def test_base_install_holds_only_what_train_needs():
    base = {dep.split(">")[0].split("=")[0].split("[")[0] for dep in PYPROJECT["project"]["dependencies"]}
    assert not base & {"wandb", "tensorboard", "hydra-optuna-sweeper", "hydra-submitit-launcher", "scipy",
                       "scikit-learn"}
    assert not any("torch" in dep and "<" in dep for dep in PYPROJECT["project"]["dependencies"])  # no cap on torch
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) >= {"wandb", "tensorboard", "sweep", "slurm", "digits", "all", "dev"}
    assert set(config.EXTRAS.values()) <= set(extras)


def test_console_scripts_point_at_entry_functions():
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"diffusion-lab-train", "diffusion-lab-sample", "diffusion-lab-evaluate",
                            "diffusion-lab-export", "diffusion-lab-reconstruct-ema"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_config_dir_can_be_moved_with_an_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "train.yaml").write_text("seed: 0\n")
    monkeypatch.setenv("DIFFUSION_LAB_CONFIG_DIR", str(tmp_path))
    assert config.find_config_dir() == str(tmp_path.resolve())
    monkeypatch.delenv("DIFFUSION_LAB_CONFIG_DIR")
    assert config.find_config_dir() == str(ROOT / "configs")

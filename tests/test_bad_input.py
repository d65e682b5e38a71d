"""Bad command lines of every entry point, in one place: train.py, scripts/sample.py, scripts/evaluate.py and
scripts/sample_pretrained.py.

One table per entry point. A case is (arguments, what the error line says, slow, alone); `{name}` in either is a file
the fixture made. Every run exits with code 2, no traceback and one `error:` line, the last on stderr (the only one
where the case says alone); an option Hydra cannot find is Hydra's own message (REPORTED_BY_HYDRA). The runs of each
suite start at once, one thread each. Default suite: each run has a directory of its own, and a train run leaves no
checkpoint there. Slow suite: train runs are `train.py FAST <arguments>` into the directory of an earlier run, which
they leave byte for byte as it was; sample and evaluate runs read checkpoints of trained runs. In-process checks of
the same mistakes (pytest.raises) stay beside the code they test.
"""
import hashlib
import importlib.util
import re
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from diffusion_lab.app.train import train
from tests.helpers import BASE, FAST, compose_train, start_script, write_corrupt_image_folder, write_latent_checkpoint


class Case(NamedTuple):
    args: list[str]
    error: str  # what the error line says; " … " stands for any text
    slow: bool = False
    alone: bool = True  # nothing else on stderr (False: the run got far enough for libraries to log)


TRAIN = {
    "unknown option": Case(["model=transformer"], "Could not find 'model/transformer'"),
    "steps negative": Case(["sampler.steps=-3"], "sampler: steps=-3 must be an integer >= 1", slow=True),
    "sigma_min above sigma_max": Case(["schedule.sigma_min=20"], "schedule: sigma_min=20", slow=True),
    "sigma_data not positive": Case(["objective=edm", "objective.sigma_data=0"], "sigma_data=0 must be > 0",
                                    slow=True),
    "solver order": Case(["sampler=dpmpp_2m", "sampler.method.order=4"],
                         "sampler: order=4 is not supported: DPM-Solver++ here has order 1, 2 or 3", slow=True),
    "cfg without conditioning": Case(["guidance=cfg"], "guidance: classifier-free guidance needs a conditional model",
                                     slow=True),
    "batch beyond memory": Case(["data.batch_size=1000000000"], "this run needs at least … GiB … at "
                                "data.batch_size=1000000000) but this machine has … GiB free; … memory_check=false"),
    "patch size of digits": Case(["model=dit", "data=digits", "model.patch_size=3"],
                                 "patch_size=3 must divide in_dim=8", slow=True),
    "ckpt_path missing": Case(["ckpt_path=/nonexistent/last.ckpt"],
                              "ckpt_path: no checkpoint at /nonexistent/last.ckpt"),
    "missing data files": Case(["experiment=fashion_mnist_dit", "data.dataset.download=false",
                                "paths.data_dir={empty_data}"], "data.dataset: FashionMNIST split 'train' not found"),
    "wrong image root": Case(["model=dit", "data=image_folder", "data.dataset.root=/nonexistent/images",
                              "paths.data_dir={empty_data}"], "data.dataset: image folder /nonexistent/images",
                             slow=True),
    "patch does not divide": Case(["experiment=digits_dit", "data.input_dims=[1,15,15]", "paths.data_dir={empty_data}"],
                                  "patch_size=2 must divide in_dim=15", slow=True),
    "conditional on swissroll": Case(["model=toy_unet", "model.num_classes=10", "data=swissroll",
                                      "paths.data_dir={empty_data}"],
                                     "model: num_classes=10 but the data has no labels", slow=True),
    "ckpt_path garbage": Case([*BASE, "trainer.max_steps=10", "ckpt_path={garbage}"], "{garbage}: cannot read"),
    "ckpt_path truncated": Case([*BASE, "trainer.max_steps=10", "ckpt_path={truncated}"], "{truncated}: cannot read",
                                slow=True),
    "ckpt_path foreign": Case([*BASE, "trainer.max_steps=10", "ckpt_path={foreign}"],
                              "{foreign}: not a diffusion_lab checkpoint", slow=True),
    "ckpt_path of another model": Case([*BASE, "trainer.max_steps=10", "ckpt_path={other_model}"],
                                       "{other_model}: model.hidden_dims is [16, 64, 16] in the checkpoint", slow=True),
    "corrupt image read by a worker": Case(
        ["data=image_folder", "data.dataset.root={images}", "data.input_dims=[3,8,8]", "data.batch_size=8",
         "data.num_workers=1", "model=dit", "model.depth=1", "model.head_dim=8", "model.num_heads=2",
         "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "num_samples=4",
         "sampler.steps=2"], "error: cannot read image {corrupt_image} (cannot identify image file)", alone=False),
    # slow; "earlier run:" runs into the earlier run's directory
    "earlier run: unknown option": Case(["model=transformer"], "Could not find 'model/transformer'", slow=True),
    "earlier run: wrong type": Case(["trainer.max_steps=abc"], "trainer.max_steps", slow=True),
    "earlier run: learning rate out of range": Case(["optimizer.lr=-1"], "optimizer.lr", slow=True),
    "earlier run: validation interval zero": Case(["trainer.val_check_interval=0"], "trainer.val_check_interval",
                                                  slow=True),
    "earlier run: steps out of range": Case(["sampler.steps=0"], "sampler: steps=0 must be an integer >= 1", slow=True),
    "earlier run: schedule out of range": Case(["schedule.sigma_min=20"], "sigma_min", slow=True),
    "earlier run: missing data root": Case(["model=dit", "data=mnist", "data.dataset.root=/nonexistent/mnist",
                                            "data.dataset.download=false"], "/nonexistent/mnist", slow=True),
    "earlier run: missing checkpoint": Case(["ckpt_path=/nonexistent/last.ckpt"], "/nonexistent/last.ckpt", slow=True),
    "earlier run: corrupt checkpoint": Case(["ckpt_path={earlier_cut}"], "cannot read", slow=True),
    "earlier run: foreign checkpoint": Case(["ckpt_path={foreign_weights}"], "not a diffusion_lab checkpoint",
                                            slow=True),
    "earlier run: cfg on unconditional": Case(["guidance=cfg"], "conditional", slow=True),
    "earlier run: labels from unlabelled data": Case(["model=toy_unet", "model.num_classes=10"], "no labels",
                                                     slow=True),
    "earlier run: patch size": Case(["model=dit", "data=digits", "model.patch_size=3"], "patch_size", slow=True),
    "earlier run: reused run directory": Case([], "already holds a run", slow=True, alone=False),
    "earlier run: resume another run": Case(["ckpt_path={other_run}"], "mix two runs", slow=True, alone=False),
    "unwritable output": Case(["hydra.run.dir=/proc/diffusion_lab_run"], "not a writable directory", slow=True),
    "optuna on a metric never logged": Case(
        ["hparams_search=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.sampler.n_startup_trials=1", *BASE,
         "trainer.max_steps=5", "optimized_metric=val/nothing", "hydra.sweep.dir={sweep}"],
        "error: optimized_metric=val/nothing was never logged", slow=True, alone=False),
}
SAMPLE = {
    "missing checkpoint": Case(["ckpt={missing}", "progress=false"], "{missing}: no such file"),
    "corrupt checkpoint": Case(["ckpt={corrupt}", "progress=false"],
                               "{corrupt}: cannot read the file, it is truncated"),
    "checkpoint of another model": Case(["ckpt={other}", "progress=false"], "{other}: weights do not fit TimeInputMLP",
                                        slow=True),
    "unknown precision": Case(["ckpt={toy}", "progress=false", "precision=fp8"],
                              "precision='fp8' must be one of ['auto', '32-true', 'bf16-mixed', '16-mixed']",
                              slow=True),
    "cfg_scale on unconditional": Case(["ckpt={toy}", "progress=false", "cfg_scale=2"],
                                       "cfg_scale=2: classifier-free guidance needs a conditional model", slow=True),
    "labels outside classes": Case(["ckpt={cond}", "progress=false", "labels=[3,10]"],
                                   "labels=[3, 10]: each label must be an integer class in 0..9", slow=True),
    "latent checkpoint without a trained denoiser": Case(
        ["ckpt={latent_reconstruction}", "progress=false"],
        "{latent_reconstruction}: its denoiser was never trained (latent diffusion stage=reconstruction … "
        "checkpoint of stage diffusion or joint", slow=True),
    "classifier_scale on a non-latent checkpoint": Case(["ckpt={toy}", "progress=false", "classifier_scale=2"],
                                                        "classifier_scale=2: the checkpoint has no trained classifier",
                                                        slow=True),
    "classifier_scale without a trained classifier": Case(
        ["ckpt={latent_diffusion}", "progress=false", "classifier_scale=2"],
        "classifier_scale=2: the checkpoint has no trained classifier", slow=True),
    "classifier_scale negative": Case(["ckpt={toy}", "progress=false", "classifier_scale=-1"],
                                      "classifier_scale=-1 must be a number >= 0", slow=True),
    # slow; "trained:" reads checkpoints of trained runs
    "trained: missing checkpoint": Case(["ckpt=/nonexistent.ckpt"], "no such file", slow=True),
    "trained: corrupt checkpoint": Case(["ckpt={earlier_cut}"], "truncated", slow=True),
    "trained: foreign checkpoint": Case(["ckpt={foreign_weights}"], "not a diffusion_lab checkpoint", slow=True),
    "trained: cfg on unconditional": Case(["ckpt={earlier}", "cfg_scale=3"], "conditional model", slow=True),
    "trained: labels outside classes": Case(["ckpt={earlier}", "labels=[3]"], "label", slow=True),
    "trained: steps zero": Case(["ckpt={earlier}", "steps=0"], "steps=0", slow=True),
    "trained: unwritable output": Case(["ckpt={earlier}", "hydra.run.dir=/proc/diffusion_lab_run"], "writable",
                                       slow=True),
}
EVALUATE = {
    "steps zero": Case(["ckpt={toy}", "progress=false", "steps=0"], "steps=0 must be an integer >= 1"),
    "latent checkpoint without a trained denoiser": Case(["ckpt={latent_reconstruction}", "progress=false"],
                                                         "{latent_reconstruction}: its denoiser was never trained",
                                                         slow=True),
    "trained: missing checkpoint": Case(["ckpt=/nonexistent.ckpt"], "no such file", slow=True),
    "trained: unknown metric": Case(["ckpt={earlier}", "metric=[nonsense]"], "nonsense", slow=True),
    "trained: cfg on unconditional": Case(["ckpt={earlier}", "cfg_scale=2"], "conditional model", slow=True),
    "trained: too few samples": Case(["ckpt={earlier}", "num_samples=4"], "num_samples=4 must be >= 8", slow=True),
}
SAMPLE_PRETRAINED = {
    "unknown hub id offline": Case(["pretrained=nobody-here/no-such-model"],
                                   "nobody-here/no-such-model … save_pretrained", alone=False),
}
ENTRY_POINTS = {"train": ("train.py", TRAIN), "sample": ("scripts/sample.py", SAMPLE),
                "evaluate": ("scripts/evaluate.py", EVALUATE),
                "sample_pretrained": ("scripts/sample_pretrained.py", SAMPLE_PRETRAINED)}
NEEDS = {"sample_pretrained": "diffusers"}  # entry point -> the package it cannot report without
# Hydra reports an option it cannot find itself, before train.py runs: exit code 1, several lines, no `error:` line.
REPORTED_BY_HYDRA = {("train", "unknown option"), ("train", "earlier run: unknown option")}


def start(entry: str, case: Case, files: dict, run_dir: Path, cwd: Path) -> subprocess.Popen:
    """The case's command started in the background, into run_dir unless its arguments name a directory."""
    script, _ = ENTRY_POINTS[entry]
    args = [a.format(**files) for a in case.args]
    if not any(a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in args):
        args.append(f"hydra.run.dir={run_dir}")
    if entry == "train" and case.slow:
        args = [*FAST, *args]
    return start_script(script, args, cwd=cwd, stdout=subprocess.DEVNULL)


def run_all(slow: bool, files: dict, dir_of, cwd: Path, timeout: float = 600) -> dict:
    """Every case of a suite at once, into dir_of(entry, name): (entry, name) -> (exit code, stderr, run directory)."""
    keys = [(entry, name) for entry, (_, table) in ENTRY_POINTS.items() for name, case in table.items()
            if case.slow == slow]
    dirs = {key: dir_of(*key) for key in keys}
    procs = {key: start(key[0], ENTRY_POINTS[key[0]][1][key[1]], files, dirs[key], cwd) for key in keys}
    deadline = time.monotonic() + timeout
    out = {}
    for key, p in procs.items():
        try:
            _, stderr = p.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            p.kill()
            _, stderr = p.communicate()
        out[key] = (p.returncode, stderr, dirs[key])
    return out


def own_dir(root: Path):
    """dir_of for run_all: a directory of its own for each case, under root."""
    return lambda entry, name: root / "runs" / entry / re.sub(r"\W+", "_", name)


def digest(run_dir: Path) -> dict:
    """Hashes of the run's outputs; Hydra's own record of the latest invocation (.hydra/, the log) is excluded."""
    return {str(p.relative_to(run_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}


def case_files(root, tiny_ckpts) -> dict:
    """The files the cases name: tiny checkpoints good and bad, an empty data folder, corrupt images."""
    train(compose_train([*BASE, "trainer.max_steps=5"], root / "trained"))
    train(compose_train([*BASE, "trainer.max_steps=5", "model.hidden_dims=[16,64,16]"], root / "wider"))
    files = {**tiny_ckpts, "empty_data": root / "empty_data", "images": root / "images",
             "garbage": root / "garbage.ckpt", "truncated": root / "truncated.ckpt", "foreign": root / "foreign.ckpt",
             "other_model": root / "other_model.ckpt"}
    files["empty_data"].mkdir()
    files["corrupt_image"] = write_corrupt_image_folder(files["images"])
    files["garbage"].write_bytes(b"not a checkpoint")
    files["truncated"].write_bytes((root / "trained/checkpoints/last.ckpt").read_bytes()[:5000])
    torch.save({"foo": 1}, files["foreign"])
    files["other_model"].write_bytes((root / "wider/checkpoints/last.ckpt").read_bytes())
    for stage in ("reconstruction", "diffusion"):
        files[f"latent_{stage}"] = write_latent_checkpoint(root / f"latent_{stage}.ckpt", stage)
    return files


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_ckpts) -> tuple[dict, dict]:
    """The default suite's results (see run_all) and the files its cases name."""
    root = tmp_path_factory.mktemp("bad")
    files = case_files(root, tiny_ckpts)
    return run_all(False, files, own_dir(root), root), files


@pytest.fixture(scope="module")
def slow_runs(tmp_path_factory, tiny_ckpts) -> tuple[dict, dict, dict, dict]:
    """The slow suite's results and files, train runs into an earlier run; that run's digest before and after."""
    root = tmp_path_factory.mktemp("bad_slow")
    earlier = root / "earlier_run"
    train(compose_train([*FAST, "trainer.max_steps=10"], earlier))
    train(compose_train([*FAST, "trainer.max_steps=5"], root / "other_run"))
    files = {**case_files(root / "files", tiny_ckpts), "earlier": earlier / "checkpoints/last.ckpt", "earlier_cut": root / "earlier_cut.ckpt",
             "foreign_weights": root / "foreign_weights.ckpt", "other_run": root / "other_run/checkpoints/last.ckpt",
             "sweep": root / "sweep"}
    files["earlier_cut"].write_bytes(files["earlier"].read_bytes()[:4096])
    torch.save({"weights": torch.zeros(3)}, files["foreign_weights"])
    before = digest(earlier)
    in_own_dir = own_dir(root)
    results = run_all(True, files, lambda entry, name: earlier if entry == "train" else in_own_dir(entry, name), root)
    return results, files, before, digest(earlier)


def case_params() -> list:
    """Every case of every table as a pytest parameter, marked slow or skipped where its case or entry point says."""
    params = []
    for entry, (_, table) in ENTRY_POINTS.items():
        for name, case in table.items():
            marks = [pytest.mark.slow] if case.slow else []
            if entry in NEEDS:
                marks.append(pytest.mark.skipif(importlib.util.find_spec(NEEDS[entry]) is None,
                                                reason=f"{NEEDS[entry]} is not installed"))
            params.append(pytest.param(entry, name, marks=marks, id=f"{entry}: {name}"))
    return params


def says(line: str, text: str) -> bool:
    """Whether line holds text, " … " in text standing for any text."""
    return re.search(".*".join(map(re.escape, text.split(" … "))), line) is not None


@pytest.mark.parametrize("entry,name", case_params())
def test_bad_command_exits_2_with_one_error_line(request, entry, name):
    case = ENTRY_POINTS[entry][1][name]
    results, files = request.getfixturevalue("slow_runs" if case.slow else "runs")[:2]
    code, stderr, run_dir = results[entry, name]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in stderr, stderr[-3000:]
    if (entry, name) in REPORTED_BY_HYDRA:
        assert code == 1 and not errors and case.error.format(**files) in stderr, stderr[-3000:]
    else:
        assert code == 2 and len(errors) == 1 and errors == lines[-1:], stderr[-3000:]
        assert says(errors[0], case.error.format(**files)), errors[0]
        assert lines == errors or not case.alone, stderr[-3000:]
    if entry == "train" and not case.slow:  # a directory of its own: nothing was trained
        assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_bad_commands_leave_an_earlier_run_as_it_was(slow_runs):
    *_, before, after = slow_runs
    assert before and before == after

"""DDP on CPU (gloo): 2 processes, 2 torchrun nodes on localhost, SLURM detection; one run directory; exact resume."""
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import (FAST, assert_same_training_state, compose_train, free_port, global_step, logged_metrics,
                           run_script, start_script)

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *FAST, "data.epoch_size=4096",
       "data.batch_size=256", "trainer.val_check_interval=10", "callbacks.model_checkpoint.every_n_train_steps=10"]


def run(args, cwd):
    """`python train.py <args>`, which must succeed."""
    return run_script("train.py", args, cwd=cwd, timeout=300, check=True)


def assert_ranks_identical(dump_dir):
    a, b = (torch.load(Path(dump_dir) / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ddp_two_processes_train_in_one_run_directory(tmp_path):
    run([*DDP, "trainer.max_steps=20", "+callbacks.dump._target_=tests.crash.DumpWeights",
         f"+callbacks.dump.dirpath={tmp_path}/dump", "num_samples=40"], cwd=tmp_path)
    runs = [p for p in (tmp_path / "outputs").rglob("config.yaml") if p.parent.name != ".hydra"]
    assert len(runs) == 1, runs  # one Hydra run directory, not one per process
    run_dir = runs[0].parent
    assert_ranks_identical(tmp_path / "dump")
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 20
    ema, raw = ckpt["ema_state_dict"], ckpt["state_dict"]
    assert any(not torch.equal(ema[k], raw["objective." + k]) for k in ema)  # EMA tracked the training
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]  # only rank 0 logs
    assert len(list((run_dir / "samples").glob("*.png"))) == 2
    assert_ddp_evaluation_equals_one_process(run_dir)


def assert_ddp_evaluation_equals_one_process(run_dir: Path) -> None:
    """The last val/swd, from samples split across 2 ranks and gathered, equals one process's evaluation."""
    from diffusion_lab.app.sampling import build_dataset
    from diffusion_lab.build import load_model
    from diffusion_lab.evaluation import Evaluator, evaluation_sets
    from diffusion_lab.sampling import generate

    model = load_model(run_dir / "checkpoints/last.ckpt")  # the EMA weights validation sampled with
    sets = evaluation_sets(build_dataset(model.config), 40)
    x = generate(model, 40, seed=model.config["seed"]).x
    logged = logged_metrics(run_dir)
    assert logged["val/eval_samples"][-1] == 40
    assert logged["val/swd"][-1] == pytest.approx(Evaluator(sets.reference, ["swd"])(x)["swd"], rel=1e-4)


@pytest.mark.slow
def test_ddp_tiny_dit_ranks_end_identical(tmp_path):
    run([*DDP, "model=dit", "data=digits", "model.depth=1", "model.num_heads=2", "model.head_dim=8",
         "data.epoch_size=null", "data.batch_size=64", "trainer.max_steps=10", "trainer.val_check_interval=10",
         "+callbacks.dump._target_=tests.crash.DumpWeights", f"+callbacks.dump.dirpath={tmp_path}/dump",
         f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert_ranks_identical(tmp_path / "dump")


@pytest.mark.slow
def test_ddp_resume_is_bit_identical(tmp_path):
    run([*DDP, "trainer.max_steps=20", f"hydra.run.dir={tmp_path}/straight"], cwd=tmp_path)
    run([*DDP, "trainer.max_steps=10", f"hydra.run.dir={tmp_path}/resumed"], cwd=tmp_path)
    run([*DDP, "trainer.max_steps=20", "ckpt_path=last", f"hydra.run.dir={tmp_path}/resumed"], cwd=tmp_path)
    assert_same_training_state(tmp_path / "straight/checkpoints/last.ckpt", tmp_path / "resumed/checkpoints/last.ckpt")


@pytest.mark.slow
def test_ddp_sigterm_on_one_rank_stops_every_rank_at_one_saved_step(tmp_path):
    """Only rank 1 hears SIGTERM at step 13: the ranks agree, rank 0 saves step 13, the resume is bit-identical."""
    run([*DDP, "trainer.max_steps=20", f"hydra.run.dir={tmp_path}/straight"], cwd=tmp_path)
    r = run_script("train.py", [*DDP, "trainer.max_steps=20", "+callbacks.sig._target_=tests.crash.SignalAtStep",
                                "+callbacks.sig.step=13", "+callbacks.sig.rank=1", f"hydra.run.dir={tmp_path}/stopped"],
                   cwd=tmp_path, timeout=300)
    assert r.returncode == 143, r.stderr[-3000:]
    assert global_step(tmp_path / "stopped/checkpoints/last.ckpt") == 13
    run([*DDP, "trainer.max_steps=20", "ckpt_path=auto", f"hydra.run.dir={tmp_path}/stopped"], cwd=tmp_path)
    assert_same_training_state(tmp_path / "straight/checkpoints/last.ckpt", tmp_path / "stopped/checkpoints/last.ckpt")


@pytest.mark.slow
def test_two_torchrun_nodes_on_localhost_train_together(tmp_path):
    port = free_port()
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2", *FAST,
            "trainer.max_steps=10", "+callbacks.dump._target_=tests.crash.DumpWeights",
            f"+callbacks.dump.dirpath={tmp_path}/dump", f"hydra.run.dir={tmp_path}/run"]
    nodes = [start_script("train.py", args, cwd=tmp_path, stderr=subprocess.STDOUT,
                          launcher=["-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                                    f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}"])
             for rank in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), outs[0][-2000:] + outs[1][-2000:]
    assert_ranks_identical(tmp_path / "dump")
    assert global_step(tmp_path / "run/checkpoints/last.ckpt") == 10


def test_slurm_launcher_config_composes_and_fake_slurm_is_detected(tmp_path, monkeypatch):
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    cfg = compose_train(["trainer=slurm", "hydra/launcher=slurm"], tmp_path)
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.strategy._target_.endswith("DDPStrategy")
    for key, value in {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train", "SLURM_NODEID": "0",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODELIST": "node[1-2]", "SLURM_JOB_ID": "42",
                       "SLURM_NNODES": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(SLURMEnvironment, "_validate_srun_used", staticmethod(lambda: None), raising=False)
    trainer = instantiate(cfg.trainer, accelerator="cpu", devices=1, logger=False)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert trainer.num_nodes == 2


@pytest.mark.slow
def test_torchrun_sampling_splits_seeds_across_ranks_and_gathers_the_same_samples(tmp_path):
    from diffusion_lab.app.train import train

    train(compose_train([*FAST, "trainer.max_steps=5"], tmp_path / "run"))
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    common = [f"ckpt={ckpt}", "num_samples=10", "save=[pt]", "progress=false"]
    run_script("scripts/sample.py", [*common, "batch_size=3", f"hydra.run.dir={tmp_path}/two"], cwd=tmp_path,
               launcher=["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"],
               check=True)
    run_script("scripts/sample.py", [*common, "batch_size=10", f"hydra.run.dir={tmp_path}/one"], cwd=tmp_path,
               check=True)
    two, one = torch.load(tmp_path / "two/samples.pt"), torch.load(tmp_path / "one/samples.pt")
    assert two["indices"].tolist() == list(range(10))
    assert torch.allclose(two["samples"], one["samples"], atol=1e-5)  # batch sizes differ: float rounding only

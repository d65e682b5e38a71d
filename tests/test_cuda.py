"""What only a CUDA GPU can show: training in bf16 on the GPU with EMA and checkpoints, sampling there reproducibly and
independently of the batch, a model and its autoguidance guide moved together, and device resolution. Skipped
without a GPU (the reason is in the summary line); scripts/gpu_check.py runs them with `pytest -m cuda`."""
import pytest
import torch

from diffusion_lab.app.sampling import resolve_device, with_overrides
from diffusion_lab.app.train import available_memory, train
from diffusion_lab.build import load_model
from diffusion_lab.sampling import generate
from tests.helpers import FAST, TINY_DIT, write_checkpoint

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_gpu_trainer_trains_in_bf16_with_ema_on_the_gpu_and_writes_a_checkpoint(compose_cfg, tmp_path):
    cfg = compose_cfg(["trainer=gpu", *[o for o in FAST if not o.startswith("trainer.accelerator")],
                       *TINY_DIT])
    assert cfg.trainer.precision == "bf16-mixed"
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 20 and all(v.isfinite().all() for v in ckpt["ema_state_dict"].values()
                                             if v.is_floating_point())


def test_sampling_on_the_gpu_is_reproducible_and_independent_of_the_batch(tmp_path):
    model = load_model(write_checkpoint(tmp_path / "toy.ckpt", ["sampler.steps=4"]), device="cuda")
    a = generate(model, 32, batch_size=32, seed=3).x
    assert torch.equal(a, generate(model, 32, batch_size=32, seed=3).x)
    assert torch.allclose(a, generate(model, 32, batch_size=5, seed=3).x, atol=1e-5)


def test_an_autoguidance_guide_follows_the_model_to_the_gpu(tmp_path):
    ckpt = write_checkpoint(tmp_path / "toy.ckpt", ["sampler.steps=4"])
    guide = {"_target_": "diffusion_lab.build.autoguidance", "guide": str(ckpt)}
    model = with_overrides(load_model(ckpt), guidance=guide, guidance_scale=2.0).to("cuda")
    assert next(model.guidance.guide.parameters()).is_cuda and generate(model, 8, seed=0).x.isfinite().all()


def test_devices_resolve_to_this_machines_gpus_and_report_free_memory(monkeypatch):
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("cuda") == torch.device("cuda", 0)
    where, free = available_memory("gpu")
    assert where == "the GPU" and 0 < free <= torch.cuda.get_device_properties(0).total_memory

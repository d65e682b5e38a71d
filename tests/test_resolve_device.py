"""resolve_device under torchrun: each process of a node takes cuda:LOCAL_RANK (CUDA faked: runs on a CPU machine)."""
import pytest
import torch

from diffusion_lab.app.sampling import resolve_device
from diffusion_lab.errors import ConfigError


@pytest.fixture
def gpus(monkeypatch):
    """Pretends this machine has n CUDA devices; LOCAL_RANK unset unless a test sets it."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return fake


@pytest.mark.parametrize("name", ["auto", "cuda"])
@pytest.mark.parametrize("local_rank", [0, 1, 3])
def test_torchrun_ranks_take_their_own_gpu(gpus, monkeypatch, name, local_rank):
    gpus(4)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    assert resolve_device(name) == torch.device("cuda", local_rank)


def test_without_torchrun_auto_and_cuda_stay_unindexed_and_explicit_indices_are_kept(gpus, monkeypatch):
    gpus(4)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda") == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index wins over LOCAL_RANK
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_cpu_without_cuda_even_under_torchrun(gpus, monkeypatch):
    gpus(0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device here"):
        resolve_device("cuda")


def test_one_visible_gpu_per_process_is_cuda_0(gpus, monkeypatch):
    gpus(1)  # e.g. SLURM binding one GPU to each task: every process sees its GPU as device 0
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_more_ranks_than_gpus_or_a_missing_index_is_a_one_line_error(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=2 but this node has 2 GPUs.*--nproc_per_node=2"):
        resolve_device("auto")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ConfigError, match="LOCAL_RANK='x' must be an integer"):
        resolve_device("cuda")
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(ConfigError, match="device=cuda:5: this machine has 2 CUDA devices"):
        resolve_device("cuda:5")

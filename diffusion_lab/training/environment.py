"""Process settings for fitting on this machine: `skip_nvml_cuda_check()` before a CPU-only training loop."""
import os

import torch


def skip_nvml_cuda_check() -> None:
    """Turns off torch's NVML-based CUDA check (set by Lightning at import) on a machine without a GPU."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and not torch.cuda.is_available():
        # Lightning turns on torch's fork-safe NVML check of CUDA, which torch does not cache when it finds no GPU:
        # about 0.5 ms in every optimizer step on a CPU machine, where there is no CUDA state to keep fork-safe.
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]

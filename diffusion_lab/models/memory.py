"""How much memory one training step of a denoiser needs, estimated from a forward pass on a tiny batch."""
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of one training step: `state` = weights, gradients, optimizer moments and EMA copy; `activations` =
    the tensors autograd keeps from the forward pass for the backward pass, at the given batch size."""

    num_params: int
    state: int
    activations: int

    @property
    def total(self) -> int:
        return self.state + self.activations


def training_memory(net: nn.Module, batch_size: int, optimizer_moments: int = 2, averages: int = 1,
                    probe_batch: int = 1) -> TrainingMemory:
    """The memory a training step of `net` (a denoiser) needs at batch_size, from a forward pass at probe_batch.

    The storages of the tensors autograd saves for the backward pass (seen through
    torch.autograd.graph.saved_tensors_hooks, each counted once, the weights not at all) are summed and scaled to
    batch_size: only probe_batch items are ever allocated. Weights, gradients, `optimizer_moments` moments per
    weight (Adam: 2) and `averages` averaged copies (the EMA, and post-hoc EMA's profiles) make up the state. The backward pass's temporaries and the allocator's slack
    come on top, so this is a lower bound: measured peaks on a CPU were 1.3 to 2 times it.
    """
    params = list(net.parameters())
    weights = {p.untyped_storage().data_ptr() for p in params}  # state, not activations
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()  # views of one tensor (q, k, v of one projection) share it: count it once
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    x = net.rand_input(probe_batch)  # (b, *input_dims)
    sigma = torch.ones(probe_batch, device=x.device)  # (b,)
    cond = torch.zeros(probe_batch, dtype=torch.long, device=x.device) if getattr(net, "num_classes", 0) else None
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x, sigma, cond)
    saved = sum(storages.values())
    per_item = (saved + 2 * out.numel() * out.element_size()) / probe_batch
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    copies = 2 + optimizer_moments + averages  # weights, gradients, moments, averages
    return TrainingMemory(sum(p.numel() for p in params), copies * weight_bytes, round(per_item * batch_size))

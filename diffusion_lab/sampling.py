"""A trained diffusion model as one object, and many samples from it: sample i always comes from seed + i.

    model = DiffusionModel(objective, schedule, sampler)           # or diffusion_lab.load_model(path)
    x = model.sample(16, seed=0)                                     # (16, *input_dims)
    out = generate(model, 1000, batch_size=250, seed=0)              # out.x, out.labels, out.indices, out.seconds
    part = generate(model, 1000, seed=0, rank=1, world_size=4)       # samples 1, 5, 9, ... of the same 1000
"""
import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from diffusion_lab.core import ClassifierGuidance, Guidance, Sampler, Schedule
from diffusion_lab.core.noise import NoiseStreams
from diffusion_lab.errors import ConfigError
from diffusion_lab.utils import module_device


@dataclass
class DiffusionModel:
    """Everything a sampler call needs besides the noise: the objective (the network and what it predicts), its
    training schedule, the sampler and the guidance.

    vae: a latent model's autoencoder; samples are latents, decoded to images by `data`. classifier: a noise-aware
    classifier a latent run trained, for classifier guidance. Labels are drawn when the objective is conditional or
    a classifier guides. autocast: the dtype the forward passes run in under torch.autocast (bfloat16 for a run
    trained in bf16-mixed precision; see autocast_dtype); None runs them in the weights' dtype, and the sampler's
    state stays float32. config: the train config the model was built from, when it came from a run.
    """

    objective: nn.Module
    schedule: Schedule
    sampler: Sampler
    guidance: Guidance = dataclasses.field(default_factory=Guidance)
    vae: nn.Module | None = None
    classifier: nn.Module | None = None
    autocast: torch.dtype | None = None
    config: dict | None = None

    def replace(self, **changes) -> "DiffusionModel":
        """A copy with some fields changed (another sampler, guidance, precision); the networks are shared."""
        return dataclasses.replace(self, **changes)

    def to(self, device: str | torch.device) -> "DiffusionModel":
        """Moves the networks (an autoguidance guide too) to device, in eval mode; returns self."""
        for net in (self.objective, self.vae, self.classifier, getattr(self.guidance, "guide", None)):
            if net is not None:
                net.to(device).eval()
        return self

    def precision(self) -> contextlib.AbstractContextManager:
        """The autocast region sampling runs in (a no-op without `autocast`)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(module_device(self.objective).type, dtype=self.autocast)

    def data(self, x: torch.Tensor) -> torch.Tensor:
        """The sampler's output x as data on the CPU: decoded (a latent model's VAE), float32 again after autocast."""
        x = x if self.vae is None else self.vae.decode_images(x)
        return (x if self.autocast is None else x.float()).cpu()

    @property
    def nfe(self) -> int:
        """Denoiser evaluations per sample: classifier-free guidance evaluates the conditional and null inputs,
        autoguidance the model and its guide; a guiding classifier's forward and backward are not counted."""
        return self.sampler.nfe * self.guidance.evaluations

    @property
    def num_classes(self) -> int:
        """The classes labels are drawn from: the objective's, else the guiding classifier's (0: no labels)."""
        classifier = self.guidance.classifier if isinstance(self.guidance, ClassifierGuidance) else None
        return getattr(self.objective, "num_classes", 0) or getattr(classifier, "num_classes", 0)

    def sample(self, num_samples: int, seed: int = 0, labels: Sequence[int] | None = None,
               batch_size: int = 64) -> torch.Tensor:
        """num_samples samples (N, *data shape) on the CPU; labels cycle through `labels` (default: every class)."""
        return generate(self, num_samples, batch_size, seed, labels).x


@dataclass
class Samples:
    """Samples x (N, *input_dims), their labels (N,) or None, their global indices (N,): sample i used seed + i, and
    the seconds drawing them took."""

    x: torch.Tensor
    labels: torch.Tensor | None
    indices: torch.Tensor
    seconds: float = 0.0


MIXED_PRECISION = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast_dtype(precision: str | int | None) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision setting: bfloat16 for bf16-mixed, float16 for 16-mixed, None for
    full or true precision (the weights' own dtype)."""
    return MIXED_PRECISION.get(str(precision))


def shard(num_samples: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The sample indices one process draws: every world_size-th of 0..num_samples-1, starting at rank."""
    if num_samples < 1:
        raise ConfigError(f"num_samples={num_samples} must be >= 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank}, world_size={world_size}: need world_size >= 1 and 0 <= rank < world_size")
    return list(range(rank, num_samples, world_size))


def check_labels(labels: Sequence[int] | int | None, num_classes: int) -> list[int] | None:
    """The requested labels as a list; ConfigError on an unconditional model or a label outside 0..num_classes-1."""
    if labels is None:
        return None
    labels = [labels] if isinstance(labels, int) else list(labels)
    if not num_classes:
        raise ConfigError(f"labels={labels}: the model is unconditional (num_classes=0); drop labels")
    bad = [y for y in labels if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < num_classes]
    if bad or not labels:
        raise ConfigError(f"labels={labels}: each label must be an integer class in 0..{num_classes - 1}")
    return labels


def labels_for(indices: Sequence[int], num_classes: int, labels: Sequence[int] | None = None) -> torch.Tensor | None:
    """Sample i gets labels[i % len(labels)] (default: classes 0..K-1 in turn); None for an unconditional model."""
    if not num_classes:
        return None
    choices = torch.as_tensor(check_labels(labels, num_classes) or range(num_classes))
    return choices[torch.as_tensor(list(indices)) % len(choices)]


def denoise_batch(model: DiffusionModel, seeds: Sequence[int],
                  cond: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Yields every intermediate x_t of one batch, the last being the samples; row j draws its noise from seeds[j]."""
    device = module_device(model.objective)
    cond = None if cond is None else cond.to(device)
    return model.sampler(model.objective, model.schedule, cond=cond, guidance=model.guidance,
                         generator=NoiseStreams(seeds, device))


@torch.no_grad()
def generate(model: DiffusionModel, num_samples: int, batch_size: int = 64, seed: int = 0,
             labels: Sequence[int] | None = None, rank: int = 0, world_size: int = 1,
             progress: bool = False) -> Samples:
    """This process's share of num_samples samples (all of them when world_size=1), batch_size at a time."""
    start = time.perf_counter()
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    indices = torch.as_tensor(shard(num_samples, rank, world_size))
    cond = labels_for(indices.tolist(), model.num_classes, labels)
    batches = indices.split(batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="sampling", unit="batch", delay=2.0, leave=False)  # only when it takes a while
    out, done = [], 0
    for idx in batches:
        c = None if cond is None else cond[done:done + len(idx)]
        with model.precision():
            *_, x = denoise_batch(model, (seed + idx).tolist(), c)  # only the last x_t is kept
            out.append(model.data(x))
        done += len(idx)
    return Samples(x=torch.cat(out), labels=cond, indices=indices, seconds=time.perf_counter() - start)


@torch.no_grad()
def trajectory(model: DiffusionModel, num: int = 8, seed: int = 0, labels: Sequence[int] | None = None,
               max_frames: int = 10) -> list[torch.Tensor]:
    """The denoising path of samples 0..num-1 (the same samples `generate` draws): up to max_frames x_t, last = x_0.

    A latent model's frames are decoded (its path shown as images).
    """
    indices = list(range(num))
    with model.precision():
        frames = list(denoise_batch(model, [seed + i for i in indices], labels_for(indices, model.num_classes, labels)))
        keep = sorted({round(i * (len(frames) - 1) / max(max_frames - 1, 1)) for i in range(max_frames)})
        return [model.data(frames[i]) for i in keep if i < len(frames)]


def gather(part: Samples) -> Samples:
    """All ranks' shares of a torch.distributed run, merged in sample order (every rank gets the whole set)."""
    import torch.distributed as dist

    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    indices = torch.cat([p.indices for p in parts])
    order = indices.argsort()
    labels = None if part.labels is None else torch.cat([p.labels for p in parts])[order]
    return Samples(x=torch.cat([p.x for p in parts])[order], labels=labels, indices=indices[order],
                   seconds=max(p.seconds for p in parts))

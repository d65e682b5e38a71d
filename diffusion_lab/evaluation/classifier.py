"""A small image classifier trained on a data set's labels: its penultimate layer is an offline feature space.

The usual practice for MNIST-like data, where Inception features fit poorly: a Frechet distance,
precision and recall in the features of a classifier of the same data, and its accuracy on
class-conditional samples. Weights are cached, so the classifier is trained once per data set.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.errors import ConfigError


class FeatureClassifier(nn.Module):
    """Conv net (B, C, H, W) -> logits (B, num_classes); `features` gives the penultimate activations (B, D)."""

    def __init__(self, channels: int, num_classes: int, width: int = 16, feature_dim: int = 128):
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(2 * width * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations, the feature space of the metrics."""
        return self.body(x)  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 500, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0) -> FeatureClassifier:
    """A FeatureClassifier fitted with Adam to images x (N, C, H, W) in [-1, 1] and labels y (N,); deterministic."""
    if num_classes < 2:
        raise ConfigError(f"the feature classifier needs a labelled data set (num_classes={num_classes})")
    with torch.random.fork_rng(devices=[]):  # leaves the caller's global RNG untouched
        torch.manual_seed(seed)
        net = FeatureClassifier(x.shape[1], num_classes)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=g)
            noise = 0.05 * torch.randn(x[idx].shape, generator=g)  # robustness to the slight noise of samples
            loss = F.cross_entropy(net(x[idx] + noise), y[idx].long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def cached_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, cache: str | Path | None,
                      steps: int = 500, seed: int = 0) -> FeatureClassifier:
    """The classifier saved at `cache`, or one trained now and saved there; an unreadable cache is retrained."""
    path = Path(cache) if cache else None
    if path is not None and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net = FeatureClassifier(x.shape[1], num_classes)
            net.load_state_dict(state)
            return net.eval()
        except Exception:  # noqa: BLE001 - a stale or truncated cache is rebuilt below
            pass
    net = train_classifier(x, y, num_classes, steps=steps, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(net.state_dict(), tmp)
        tmp.replace(path)  # atomic: concurrent evaluations never read half a file
    return net


@torch.no_grad()
def classifier_outputs(net: FeatureClassifier, x: torch.Tensor,
                       batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, feature_dim), class logits (N, num_classes)) of images x, in batches."""
    feats = torch.cat([net.features(xb) for xb in x.split(batch_size)])
    return feats, net.head(feats)

"""Scores sample sets against the data by name: point-set metrics for toy data, feature metrics for images."""
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion_lab.evaluation import metrics as M
from diffusion_lab.errors import ConfigError
from diffusion_lab.evaluation.classifier import FeatureClassifier, cached_classifier, classifier_outputs
from diffusion_lab.utils import split_batch

POINT_METRICS = {  # metric(samples (N, D), data (M, D))
    "swd": M.sliced_wasserstein,
    "mean_distance": M.mean_distance_to_data,
    "coverage": M.coverage,
    "mmd": M.mmd_rbf,
    "precision": lambda x, data: M.precision_recall(data, x)[0],
    "recall": lambda x, data: M.precision_recall(data, x)[1],
}
TOY_METRICS = tuple(POINT_METRICS)
IMAGE_METRICS = ("classifier_fd", "patch_fd", "precision", "recall", "confident", "accuracy", "fid", "kid")
CLASSIFIER_METRICS = {"classifier_fd", "precision", "recall", "confident", "accuracy"}
CONFIDENT = 0.9  # the probability of its top class above which the feature classifier counts an image as confident
MIN_EVALUATION_SIZE = 8  # samples and real items each; the kNN metrics need more than their k = 5 neighbours
CLASSIFIER_ITEMS = 5000  # the fixed subset of a data set its feature classifier is trained on


def default_metrics(image: bool, conditional: bool, labelled: bool = True, inception: bool = False) -> list[str]:
    """The metrics reported when none are named: the offline ones for the data (the classifier's need labelled
    images), and fid and kid when the Inception weights are on this machine."""
    if not image:
        return ["swd", "coverage", "precision", "recall", "mean_distance"]
    metrics = ["patch_fd"]
    if labelled:
        metrics = ["classifier_fd", "patch_fd", "precision", "recall", "confident"] + (["accuracy"] * conditional)
    return metrics + ["fid", "kid"] * inception


def classifier_cache_path(cache_dir: str | Path, data_config: dict, steps: int) -> Path:
    """Where the feature classifier of a data set is cached: a file named by a hash of its data config and steps."""
    key = json.dumps({"data": data_config, "steps": steps}, sort_keys=True, default=str)
    name = str(data_config.get("_target_", "data")).rsplit(".", 1)[-1]
    return Path(cache_dir) / f"{name}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"


def _items(dataset, index: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, labels or None) of the items `index` of a data set, in that order."""
    if hasattr(dataset, "get_batch"):  # the data sets of diffusion_lab.data: one batch, x or (x, y)
        return split_batch(dataset.get_batch(index))
    items = [dataset[i] for i in index]
    if isinstance(items[0], (tuple, list)):
        return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor([int(y) for _, y in items])
    return torch.stack([torch.as_tensor(x) for x in items]), None


def data_tensors(dataset, max_items: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x (N, ...), labels (N,) or None) of a fixed random subset of max_items items (all when None) of a data set."""
    n = len(dataset) if max_items is None else min(max_items, len(dataset))
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return _items(dataset, index.tolist())


@dataclass
class EvaluationSets:
    """Two disjoint random subsets of a data set, of equal size: samples are scored against `reference`, and
    `floor` scored against it too gives the metric's noise floor (what a perfect model would get)."""

    reference: torch.Tensor
    reference_labels: torch.Tensor | None
    floor: torch.Tensor
    floor_labels: torch.Tensor | None

    @property
    def size(self) -> int:
        """Items in each set, and the number of samples to score against them (equal sizes keep kNN metrics unbiased)."""
        return len(self.reference)


def evaluation_sets(dataset, n: int, seed: int = 0) -> EvaluationSets:
    """n random items as the reference and n others as the floor set; half the data set each when it has fewer than 2n."""
    if n < MIN_EVALUATION_SIZE:
        raise ConfigError(f"num_samples={n} must be >= {MIN_EVALUATION_SIZE} (coverage compares each point with its "
                          "5 nearest)")
    m = min(n, len(dataset) // 2)
    if m < MIN_EVALUATION_SIZE:
        raise ConfigError(f"the data set has {len(dataset)} items: evaluation needs at least "
                          f"{2 * MIN_EVALUATION_SIZE}")
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))  # (len,)
    reference, floor = _items(dataset, perm[:m].tolist()), _items(dataset, perm[m:2 * m].tolist())
    return EvaluationSets(*reference, *floor)


def data_classifier(dataset, data_config: dict, cache_dir: str | Path | None, steps: int = 500) -> FeatureClassifier:
    """The feature classifier of a labelled image data set: trained once on a fixed subset, then read from cache_dir.

    evaluate.py and in-training evaluation share it: the same items, steps and cache file for the same data config.
    """
    num_classes = getattr(dataset, "num_classes", 0)
    if num_classes < 2:
        raise ConfigError("classifier metrics need a labelled data set; use metric=[fid,kid] for unlabelled images")
    x, y = data_tensors(dataset, CLASSIFIER_ITEMS)
    cache = classifier_cache_path(cache_dir, data_config, steps) if cache_dir else None
    return cached_classifier(x, y, num_classes, cache, steps)


class Evaluator:
    """Scores samples against fixed reference data; feature networks are built here, so bad settings fail early.

    reference: data points (N, D) or images (N, C, H, W) in [-1, 1]; the classifier metrics use `classifier`
    (see `data_classifier`) or, without one, a classifier trained on the reference, which needs labels (N,) and
    num_classes; inception_weights is a local Inception file for fid/kid, which run on `device` (the small
    classifier runs on the CPU). kNN metrics (coverage, precision, recall) are unbiased only when the samples
    are as many as the reference points.
    """

    def __init__(self, reference: torch.Tensor, metrics: Sequence[str] | None = None,
                 labels: torch.Tensor | None = None, num_classes: int = 0, classifier_cache: str | Path | None = None,
                 classifier_steps: int = 500, inception_weights: str | None = None, conditional: bool = False,
                 device: str | torch.device = "cpu", classifier: FeatureClassifier | None = None):
        self.image = reference.ndim == 4
        self.reference = reference.float()
        self.metrics = self._check(list(metrics or default_metrics(self.image, conditional)), conditional)
        self.classifier = self.inception = self._patch_stats = None
        if self.image and CLASSIFIER_METRICS & set(self.metrics):
            if classifier is None and (labels is None or num_classes < 2):
                raise ConfigError(f"metric={self.metrics}: classifier metrics need a labelled data set; "
                                  "use metric=[fid,kid] for unlabelled images")
            self.classifier = classifier or cached_classifier(self.reference, labels, num_classes, classifier_cache,
                                                              classifier_steps)
            self.real_features, _ = classifier_outputs(self.classifier, self.reference)
        if {"fid", "kid"} & set(self.metrics):
            from diffusion_lab.evaluation.inception import InceptionMetrics

            self.inception = InceptionMetrics(self.reference, inception_weights, device=device)

    def _check(self, metrics: list[str], conditional: bool) -> list[str]:
        allowed = IMAGE_METRICS if self.image else TOY_METRICS
        unknown = [m for m in metrics if m not in allowed]
        if unknown:
            kind = "images" if self.image else "point data"
            raise ConfigError(f"metric={unknown}: not a metric for {kind}; choose from {list(allowed)}")
        if "accuracy" in metrics and not conditional:
            raise ConfigError("metric=accuracy needs a conditional model (samples generated per label)")
        return metrics

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """{metric: value} of samples x (with the labels they were generated for, for accuracy); with accuracy
        also accuracy_<k>, the fraction of the samples generated for class k that the classifier assigns to k."""
        x = x.float().cpu()
        scores = self._images(x, labels) if self.image else self._points(x)
        per_class = {m: float(v) for m, v in scores.items() if m.startswith("accuracy_")}
        return {m: float(scores[m]) for m in self.metrics} | per_class

    def _points(self, x: torch.Tensor) -> dict:
        return {m: POINT_METRICS[m](x, self.reference) for m in self.metrics}

    def _images(self, x: torch.Tensor, labels: torch.Tensor | None) -> dict:
        x = x.clamp(-1, 1)  # what a saved image holds
        out = {}
        if "patch_fd" in self.metrics:
            if self._patch_stats is None:
                self._patch_stats = M.gaussian_stats(M.image_patches(self.reference))
            out["patch_fd"] = M.frechet_distance(*self._patch_stats, *M.gaussian_stats(M.image_patches(x)))
        if self.classifier is not None:
            feats, logits = classifier_outputs(self.classifier, x)
            probs, predicted = logits.softmax(-1).max(-1)  # (N,) each
            out["classifier_fd"] = M.frechet_distance_features(self.real_features, feats)
            out["precision"], out["recall"] = M.precision_recall(self.real_features, feats)
            out["confident"] = (probs >= CONFIDENT).float().mean()
            if labels is not None and "accuracy" in self.metrics:
                correct, labels = (predicted == labels.cpu()).float(), labels.cpu()  # (N,)
                out["accuracy"] = correct.mean()
                out |= {f"accuracy_{k}": correct[labels == k].mean() for k in labels.unique().tolist()}
        if self.inception is not None:
            out.update(self.inception(x))
        return out


def reference_evaluator(dataset, data_config: dict, num_samples: int, metrics: Sequence[str] | None = None,
                        conditional: bool = False, classifier_cache: str | Path | None = None,
                        classifier_steps: int = 500, inception_weights: str | None = None,
                        device: str | torch.device = "cpu", seed: int = 0) -> tuple["Evaluator", EvaluationSets]:
    """An Evaluator of num_samples samples against as many real items of a data set, and those sets (reference and
    floor): what in-training evaluation and scripts/evaluate.py both score with. metrics None: default_metrics."""
    from diffusion_lab.evaluation.inception import local_inception_weights

    sets = evaluation_sets(dataset, num_samples, seed)
    image, weights = sets.reference.ndim == 4, local_inception_weights(inception_weights)
    labelled = getattr(dataset, "num_classes", 0) >= 2
    metrics = list(metrics or default_metrics(image, conditional, labelled, weights is not None))
    classifier = None
    if image and CLASSIFIER_METRICS & set(metrics):
        classifier = data_classifier(dataset, data_config, classifier_cache, classifier_steps)
    evaluator = Evaluator(sets.reference, metrics, classifier=classifier, inception_weights=weights,
                          conditional=conditional, device=device)
    return evaluator, sets

"""In-training evaluation: at each validation, a fixed set of samples scored against real data, with a noise floor."""
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from diffusion_lab.errors import ConfigError
from diffusion_lab.evaluation import Evaluator, data_classifier, default_metrics, evaluation_sets
from diffusion_lab.evaluation.inception import WEIGHTS_FILE
from diffusion_lab.evaluation.suite import CLASSIFIER_METRICS, MIN_EVALUATION_SIZE
from diffusion_lab.sampling import gather, generate

log = logging.getLogger(__name__)


def local_inception_weights(path: str | None) -> str | None:
    """The Inception weights file for FID/KID when it is on this machine (path, or torch's hub cache), else None."""
    if path:
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    return str(cached) if cached.is_file() else None


class SampleQuality(Callback):
    """Scores num_samples samples at each validation against as many real items; logs val/<metric>.

    The samples are drawn with the module's sampler, guidance and EMA weights; sample i uses seed module.seed + i
    (the labels of a conditional model cycle through the classes), so two validations of the same weights give
    the same number. Under DDP each rank draws every world_size-th sample and rank 0 scores them all. The real
    items are a fixed random subset of the training data; `val/<metric>_floor`, logged at the first validation,
    is the same metric for another disjoint real subset of the same size: differences below it are noise.
    `val/eval_samples` is the sample count, `val/eval_seconds` what the evaluation took.

    metrics: point data: swd, coverage, precision, recall, mean_distance, mmd; images: classifier_fd, patch_fd,
    precision, recall, confident, accuracy (conditional), fid, kid (null: the first five for points; all but fid
    and kid for images, and those too when the Inception weights are on this machine). The first metric is the one
    `optimized_metric=auto` optimizes. classifier_fd sees what the digits are; patch_fd (pixel patches) sees
    grain and blur, which the classifier's pooled features ignore. The image feature classifier is trained once
    per data set and cached in classifier_cache (shared with scripts/evaluate.py).
    """

    def __init__(self, num_samples: int = 512, metrics: list[str] | None = None, batch_size: int = 256,
                 classifier_cache: str | None = None, classifier_steps: int = 500,
                 inception_weights: str | None = None, data_seed: int = 0):
        if num_samples < MIN_EVALUATION_SIZE:
            raise ConfigError(f"callbacks.evaluate.num_samples={num_samples} must be >= {MIN_EVALUATION_SIZE}")
        if batch_size < 1:
            raise ConfigError(f"callbacks.evaluate.batch_size={batch_size} must be >= 1")
        self.num_samples, self.requested, self.batch_size = num_samples, metrics, batch_size
        self.classifier_cache, self.classifier_steps = classifier_cache, classifier_steps
        self.inception_weights, self.data_seed = inception_weights, data_seed
        self.evaluator: Evaluator | None = None  # on rank 0 only
        self.metrics: list[str] = list(metrics or [])  # what is logged, as val/<metric>; known once fit starts
        self.size = 0  # samples scored: num_samples, or half the data set when it is smaller
        self._floor_logged = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.evaluator is not None or trainer.datamodule is None or not getattr(pl_module, "can_sample", True):
            return
        dataset = trainer.datamodule.dataset
        if len(dataset) < 2 * MIN_EVALUATION_SIZE:
            log.warning(f"callbacks.evaluate: the data set has {len(dataset)} items, too few to score samples against "
                        f"(at least {2 * MIN_EVALUATION_SIZE}); no val/ quality metrics in this run")
            return
        sets = evaluation_sets(dataset, self.num_samples, self.data_seed)
        self.sets, self.size = sets, sets.size
        if sets.size < self.num_samples:
            log.info(f"callbacks.evaluate: the data set has {len(dataset)} items, so {sets.size} samples are scored "
                     f"against {sets.size} real ones (num_samples={self.num_samples})")
        image = sets.reference.ndim == 4
        conditional = pl_module.sampling_setup().num_classes > 0  # labels or classifier guidance
        labelled = getattr(dataset, "num_classes", 0) >= 2
        metrics = self.requested or self._default_metrics(image, conditional, labelled)
        classifier = None
        if image and CLASSIFIER_METRICS & set(metrics) and trainer.is_global_zero:
            config = (getattr(pl_module, "config", None) or {}).get("data", {}).get("dataset", {})
            classifier = data_classifier(dataset, config, self.classifier_cache, self.classifier_steps)
        if trainer.is_global_zero:
            self.evaluator = Evaluator(sets.reference, metrics, conditional=conditional, classifier=classifier,
                                       inception_weights=local_inception_weights(self.inception_weights),
                                       device=trainer.strategy.root_device)
        self.metrics = list(metrics)

    def _default_metrics(self, image: bool, conditional: bool, labelled: bool) -> list[str]:
        """default_metrics, without the classifier's on unlabelled images, with fid and kid when they can run."""
        metrics = default_metrics(image, conditional)
        if image and not labelled:
            metrics = [m for m in metrics if m not in CLASSIFIER_METRICS]
        inception = image and local_inception_weights(self.inception_weights) is not None
        return metrics + (["fid", "kid"] if inception else [])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.size:
            return
        start = time.perf_counter()
        setup = pl_module.sampling_setup()
        rank, world = trainer.global_rank, trainer.world_size
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        part = generate(setup, self.size, self.batch_size, pl_module.seed, rank=rank, world_size=world,
                        progress=show)
        samples = gather(part) if world > 1 else part
        scores = None
        if trainer.is_global_zero:
            scores = self.evaluator(samples.x, samples.labels)
            if not self._floor_logged:
                floor = self.evaluator(self.sets.floor, self.sets.floor_labels)
                scores |= {f"{name}_floor": value for name, value in floor.items()}
            pl_module.last_samples = samples.x
        scores = trainer.strategy.broadcast(scores, src=0)
        seconds = time.perf_counter() - start
        for name, value in scores.items():
            pl_module.log(f"val/{name}", value)
        pl_module.log("val/eval_samples", float(self.size))
        pl_module.log("val/eval_seconds", seconds)
        self._floor_logged = True
        if trainer.is_global_zero:
            log.info(f"step {trainer.global_step}: " + " ".join(self._describe(scores)) +
                     f" ({self.size} samples against {self.size} real items, {seconds:.1f} s)")

    def _describe(self, scores: dict[str, float]) -> list[str]:
        out = []
        for name in self.metrics:
            floor = scores.get(f"{name}_floor")
            out.append(f"val/{name}={scores[name]:.4g}" + (f" (floor {floor:.4g})" if floor is not None else ""))
        return out

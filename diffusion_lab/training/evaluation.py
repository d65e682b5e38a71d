"""In-training evaluation: at each validation, the module's samples scored against real data, with a noise floor."""
import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

from diffusion_lab.evaluation import default_metrics, reference_evaluator
from diffusion_lab.evaluation.inception import local_inception_weights
from diffusion_lab.evaluation.suite import MIN_EVALUATION_SIZE

log = logging.getLogger(__name__)


class SampleQuality(Callback):
    """Scores the module's validation samples (`validation_samples`: num_samples samples of its sampler, guidance and
    EMA weights, sample i from seed + i) against as many real items, and logs val/<metric>.

    The real items are a fixed random subset of the training data (data_seed); `val/<metric>_floor`, logged at the
    first validation, is the same metric for another disjoint real subset of the same size: differences below it
    are noise. When the data set has fewer than twice num_samples items, half of it is the reference and as many
    samples are scored. Under DDP, rank 0 scores every rank's samples. `val/eval_samples` is the sample count,
    `val/eval_seconds` what drawing and scoring them took.

    metrics: point data: swd, coverage, precision, recall, mean_distance, mmd; images: classifier_fd, patch_fd,
    precision, recall, confident, accuracy (conditional), fid, kid (null: evaluation.default_metrics). The first
    is the one `optimized_metric=auto` optimizes. classifier_fd sees what the digits are; patch_fd (pixel patches)
    sees grain and blur, which the classifier's pooled features ignore. The image feature classifier is trained
    once per data set and cached in classifier_cache (shared with scripts/evaluate.py).
    """

    def __init__(self, metrics: list[str] | None = None, classifier_cache: str | None = None,
                 classifier_steps: int = 500, inception_weights: str | None = None, data_seed: int = 0):
        self.requested, self.classifier_cache, self.classifier_steps = metrics, classifier_cache, classifier_steps
        self.inception_weights, self.data_seed = inception_weights, data_seed
        self.evaluator, self.sets = None, None  # on rank 0 only
        self.metrics: list[str] = list(metrics or [])  # what is logged, as val/<metric>; known once fit starts
        self.size = 0  # samples scored
        self._floor_logged = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.size or trainer.datamodule is None or not pl_module.can_sample:
            return
        dataset = trainer.datamodule.dataset
        size = min(pl_module.num_samples, len(dataset) // 2)
        if size < MIN_EVALUATION_SIZE:
            log.warning(f"callbacks.evaluate: {size} samples against {size} real items is too few to score (at least "
                        f"{MIN_EVALUATION_SIZE}; num_samples={pl_module.num_samples}, the data set has {len(dataset)} "
                        "items); no val/ quality metrics in this run")
            return
        conditional = pl_module.diffusion_model().num_classes > 0  # labels or classifier guidance
        image = len(trainer.datamodule.input_dims) == 3
        labelled = getattr(dataset, "num_classes", 0) >= 2
        inception = image and local_inception_weights(self.inception_weights) is not None
        self.metrics = list(self.requested or default_metrics(image, conditional, labelled, inception))
        if trainer.is_global_zero:
            data_config = (pl_module.train_config or {}).get("data", {}).get("dataset", {})
            self.evaluator, self.sets = reference_evaluator(
                dataset, data_config, size, self.metrics, conditional, self.classifier_cache, self.classifier_steps,
                self.inception_weights, trainer.strategy.root_device, self.data_seed)
        self.size = size

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples = pl_module.validation_samples
        if trainer.sanity_checking or not self.size or samples is None:
            return
        start, scores = time.perf_counter(), None
        if trainer.is_global_zero:
            labels = None if samples.labels is None else samples.labels[: self.size]
            scores = self.evaluator(samples.x[: self.size], labels)
            if not self._floor_logged:
                floor = self.evaluator(self.sets.floor, self.sets.floor_labels)
                scores |= {f"{name}_floor": value for name, value in floor.items()}
        scores = trainer.strategy.broadcast(scores, src=0)
        seconds = samples.seconds + time.perf_counter() - start
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

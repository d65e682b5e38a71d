"""Evaluation of samples: metric suites for point data and images, the feature classifier, FID/KID, sweeps."""
from diffusion_lab.evaluation.classifier import (FeatureClassifier, cached_classifier, classifier_outputs,
                                                 train_classifier)
from diffusion_lab.evaluation.grid import grid_points, logged, plot_grid, write_csv
from diffusion_lab.evaluation.suite import (IMAGE_METRICS, TOY_METRICS, EvaluationSets, Evaluator,
                                            classifier_cache_path, data_classifier, data_tensors, default_metrics,
                                            evaluation_sets, reference_evaluator)

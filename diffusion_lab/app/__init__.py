"""Hydra and the entry points: config plumbing, the train/sample/evaluate apps and run loading."""

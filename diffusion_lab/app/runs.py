"""Run directories: one run per directory (a lock and a reuse check), set-and-forget resume, config changes on
resume.

    ckpt_path=last    resumes checkpoints/last.ckpt of hydra.run.dir when it exists, else starts the run there with a
                      warning (as Lightning's `last`); ckpt_path=auto is the same without the warning
    ckpt_path=PATH    resumes any checkpoint of the same model, data and schedule
"""
from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path

from filelock import FileLock, Timeout

from diffusion_lab.build import locate
from diffusion_lab.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
# What a resumed run must keep: the network, what it is trained on and how, and the data stream's order.
# Everything else (optimizer and LR settings, max_steps, validation cadence, loggers, callbacks, sampler) may change.
FIXED = ("model", "objective", "schedule", "module", "seed", "data.dataset", "data.input_dims", "data.num_classes",
         "data.batch_size", "data.epoch_size", "data.seed", "trainer.accumulate_grad_batches", "optimizer._target_",
         "lr_scheduler._target_")
# Where the same data lives, and how validation samples and what to do with a non-finite step, may change.
MOVABLE = ("data.dataset.root", "data.dataset.download", "module.num_samples", "module.sample_batch_size",
           "module.nonfinite", "module.max_skipped_steps", "module.classifier_scale")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """The checkpoint a run resumes from: `auto` and `last` mean output_dir/checkpoints/last.ckpt when it exists (None:
    a new run), a path that checkpoint."""
    if ckpt_path is None:
        return None
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    if ckpt_path in ("auto", "last"):
        if ckpt_path == "last" and not last.is_file():
            log.warning(f"ckpt_path=last: no checkpoint at {last} yet; starting a new run there")
        return str(last) if last.is_file() else None
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path: no checkpoint at {path}")
    return str(path)


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _fixed(key: str) -> bool:
    def under(prefix: str) -> bool:
        return key == prefix or key.startswith(prefix + ".")
    return any(under(p) for p in FIXED) and not any(under(p) for p in MOVABLE)


@functools.lru_cache(maxsize=None)
def _defaults(target: str) -> dict:
    """The YAML-expressible default arguments of a `_target_` (lists for tuples); {} if it does not resolve."""
    def plain(v) -> bool:
        return v is None or type(v) in (bool, int, float, str) or (type(v) in (list, tuple) and all(map(plain, v)))
    try:
        parameters = inspect.signature(locate(target)).parameters.values()
    except ConfigError:  # a target gone from the code: its config is compared as saved
        return {}
    return {p.name: list(p.default) if type(p.default) is tuple else p.default
            for p in parameters if p.default is not p.empty and plain(p.default)}


def _with_defaults(tree):
    """tree with each `_target_` node's absent arguments set to their defaults: a config that states a default and
    one that leaves it to the constructor (as configs/ does) compare equal."""
    if isinstance(tree, list):
        return [_with_defaults(v) for v in tree]
    if not isinstance(tree, dict):
        return tree
    node = {k: _with_defaults(v) for k, v in tree.items()}
    return {**_defaults(node["_target_"]), **node} if isinstance(node.get("_target_"), str) else node


def config_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """Keys whose resolved value differs between a checkpoint's config and the current one: key -> (saved, now).

    A key absent from a `_target_` node counts as its constructor's default.
    """
    a, b = _flatten(_with_defaults(saved)), _flatten(_with_defaults(current))
    missing = "<absent>"
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(a.keys() | b.keys())
            if k not in ("ckpt_path",) and not k.startswith("paths.") and a.get(k, missing) != b.get(k, missing)}


def check_resume_config(saved: dict, current: dict, ckpt_path: str) -> dict[str, tuple]:
    """Refuses a resume that changes a FIXED key, in one line; returns (and logs) the changes that take effect."""
    changes = config_changes(saved, current)
    refused = [k for k in changes if _fixed(k)]
    if refused:
        k = refused[0]
        more = f" (and {len(refused) - 1} more: {', '.join(refused[1:4])})" if len(refused) > 1 else ""
        raise ConfigError(f"ckpt_path={ckpt_path}: {k} is {changes[k][0]!r} in the checkpoint but {changes[k][1]!r} "
                          f"now{more}; a resumed run keeps its model, data, schedule and seed: set it back, or start "
                          "a new run directory")
    if changes:
        log.info("resuming with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    return changes


class RunDirectory:
    """Holds a run directory for one run: an OS file lock (released when the process dies) and a reuse check.

    Held by the process that writes the run (global rank 0, `writer`). Refuses a directory that another live run holds,
    and one that already holds a run unless this run resumes that run's own checkpoint (resume_from inside
    the directory) or starts it afresh by ckpt_path=auto or last (a directory with a config but no checkpoint yet).
    """

    def __init__(self, path: str | Path, resume_from: str | None = None, auto: bool = False, writer: bool = True):
        self.path, self.resume_from, self.auto, self.writer = Path(path), resume_from, auto, writer
        self._lock = FileLock(self.path / LOCK_FILE)

    def __enter__(self) -> RunDirectory:
        if not self.writer:  # other ranks of a distributed run share rank 0's directory
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(f"hydra.run.dir={self.path} is in use by another run that is still going (it holds "
                              f"{LOCK_FILE}); wait for it, or pick another hydra.run.dir") from None
        problem = self._reuse_problem()
        if problem:
            self._lock.release()
            raise ConfigError(problem)
        return self

    def __exit__(self, *exc) -> None:
        if self.writer:
            self._lock.release()

    def _reuse_problem(self) -> str | None:
        held = self.previous_run()
        if held is None:
            return None
        if self.resume_from is not None:
            if Path(self.resume_from).resolve().is_relative_to(self.path.resolve()):
                return None
            return (f"hydra.run.dir={self.path} already holds a run ({held}); resuming {self.resume_from} "
                    "there would mix two runs: pick a new hydra.run.dir")
        if self.auto and not held.startswith("checkpoints/"):
            return None
        return (f"hydra.run.dir={self.path} already holds a run ({held}); resume it with ckpt_path=auto, "
                "or pick another hydra.run.dir")

    def previous_run(self) -> str | None:
        """What shows that a run wrote here before: a checkpoint, or its config.yaml."""
        ckpts = sorted((self.path / "checkpoints").glob("*.ckpt"))
        if ckpts:
            return f"checkpoints/{ckpts[-1].name}"
        return "config.yaml" if (self.path / "config.yaml").is_file() else None

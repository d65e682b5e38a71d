"""Checks of a composed train config before anything is built: value types against constructor signatures, ranges.

The signature is the schema: each `_target_` node's values are checked against its constructor's annotations,
the top-level keys against the LightningModule's; the optimizer and LR schedule partials are tried on a dummy
parameter, since Lightning builds them only mid-fit.
"""
import enum
import functools
import inspect
import os
import re
import types
import typing
from typing import NamedTuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffusion_lab.build import locate
from diffusion_lab.errors import ConfigError, DiffusionLabError

# Hydra's own keys in a `_target_` node; never constructor arguments.
_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
_WORDS = {int: "an int", float: "a float", bool: "a bool", str: "a string"}
# How torch's optimizers name their arguments in their messages ("Invalid learning rate: -1").
_ALIASES = {"lr": r"learning rate|\blr\b", "eps": r"epsilon|\beps\b", "betas": r"\bbetas?\b"}


class _Allowed(NamedTuple):
    """The YAML values a parameter's annotation allows: simple types, Literal values and any other types."""

    types: tuple = ()
    literals: tuple = ()
    others: tuple = ()  # names of classes a YAML scalar cannot be checked against (Tensor, Accelerator, ...)
    others_take_str: bool = False  # an os.PathLike or Enum member: a string may stand for it

    def accepts(self, value) -> bool:
        """Whether value fits; beside other types only a string is refused, and only when no member takes one."""
        if self.others and (not isinstance(value, str) or self.others_take_str):
            return True
        if any(type(value) is type(v) and value == v for v in self.literals):
            return True
        return type(value) in self.types or (float in self.types and type(value) is int)

    def describe(self) -> str:
        """The allowed values in words: `an int or null`, `one of 'error', 'skip'`."""
        words = [_WORDS[t] for t in _WORDS if t in self.types] + [repr(v) for v in self.literals]
        words += [f"{'an' if n[0].lower() in 'aeiou' else 'a'} {n}" for n in self.others]
        if self.literals and len(words) == len(self.literals):
            words = [f"one of {', '.join(words)}"]
        words += ["null"] * (type(None) in self.types)
        return " or ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} or {words[-1]}"


def _allowed(hint) -> _Allowed | None:
    """What an annotation allows in YAML; None where it says nothing checkable (Any, a forward reference, ...)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_allowed(arg) for arg in typing.get_args(hint)]
        if any(part is None for part in parts):
            return None
        return _Allowed(types=sum((p.types for p in parts), ()), literals=sum((p.literals for p in parts), ()),
                        others=sum((p.others for p in parts), ()), others_take_str=any(p.others_take_str for p in parts))
    if typing.get_origin(hint) is typing.Literal:
        values = typing.get_args(hint)
        return _Allowed(literals=values) if all(type(v) in (int, str) for v in values) else None
    if hint is None or hint is type(None) or hint in _WORDS:
        return _Allowed(types=(type(None) if hint is None else hint,))
    if isinstance(hint, type) and hint is not object:
        return _Allowed(others=(hint.__name__,), others_take_str=issubclass(hint, (os.PathLike, enum.Enum)))
    if typing.get_origin(hint) is not None:  # a container such as list[int] or Callable[..., X]
        return _Allowed(others=(getattr(typing.get_origin(hint), "__name__", str(hint)),))
    return None


def _signature_functions(obj) -> list:
    """A function itself; for a class its `__init__` and, while they take `**kwargs`, its base classes' ones."""
    if not inspect.isclass(obj):
        return [obj]
    functions = []
    for cls in inspect.getmro(obj):
        if cls is not object and "__init__" in vars(cls):
            functions.append(cls.__init__)
            if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
                break
    return functions


@functools.lru_cache(maxsize=None)
def _parameters(target: str) -> dict[str, _Allowed]:
    """What each parameter of target with a checkable annotation accepts (one with no simple member is skipped)."""
    try:
        functions = _signature_functions(locate(target))
    except ConfigError:  # a target that does not resolve is the builder's error to report
        return {}
    allowed = {}
    for fn in reversed(functions):  # the subclass's own annotation wins
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - e.g. a NameError for an import guarded by TYPE_CHECKING
            hints = getattr(fn, "__annotations__", {})
        checkable = {k: _allowed(h) for k, h in hints.items() if k != "return"}
        allowed |= {k: a for k, a in checkable.items() if a and (a.types or a.literals)}
    return allowed


def _show(value) -> str:
    """value as YAML writes it: null, true, 'abc', 1.5."""
    if value is None or type(value) is bool:
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _targets(node, key: str = ""):
    """(dotted key, node) of every node under node, itself included, that has a `_target_`."""
    if isinstance(node, DictConfig) and "_target_" in node.keys():
        yield key, node
    if isinstance(node, DictConfig):  # unresolved: an interpolation or a missing value is a string here
        children = ((f"{key}.{k}".lstrip("."), v) for k, v in node.items_ex(resolve=False))
    else:
        children = ((f"{key}[{i}]", node[i]) for i in range(len(node)) if not OmegaConf.is_interpolation(node, i))
    for child_key, child in children:
        if isinstance(child, (DictConfig, ListConfig)):
            yield from _targets(child, child_key)


def _check_types(node: DictConfig, key: str, target: str) -> None:
    """Refuses a value in node whose type its constructor's annotation does not allow."""
    parameters = _parameters(target)
    for name in node.keys():
        allowed = parameters.get(name)
        if allowed is None or name in _HYDRA_KEYS:
            continue
        try:
            value = node[name]
        except OmegaConfBaseException:  # an interpolation that does not resolve: instantiate reports it
            continue
        if not isinstance(value, (DictConfig, ListConfig)) and not allowed.accepts(value):
            raise ConfigError(f"{key + '.' if key else ''}{name}={_show(value)} must be {allowed.describe()}")


def _check_trainer(trainer: DictConfig) -> None:
    """Ranges Lightning takes and then fails on mid-fit (a modulo by zero) or misreads (max_steps=0 trains nothing)."""
    n = {k: trainer.get(k) for k in ("max_steps", "accumulate_grad_batches", "log_every_n_steps")}
    n = {k: v for k, v in n.items() if type(v) is int}  # a value of another type: _check_types has refused it
    if n.get("max_steps", -1) != -1 and n["max_steps"] < 1:
        raise ConfigError(f"trainer.max_steps={n['max_steps']} must be -1 (no limit) or an int >= 1")
    if n.get("accumulate_grad_batches", 1) < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={n['accumulate_grad_batches']} must be an int >= 1")
    if n.get("log_every_n_steps", 0) < 0:
        raise ConfigError(f"trainer.log_every_n_steps={n['log_every_n_steps']} must be an int >= 0 (0 logs no steps)")
    _check_val_check_interval(trainer)


def _check_val_check_interval(trainer: DictConfig) -> None:
    """An int >= 1 (batches), a time string, or a float in (0, 1] (a fraction of an epoch) if validating by epoch."""
    value, by_epoch = trainer.get("val_check_interval"), trainer.get("check_val_every_n_epoch") is not None
    is_float = type(value) is float
    if type(value) is bool or (type(value) is int and value < 1) or (is_float and not (by_epoch and 0 < value <= 1)):
        floats = ", a float in (0, 1] (a fraction of an epoch)" if by_epoch else ""
        needs = "; a float (a fraction of an epoch) needs trainer.check_val_every_n_epoch set" \
            if is_float and not by_epoch else ""
        raise ConfigError(f"trainer.val_check_interval={_show(value)} must be an int >= 1 (batches between "
                          f"validations){floats} or a time 'DD:HH:MM:SS'{needs}")


def _build_partial(node: DictConfig, key: str, arg):
    """node's partial called on arg; a ValueError or TypeError it raises is a ConfigError naming the key."""
    try:
        return instantiate(node)(arg)
    except DiffusionLabError:
        raise
    except (ValueError, TypeError) as err:
        name, message = node._target_.rsplit(".", 1)[-1], str(err).strip().splitlines()[0]
        for k in node:
            if k not in _HYDRA_KEYS and re.search(_ALIASES.get(k, rf"\b{re.escape(k)}\b"), message, re.IGNORECASE):
                raise ConfigError(f"{key}.{k}={_show(node[k])}: {name} rejects it ({message})") from err
        raise ConfigError(f"{key}: {name} rejects its settings ({message})") from err


# Top-level keys train.py itself reads: what each may be.
RUN_KEYS = {"threads": (lambda v: v is None or (type(v) is int and v >= 1), "null or an int >= 1"),
            "compile": (lambda v: type(v) is bool, "true or false"),
            "memory_check": (lambda v: type(v) is bool, "true or false"),
            "matmul_precision": (lambda v: v in (None, "highest", "high", "medium"), "null, 'highest', 'high' or 'medium'")}


def _check_run_keys(cfg: DictConfig) -> None:
    for key, (ok, allowed) in RUN_KEYS.items():
        if key in cfg and not ok(cfg[key]):
            raise ConfigError(f"{key}={_show(cfg[key])} must be {allowed}")


def check_config(cfg: DictConfig) -> None:
    """Refuses, in a ConfigError naming the key, a train config value of the wrong type or outside its range."""
    module = cfg.get("module")  # top-level keys train.py passes on to the LightningModule: seed, nonfinite, ...
    _check_types(cfg, "", module._target_ if module else "diffusion_lab.training.module.DiffusionModule")
    for key, node in _targets(cfg):
        _check_types(node, key, node._target_)
    _check_run_keys(cfg)
    if cfg.get("trainer"):
        _check_trainer(cfg.trainer)
    if cfg.get("optimizer"):  # built by Lightning only in configure_optimizers, mid-fit: try it now
        optimizer = _build_partial(cfg.optimizer, "optimizer", [torch.nn.Parameter(torch.zeros(1))])
        if cfg.get("lr_scheduler"):
            _build_partial(cfg.lr_scheduler, "lr_scheduler", optimizer)

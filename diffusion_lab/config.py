"""Config plumbing for the entry points: OmegaConf resolvers and one-line reports of user errors."""
import functools
import hashlib
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffusion_lab.errors import DiffusionLabError

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def _if(condition, then, otherwise):
    return then if condition else otherwise


def _run_id(output_dir: str) -> str:
    """A stable id for a run directory: resuming in the same directory continues the same logger run."""
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]


def register_resolvers() -> None:
    """`${if:${conditional},${data.num_classes},0}` picks by a boolean; `${floordiv:a,b}` is a // b."""
    if not OmegaConf.has_resolver("if"):
        OmegaConf.register_new_resolver("if", _if)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id)
    if not OmegaConf.has_resolver("floordiv"):
        OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b))


register_resolvers()


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input, or None for a bug."""
    from hydra.errors import HydraException, InstantiationException

    chain, key = [], None
    while exc is not None:
        chain.append(exc)
        if isinstance(exc, InstantiationException):
            key = key or _full_key(str(exc))
        exc = exc.__cause__ or exc.__context__
    for e in chain:
        if isinstance(e, (DiffusionLabError, OmegaConfBaseException)):
            msg = str(e).strip().splitlines()[0]
            return f"{key}: {msg}" if key and not msg.startswith(key) else msg
    for e in chain:
        if key and not isinstance(e, HydraException):  # a constructor rejected a config value
            return f"{key}: {type(e).__name__}: {str(e).strip().splitlines()[0]}"
    for e in chain:
        if isinstance(e, HydraException):
            return str(e).strip().splitlines()[0]
    return None


def _full_key(message: str) -> str | None:
    for line in message.splitlines():
        if line.startswith("full_key:"):
            return line.split(":", 1)[1].strip() or None
    return None


def report_user_errors(fn):
    """Runs an entry point; a user error becomes `error: <one line>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is the user's mistake
            message = user_error(exc)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper


class CheckOutputDir(Callback):
    """A Hydra callback: refuses, in one line, an output directory that cannot be created or written."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(path: str, key: str) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            probe = Path(path) / ".write_test"
            probe.touch()
            probe.unlink()
        except OSError as err:
            print(f"error: {key}={path} is not a writable directory ({err.strerror or err})", file=sys.stderr)
            sys.exit(2)

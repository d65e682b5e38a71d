"""Config plumbing for the entry points: OmegaConf resolvers and one-line reports of user errors."""
import functools
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffusion_lab.errors import ConfigError, DiffusionLabError, first_line

# Optional packages and the extra that installs each: a user who picks an option needing one is told which.
EXTRAS = {"wandb": "wandb", "tensorboard": "tensorboard", "tensorboardX": "tensorboard", "sklearn": "digits",
          "optuna": "sweep", "submitit": "slurm", "torch_fidelity": "fid", "diffusers": "pretrained",
          "transformers": "pretrained", "datasets": "hf", "huggingface_hub": "hub"}
# Hydra plugins picked by an override: (module, extra).
PLUGINS = {("hparams_search", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
           ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
           **{("hydra/launcher", name): ("hydra_plugins.hydra_submitit_launcher", "slurm")
              for name in ("slurm", "submitit_slurm", "submitit_local")}}


def find_config_dir() -> str:
    """The configs/ folder: $DIFFUSION_LAB_CONFIG_DIR, else the checkout's (clone or editable install), else the
    copy packaged in the installed wheel (diffusion_lab/configs)."""
    package = Path(__file__).resolve().parents[1]
    for folder in (os.environ.get("DIFFUSION_LAB_CONFIG_DIR"), package.parent / "configs", package / "configs"):
        if folder and (Path(folder) / "train.yaml").is_file():
            return str(Path(folder).resolve())
    raise FileNotFoundError(f"no configs/ folder with train.yaml next to {package} or in $DIFFUSION_LAB_CONFIG_DIR; "
                            "reinstall diffusion_lab or set DIFFUSION_LAB_CONFIG_DIR")


CONFIG_DIR = find_config_dir()


def _run_id(output_dir: str) -> str:
    """A stable id for a run directory: resuming in the same directory continues the same logger run."""
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]


def _multirun_job():
    """Hydra's config of this job when it is one of a multirun, else None (a single run, or a config composed
    with Hydra's compose API, where Hydra's runtime is not set)."""
    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get() if HydraConfig.initialized() else None
    return job if job is not None and job.mode == RunMode.MULTIRUN else None


def _run_name(task_name: str, output_dir: str) -> str:
    """A readable run name: `<task_name> <date>_<time>` (the run directory's name) for a single run,
    `<task_name> #<job number> <this job's overrides>` for a job of a multirun."""
    job = _multirun_job()
    if job is not None:
        return f"{task_name} #{job.job.num} {job.job.override_dirname}".rstrip()
    return f"{task_name} {Path(output_dir).name}"


def _sweep_name() -> str | None:
    """The sweep directory's name for a job of a multirun (its jobs share it), None for a single run."""
    job = _multirun_job()
    return Path(job.sweep.dir).name if job is not None else None


def register_resolvers() -> None:
    """`${run_id:dir}`, `${run_name:task,dir}` and `${sweep_name:}` identify a run (see each function);
    `${fast_precision:${trainer.accelerator}}` is speed=fast's precision for the device."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", _run_name)
    if not OmegaConf.has_resolver("sweep_name"):
        OmegaConf.register_new_resolver("sweep_name", _sweep_name)
    if not OmegaConf.has_resolver("fast_precision"):
        OmegaConf.register_new_resolver("fast_precision", _fast_precision)


def _fast_precision(accelerator: str) -> str:
    """speed=fast's trainer.precision: bf16-mixed where the accelerator has native bf16, else 32-true."""
    from diffusion_lab.machine import native_bf16

    return "bf16-mixed" if native_bf16(str(accelerator)) else "32-true"


register_resolvers()


def checkpoint_path(cfg: DictConfig) -> str:
    """The checkpoint a sample/evaluate/export command names: ckpt_path (as train.py calls it) or its alias ckpt."""
    path = cfg.get("ckpt_path") or cfg.get("ckpt")
    if not path:
        raise ConfigError("ckpt_path: which checkpoint? e.g. ckpt_path=outputs/<run>/checkpoints/last.ckpt")
    return str(path)


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
        if isinstance(e, ImportError) and missing_extra(e):
            return f"{key}: {missing_extra(e)}" if key else missing_extra(e)
    for e in chain:
        if isinstance(e, (DiffusionLabError, OmegaConfBaseException)):
            msg = _first_line(e)
            return f"{key}: {msg}" if key and not msg.startswith(key) else msg
    for e in chain:
        if key and not isinstance(e, HydraException):  # a constructor rejected a config value
            return f"{key}: {type(e).__name__}: {_first_line(e)}"
    for e in chain:
        if isinstance(e, HydraException):
            return _first_line(e)
    return None


def missing_extra(exc: ImportError) -> str | None:
    """`needs wandb, which is not installed: pip install "diffusion_lab[wandb]"` when exc is a missing optional package."""
    names = [exc.name] if exc.name else []
    names += re.findall(r"[A-Za-z_][\w.]*", str(exc))  # Lightning's loggers name the package only in the message
    for name in names:
        package = name.split(".")[0]
        if package in EXTRAS:
            return f'needs {package}, which is not installed: pip install "diffusion_lab[{EXTRAS[package]}]"'
    return None


def check_plugins(args: list[str]) -> None:
    """Exits with one line when an override picks a Hydra plugin that is not installed (Hydra's own error is a page)."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        plugin = PLUGINS.get((key, value))
        if plugin and not _importable(plugin[0]):
            print(f'error: {arg} needs the {plugin[0].split(".")[-1]} plugin, which is not installed: '
                  f'pip install "diffusion_lab[{plugin[1]}]"', file=sys.stderr)
            sys.exit(2)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package (hydra_plugins) is missing too
        return False


def quick_help(doc: str) -> str:
    """An entry point's --help without Hydra's composition of every group (seconds): usage and the groups' options."""
    root = Path(CONFIG_DIR)
    lines = [doc.strip(), "", f"Config groups: pick an option with group=option (the files in {root}/<group>/)."]
    for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "hydra"):
        lines.append(f"  {group.name}: {', '.join(sorted(f.stem for f in group.glob('*.yaml')))}")
    lines += ["", "Any key: key=value (trainer.max_steps=500); a new key: +key=value; a sweep: -m key=a,b.",
              "The composed config: --cfg job. Hydra's full help (with the config): --help with any override, "
              "--hydra-help for Hydra's flags."]
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    """exc's own message in one line; for an error re-raised from a DataLoader worker, the original error's message.

    torch re-raises a worker's error in the main process as the same type with the message
    `Caught X in DataLoader worker process N.\nOriginal Traceback ...\n<module>.X: <message>`.
    """
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and lines[1].startswith("Original Traceback"):
        names = (f"{type(exc).__module__}.{type(exc).__qualname__}: ", f"{type(exc).__qualname__}: ")
        for line in reversed(lines[2:]):
            for name in names:
                if line.startswith(name):
                    return line[len(name):].strip()
        return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip(), count=1)
    return first_line(exc, limit=10_000)


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
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):  # unique: runs may start side by side
                pass
        except OSError as err:
            print(f"error: {key}={path} is not a writable directory ({err.strerror or err})", file=sys.stderr)
            sys.exit(2)

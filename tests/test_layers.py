"""The package's layers, read from the tree: the plain library imports torch/numpy/einops/torchvision only,
Lightning lives in training/, Hydra in app/, and imports point down (library <- training <- app)."""
import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "diffusion_lab"
UPPER = {"training": {"lightning", "torch_ema"}, "app": None}  # layer folder -> what it may add (None: anything)
LIBRARY_DEPS = {"torch", "numpy", "einops", "torchvision", "PIL"}  # PIL: torchvision's image type, in the base install
# imported inside the function that needs them: plotting, scikit-learn's digits, FID's Inception, pretrained pipelines,
# Hugging Face datasets and hub, safetensors (export)
OPTIONAL = {"matplotlib", "sklearn", "torchmetrics", "tqdm", "diffusers", "transformers", "datasets", "safetensors",
            "huggingface_hub"}


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 and parts[0] in UPPER else "library"


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.append((node.module, id(node) in top))
    return out


FILES = sorted(PACKAGE.rglob("*.py"))
LIBRARY = [f for f in FILES if layer_of(f) == "library"]


def test_the_tree_has_every_layer():
    layers = {layer_of(f) for f in FILES}
    assert layers == {"library", "training", "app"}, layers
    assert len(LIBRARY) > 20  # core, models, data, evaluation, sampling, pretrained


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    layer = layer_of(path)
    for name, top_level in imports(path):
        root = name.split(".")[0]
        if root in sys.stdlib_module_names or root == "__future__":
            continue
        if root == "diffusion_lab":
            target = name.split(".")[1] if "." in name else ""
            allowed = {"library": (), "training": ("training",), "app": ("training", "app")}[layer]
            assert target not in UPPER or target in allowed, f"{path.name} ({layer}) imports {name}"
        elif layer == "library":
            assert root in LIBRARY_DEPS or (root in OPTIONAL and not top_level), \
                f"{path.name} (library) imports {name}" + ("" if top_level else " (even lazily)")
        elif layer == "training":
            assert root in LIBRARY_DEPS | OPTIONAL | UPPER["training"], f"{path.name} (training) imports {name}"


def test_library_imports_without_lightning_hydra_wandb():
    modules = sorted({module_of(f) for f in LIBRARY})
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'wandb', 'sklearn', 'matplotlib'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout


def test_the_wheel_lists_every_package_of_the_tree():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_of(f) for f in PACKAGE.rglob("__init__.py")} | {"diffusion_lab.configs"}
    assert listed == found

"""The README's results table, built from finished train.py run directories (nothing typed by hand).

    python scripts/results_table.py outputs/mnist_dit_cpu/2026-11-23/21-00-00 ... --readme README.md --images docs/results

For each run: recipe (task_name, and the stage of latent runs), data, optimizer steps, training wall time, machine
and peak memory (summary.json, written by callbacks.summary; a run started from another run's checkpoint with
init_from adds that run's steps and time, and the larger memory), the in-training evaluation's first metric at the
last validation with its sample count and noise floor, and for conditional samples the feature classifier's
accuracy per requested class (callbacks.evaluate's val/accuracy_<k>). --images copies each run's last sample grid
there and shows it in the table; --readme writes the table between the README's results markers, replacing the row of
each recipe given and keeping the rows of the others (rerun one recipe without the other runs' directories).
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_lab.app.runs import logged  # noqa: E402

BEGIN, END = "<!-- results:begin (scripts/results_table.py) -->", "<!-- results:end -->"
HEADER = ("| recipe | data | steps | wall time | machine | peak memory | in-training metric (samples; floor) | "
          "accuracy per requested class 0-9, % (real images) | samples |")


def fail(message: str) -> None:
    sys.exit(f"error: {message}")


def read_run(run_dir: Path) -> tuple[dict, dict]:
    """(resolved config, summary.json) of a finished run, or one error line naming what is missing."""
    config, summary = run_dir / "config.yaml", run_dir / "summary.json"
    if not config.is_file() or not summary.is_file():
        fail(f"{run_dir}: not a finished train.py run (needs config.yaml and summary.json, which callbacks.summary "
             "writes when training ends)")
    return OmegaConf.to_container(OmegaConf.load(config), resolve=True), json.loads(summary.read_text())


def cost(config: dict, summary: dict) -> dict:
    """steps, seconds and peak memory of a run and of the runs its init_from checkpoint chain came from."""
    out = {"steps": [summary["steps"]], "seconds": summary["train_seconds"], "machine": summary["machine"],
           "memory": max(summary["peak_host_memory_bytes"] or 0, summary["peak_cuda_memory_bytes"] or 0)}
    init_from = (config.get("module") or {}).get("init_from")
    if init_from:
        before = cost(*read_run(Path(init_from).resolve().parents[1]))  # <run>/checkpoints/last.ckpt
        out["steps"] = before["steps"] + out["steps"]
        out["seconds"] += before["seconds"]
        out["memory"] = max(out["memory"], before["memory"])
    return out


def data_name(config: dict) -> str:
    dataset = config["data"]["dataset"]
    split = f" {dataset['split']}" if "split" in dataset else ""
    return f"{dataset['_target_'].rsplit('.', 1)[-1]}{split}, {'x'.join(map(str, config['data']['input_dims']))}"


def quality(values: dict) -> tuple[str, str]:
    """(the first evaluation metric with samples and floor, per-class accuracies) at the last validation."""
    metric = next((m for m in ("classifier_fd", "swd") if f"val/{m}" in values), None)
    if metric is None:
        return "not evaluated", ""
    (step, value), samples = values[f"val/{metric}"][-1], int(values["val/eval_samples"][-1][1])
    floor = values[f"val/{metric}_floor"][0][1]
    text = f"{metric} {value:.4g} ({samples} vs {samples} real; floor {floor:.4g})"
    classes = sorted((int(k.rsplit("_", 1)[1]), v[-1][1]) for k, v in values.items()
                     if k.startswith("val/accuracy_") and k.rsplit("_", 1)[1].isdigit())
    if not classes:
        return text, "unconditional"
    real = values.get("val/accuracy_floor", [(0, float("nan"))])[0][1]
    return text, (" ".join(f"{100 * a:.0f}" for _, a in classes) +
                  f" (mean {100 * values['val/accuracy'][-1][1]:.1f}; real {100 * real:.1f})")


def last_grid(run_dir: Path) -> Path | None:
    grids = sorted((run_dir / "samples").glob("*.png"))
    return grids[-1] if grids else None


def row(run_dir: Path, images: Path | None, relative_to: Path) -> str:
    config, summary = read_run(run_dir)
    c, values = cost(config, summary), logged(run_dir)
    stage = (config.get("module") or {}).get("mode")
    recipe = config["task_name"] + (f" ({stage})" if stage else "")
    metric, accuracy = quality(values)
    picture = ""
    grid = last_grid(run_dir)
    if images is not None and grid is not None:
        images.mkdir(parents=True, exist_ok=True)
        target = images / f"{recipe.split()[0]}.png"
        shutil.copyfile(grid, target)
        picture = f'<img src="{target.resolve().relative_to(relative_to.resolve())}" width="120">'
    minutes = f"{c['seconds'] / 60:.1f} min"
    return (f"| {recipe} | {data_name(config)} | {' + '.join(map(str, c['steps']))} | {minutes} | {c['machine']} | "
            f"{c['memory'] / 2**30:.1f} GiB | {metric} | {accuracy} | {picture} |")


def recipe_of(line: str) -> str:
    return line.strip().strip("|").split("|")[0].strip()


def table(rows: list[str]) -> str:
    return "\n".join([HEADER, "|" + "---|" * HEADER.count(" | ") + "---|", *rows])


def merge(old_section: str, rows: list[str]) -> list[str]:
    """The rows of old_section with each recipe in rows replaced in place; recipes new to the table go last."""
    new = {recipe_of(r): r for r in rows}
    kept = [line for line in old_section.splitlines()[2:] if line.startswith("| ")]  # below the header and rule
    merged = [new.pop(recipe_of(line), line) for line in kept]
    return merged + list(new.values())


def write_section(readme: Path, rows: list[str]) -> str:
    content = readme.read_text()
    if BEGIN not in content or END not in content:
        fail(f"{readme}: no results section; it needs the two marker lines {BEGIN} and {END}")
    head, rest = content.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    text = table(merge(old.strip() if old.strip().startswith(HEADER) else "", rows))
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--readme", type=Path, help="write the table between this file's results markers")
    parser.add_argument("--images", type=Path, help="copy each run's last sample grid into this folder")
    args = parser.parse_args()
    relative_to = args.readme.parent if args.readme else Path.cwd()
    rows = [row(d, args.images, relative_to) for d in args.run_dirs]
    if args.readme:
        print(write_section(args.readme, rows))
        print(f"wrote {args.readme}")
    else:
        print(table(rows))


if __name__ == "__main__":
    main()

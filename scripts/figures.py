"""Every figure in README.md and docs/ comes from an artifact committed in docs/artifacts/, through this script.

    python scripts/figures.py collect run RUN_DIR [--name NAME]       # a train.py run -> docs/artifacts/runs/NAME.json
    python scripts/figures.py collect evaluation DIR --name NAME --group G --label TEXT   # evaluate.py or
                                                                      # reconstruct_ema.py run
    python scripts/figures.py collect benchmark DIR --name NAME       # a scripts/benchmark.py run
    python scripts/figures.py render [--check]                        # every figure block and plot, regenerated

An artifact is a small JSON file: what ran (command, commit, date, machine: CPU model, native bf16, threads) and what
it measured (sample counts, floors, values); a run's also keeps its last sample grid as NAME.png. `render` rewrites
each block between `<!-- figure: KIND [ARG] -->` and `<!-- /figure -->` in README.md and docs/*.md, and the plots in
docs/figures/; `--check` only says which blocks differ from what the artifacts give (exit 1), and tests/test_figures.py
runs it on the repository.
"""
import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusion_lab.evaluation import logged  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- figure: ([\w-]+)(?: ([\w./-]+))? -->\n)(.*?)(<!-- /figure -->)", re.S)


def fail(message: str) -> None:
    sys.exit(f"error: {message}")


def relative(path: Path, docs: Path) -> str:
    """path as a markdown file in folder docs links it."""
    return os.path.relpath(path, docs)


def read_json(path: Path) -> dict:
    if not path.is_file():
        fail(f"{path}: missing")
    return json.loads(path.read_text())


def write_json(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    return path


# collect: run directories -> artifacts


def run_record(run_dir: Path) -> dict:
    """What an artifact keeps of a finished train.py run (and of the run its init_from checkpoint came from)."""
    from omegaconf import OmegaConf

    summary = read_json(run_dir / "summary.json")
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    values = logged(run_dir)
    curve = {}
    for key, points in values.items():
        if key.startswith("val/") and not key.endswith("_floor") and key != "val/loss":
            for step, value in points:
                curve.setdefault(step, {"step": step})[key[4:]] = value
    dataset = config["data"]["dataset"]
    split = f" {dataset['split']}" if "split" in dataset else ""
    record = {**summary, "recipe": config["task_name"], "stage": (config.get("module") or {}).get("stage"),
              "data": f"{dataset['_target_'].rsplit('.', 1)[-1]}{split}, {'x'.join(map(str, config['data']['input_dims']))}",
              "floor": {k[4:-6]: v[0][1] for k, v in values.items() if k.endswith("_floor")},
              "curve": [curve[s] for s in sorted(curve)]}
    init_from = (config.get("module") or {}).get("init_from")
    if init_from:  # a later stage of latent diffusion: the stages before it are part of its cost
        record["before"] = run_record(Path(init_from).resolve().parents[1])  # <run>/checkpoints/last.ckpt
    return record


def collect_run(run_dir: Path, name: str | None) -> Path:
    if not (run_dir / "summary.json").is_file():
        fail(f"{run_dir}: not a finished train.py run (no summary.json, which callbacks.summary writes at the end)")
    record = run_record(run_dir)
    name = name or record["recipe"]
    folder = ROOT / "docs" / "artifacts" / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    grids = sorted((run_dir / "samples").glob("*.png"))
    if grids:
        shutil.copyfile(grids[-1], folder / f"{name}.png")
        record["grid"] = f"{name}.png"
    return write_json(folder / f"{name}.json", {"name": name, **record})


def collect_evaluation(eval_dir: Path, name: str, group: str, label: str) -> Path:
    posthoc = eval_dir / "reconstruction.json"  # scripts/reconstruct_ema.py's, else scripts/evaluate.py's
    record = read_json(posthoc if posthoc.is_file() else eval_dir / "evaluation.json")
    if "metrics" not in record:
        record["metrics"] = [record["metric"]] + [k for k in record["rows"][0] if f"{k}_floor" in record["rows"][0]
                                                  and k != record["metric"]]
    return write_json(ROOT / "docs" / "artifacts" / "evaluations" / f"{name}.json",
                      {"name": name, "group": group, "label": label, **record})


def collect_benchmark(bench_dir: Path, name: str) -> Path:
    """scripts/benchmark.py's benchmark.json, or scripts/benchmarking/concurrent_jobs.py's concurrent.json."""
    source = next((bench_dir / f for f in ("benchmark.json", "concurrent.json", "profile.json")
                   if (bench_dir / f).is_file()),
                  bench_dir / "benchmark.json")
    return write_json(ROOT / "docs" / "artifacts" / "benchmarks" / f"{name}.json", {"name": name, **read_json(source)})


# render: artifacts -> figure blocks and plots


def artifacts(kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((ROOT / "docs" / "artifacts" / kind).glob("*.json"))]


def machine(r: dict) -> str:
    bf16 = "native bf16" if r.get("native_bf16") else "no native bf16"
    threads = f"{r['threads']} thread{'s' if r['threads'] != 1 else ''}"
    return f"{r['cpu']} ({r['cores']} cores, {threads}, {bf16})"


def commit(r: dict) -> str:
    """The short commit the result was measured at, `+changes` when the tree had uncommitted changes."""
    return f"{str(r.get('commit'))[:7]}{'+changes' if r.get('dirty') else ''}"


def command(r: dict) -> str:
    """The command as a user types it: without the hydra.run.dir the measurement added."""
    return re.sub(r" hydra\.run\.dir=\S+", "", r["command"])


def main_metric(r: dict) -> str | None:
    return next((m for m in ("classifier_fd", "swd") if m in r["floor"]), None)


def cost(r: dict) -> tuple[list[int], float, float]:
    """(steps of each stage, training seconds, evaluation seconds), the stages it started from included."""
    steps, train, val = [r["steps"]], r["train_seconds"], r.get("validation_seconds", 0.0)
    if "before" in r:
        s, t, v = cost(r["before"])
        steps, train, val = s + steps, train + t, val + v
    return steps, train, val


def final_quality(r: dict) -> tuple[str, str]:
    metric = main_metric(r)
    if metric is None:
        return "not evaluated", ""
    last = r["curve"][-1]
    text = f"{metric} {last[metric]:.4g} ({int(last['eval_samples'])} vs as many real; floor {r['floor'][metric]:.4g})"
    classes = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in last.items() if re.fullmatch(r"accuracy_\d+", k))
    if not classes:
        return text, "unconditional"
    real = r["floor"].get("accuracy", float("nan"))
    return text, " ".join(f"{100 * a:.0f}" for _, a in classes) + f" (mean {100 * last['accuracy']:.1f}; real {100 * real:.1f})"


def render_results(_: str | None, docs: Path) -> str:
    lines = ["| recipe | data | steps | training (evaluation) | machine | peak memory | metric at the end (samples; "
             "floor) | accuracy per class 0-9, % (real digits) | samples |", "|---" * 9 + "|"]
    for r in artifacts("runs"):
        steps, train, val = cost(r)
        quality, accuracy = final_quality(r)
        grid = r.get("grid") and f'<img src="{relative(ROOT / "docs/artifacts/runs" / r["grid"], docs)}" width="120">'
        recipe = r["name"] + (f" ({r['stage']})" if r.get("stage") else "")
        memory = max(r.get("peak_host_memory_bytes") or 0, r.get("peak_cuda_memory_bytes") or 0) / 2**30
        lines.append(f"| {recipe} | {r['data']} | {' + '.join(map(str, steps))} | {train / 60:.1f} min "
                     f"({val / 60:.1f} min) | {machine(r)} | {memory:.1f} GiB | {quality} | {accuracy} | {grid or ''} |")
    return "\n".join(lines)


def render_run(name: str, docs: Path) -> str:
    """One run in a sentence, with its picture."""
    r = read_json(ROOT / "docs" / "artifacts" / "runs" / f"{name}.json")
    steps, train, val = cost(r)
    metric = main_metric(r)
    score = f"; val/{metric} {r['curve'][-1][metric]:.4g} (floor {r['floor'][metric]:.4g}, " \
            f"{int(r['curve'][-1]['eval_samples'])} samples)" if metric else ""
    return (f"`{command(r)}`: {' + '.join(map(str, steps))} steps in {train / 60:.1f} min of training "
            f"(+{val / 60:.1f} min evaluating) on {machine(r)}{score}; commit {commit(r)}, {r['date']}.\n\n"
            f"![{name}]({relative(ROOT / 'docs/artifacts/runs' / r['grid'], docs)})")


def plot_curves(runs: list[dict], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, r in enumerate(runs):
        t0 = cost(r["before"])[1] if "before" in r else 0.0
        points = [((t0 + p["train_seconds"]) / 60, p[metric]) for p in r["curve"] if metric in p]
        ax.plot(*zip(*points), "o-", color=f"C{i}", label=r["name"])
        ax.axhline(r["floor"][metric], color=f"C{i}", ls=":", lw=1)
    ax.set(xlabel="training minutes (evaluation excluded)", ylabel=f"{metric} (dotted: floor)", yscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_curves(shape: str, docs: Path) -> str:
    """The metric against training time for every run on data of one shape (1x16x16, ...), and when each got within
    three and two floors of the floor (metric <= 3 x floor, 2 x floor)."""
    runs = [r for r in artifacts("runs") if r["data"].endswith(shape) and main_metric(r)]
    metric = main_metric(runs[0])
    plot_curves(runs, ROOT / "docs" / "figures" / f"curves_{shape}.png", metric)
    picture = relative(ROOT / "docs" / "figures" / f"curves_{shape}.png", docs)
    lines = [f"![{metric} against training time, {shape}]({picture})", "",
             f"| recipe | {metric} at the end (floor) | minutes to 3 x floor | minutes to 2 x floor | machine |",
             "|---|---|---|---|---|"]
    for r in runs:
        t0, floor = (cost(r["before"])[1] if "before" in r else 0.0), r["floor"][metric]
        reach = [next((f"{(t0 + p['train_seconds']) / 60:.1f}" for p in r["curve"] if p.get(metric, 1e9) <= k * floor),
                      "not reached") for k in (3, 2)]
        lines.append(f"| {r['name']} | {r['curve'][-1][metric]:.4g} ({floor:.4g}) | {reach[0]} | {reach[1]} | "
                     f"{machine(r)} |")
    return "\n".join(lines)


def render_nfe(group: str, docs: Path) -> str:
    """One row per evaluation artifact of the group, one column per NFE (the nearest grid point; its own NFE in
    brackets where it differs), and the floor."""
    evals = [e for e in artifacts("evaluations") if e["group"] == group]
    if not evals:
        fail(f"figure nfe {group}: no evaluation artifact of that group in docs/artifacts/evaluations")
    metric = evals[0]["metrics"][0]
    columns = sorted({row["nfe"] for e in evals for row in e["rows"]})
    lines = [f"| {metric} at NFE ({evals[0]['num_samples']} samples) | " + " | ".join(map(str, columns)) + " | floor |",
             "|---" * (len(columns) + 2) + "|"]
    for e in evals:
        by_nfe = {row["nfe"]: row[metric] for row in e["rows"]}
        cells = [f"{by_nfe[n]:.3g}" if n in by_nfe else "" for n in columns]
        lines.append(f"| {e['label']} | " + " | ".join(cells) + f" | {e['rows'][0][metric + '_floor']:.3g} |")
    return "\n".join(lines)


SETTING_COLUMNS = ("ema", "fit_error", "guidance", "guidance_scale", "steps", "nfe")


def render_table(group: str, docs: Path) -> str:
    """Every row of the group's evaluation artifacts: its settings, each metric with its floor, and the sample count;
    the machine and command under the table."""
    evals = [e for e in artifacts("evaluations") if e["group"] == group]
    if not evals:
        fail(f"figure table {group}: no evaluation artifact of that group in docs/artifacts/evaluations")
    metrics = [m for m in dict.fromkeys(m for e in evals for m in e["metrics"]) if not re.fullmatch(r"accuracy_\d+", m)]
    settings = [c for c in SETTING_COLUMNS if any(row.get(c) is not None for e in evals for row in e["rows"])]
    lines = ["| run | " + " | ".join(settings) + " | " + " | ".join(f"{m} (floor)" for m in metrics) + " | samples |",
             "|---" * (len(settings) + len(metrics) + 2) + "|"]
    for e in evals:
        for row in e["rows"]:
            cells = [_cell(c, row.get(c)) for c in settings]
            cells += [f"{row[m]:.4g} ({row[m + '_floor']:.3g})" if m in row else "" for m in metrics]
            lines.append(f"| {e['label']} | " + " | ".join(cells) + f" | {e.get('num_samples') or row.get('num_samples')} |")
    where = sorted({f"{machine(e)}, commit {commit(e)}" for e in evals})
    return "\n".join(lines + ["", "Measured on " + "; ".join(where) + ". A difference below the floor is noise."])


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if column == "fit_error":
        return f"{100 * value:.1f}%"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def render_benchmark(name: str, docs: Path) -> str:
    from benchmarking.report import sampling_table, training_table

    b = read_json(ROOT / "docs" / "artifacts" / "benchmarks" / f"{name}.json")
    return "\n".join([*training_table(b["machine"], b["workloads"]), "", *sampling_table(b["workloads"])])


def render_concurrent(name: str, docs: Path) -> str:
    """Two jobs side by side with torch's default threads and with a share of the cores each."""
    b = read_json(ROOT / "docs" / "artifacts" / "benchmarks" / f"{name}.json")
    lines = ["| two jobs at once, threads per job | training seconds of each | both done after (s) |", "|---|---|---|"]
    lines += [f"| {r['threads']} | {' and '.join(f'{s:.1f}' for s in r['train_seconds'])} | {r['wall_seconds']:.0f} |"
              for r in b["rows"]]
    return "\n".join(lines + ["", f"`train.py {' '.join(b['overrides'])}` twice at once on {machine(b)}; commit "
                                   f"{commit(b)}, {b['date']}."])


def render_profile(name: str, docs: Path) -> str:
    """Each precision's step time and the shares of its self CPU time by operator family."""
    b = read_json(ROOT / "docs" / "artifacts" / "benchmarks" / f"{name}.json")
    precisions = list(b["profile"])
    families = list(dict.fromkeys(f for r in b["profile"].values() for f in r["families"]))
    lines = ["| share of the step's CPU time | " + " | ".join(precisions) + " |", "|---" * (len(precisions) + 1) + "|",
             "| ms per step (profiled) | " + " | ".join(f"{b['profile'][p]['step_ms_profiled']:.0f}" for p in precisions)
             + " |"]
    lines += [f"| {f} | " + " | ".join(f"{100 * b['profile'][p]['families'].get(f, 0):.0f}%" for p in precisions) + " |"
              for f in families]
    return "\n".join(lines + ["", f"Workload `{b['workload']}` on {machine(b)}; commit {commit(b)}, "
                                   f"{b['date']}; `{b['command']}`."])


def render_gallery(_: str | None, docs: Path) -> str:
    """The last sample grid of every recipe's run artifact of image data (a variant of a recipe is left out), in one row."""
    runs = [r for r in artifacts("runs") if r.get("grid") and "x" in r["data"]
            and (ROOT / "configs" / "experiment" / f"{r['name']}.yaml").is_file()]
    return "\n".join(["| " + " | ".join(r["name"] for r in runs) + " |", "|---" * len(runs) + "|",
                      "| " + " | ".join(f'<img src="{relative(ROOT / "docs/artifacts/runs" / r["grid"], docs)}" '
                                        'width="140">' for r in runs) + " |"])


def render_recipes(_: str | None, docs: Path) -> str:
    """Every experiment file's first comment line (what it is) and its `# Sized for:` line."""
    lines = ["| experiment | what | sized for |", "|---|---|---|"]
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        comments = [line[2:] for line in path.read_text().splitlines()[1:] if line.startswith("# ")]
        sized = next((c.split(":", 1)[1].strip() for c in comments if c.startswith("Sized for:")), "")
        lines.append(f"| `{path.stem}` | {comments[0] if comments else ''} | {sized} |")
    return "\n".join(lines)


RENDERERS = {"results": render_results, "run": render_run, "curves": render_curves, "nfe": render_nfe,
             "benchmark": render_benchmark, "gallery": render_gallery, "recipes": render_recipes, "table": render_table,
             "concurrent": render_concurrent, "profile": render_profile}


def render(check: bool) -> int:
    """Rewrites (or with check, compares) every figure block; returns the number of blocks that differed."""
    stale = 0
    for doc in [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if p.is_file()]:
        text = doc.read_text()

        def block(m: re.Match) -> str:
            nonlocal stale
            if m.group(2) not in RENDERERS:
                fail(f"{doc}: unknown figure kind {m.group(2)!r}; kinds: {sorted(RENDERERS)}")
            body = RENDERERS[m.group(2)](m.group(3), doc.parent) + "\n"
            if body != m.group(4):
                stale += 1
                print(f"{doc.relative_to(ROOT)}: figure {m.group(2)} {m.group(3) or ''} {'is stale' if check else 'rewritten'}")
            return m.group(1) + body + m.group(5)

        new = BLOCK.sub(block, text)
        if not check and new != text:
            doc.write_text(new)
    return stale


def main() -> None:
    global ROOT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="an artifact from a run directory")
    collect.add_argument("kind", choices=["run", "evaluation", "benchmark"])
    collect.add_argument("dir", type=Path)
    collect.add_argument("--name")
    collect.add_argument("--group", help="evaluation: the table it belongs to")
    collect.add_argument("--label", help="evaluation: its row in that table")
    check = sub.add_parser("render", help="the figure blocks and plots from the artifacts")
    check.add_argument("--check", action="store_true", help="only report stale blocks (exit 1 if any)")
    parser.add_argument("--root", type=Path, default=None, help="the repository whose docs and artifacts to use")
    args = parser.parse_args()
    ROOT = (args.root or ROOT).resolve()
    if args.command == "render":
        stale = render(args.check)
        sys.exit(1 if args.check and stale else 0)
    if args.kind != "run" and not args.name:
        fail(f"collect {args.kind} needs --name")
    if args.kind == "run":
        print(f"wrote {collect_run(args.dir, args.name)}")
    elif args.kind == "evaluation":
        if not (args.group and args.label):
            fail("collect evaluation needs --group and --label")
        print(f"wrote {collect_evaluation(args.dir, args.name, args.group, args.label)}")
    else:
        print(f"wrote {collect_benchmark(args.dir, args.name)}")


if __name__ == "__main__":
    main()

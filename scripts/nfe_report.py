"""Quality against network evaluations from scripts/evaluate.py sweeps: a README table and a plot.

    python scripts/nfe_report.py "DPM-Solver++(2M)=outputs/nfe/dpmpp" "DDIM=outputs/nfe/ddim" \
        --section samplers-digits --readme README.md --plot docs/nfe/samplers_digits.png

Each LABEL=DIR is a finished evaluate.py run (its metrics.csv: one row per grid point with nfe, the metric and the
metric's floor). The table has one row per label and one column per --nfe value (the row's grid point nearest to it,
its own NFE in brackets where it differs, as Heun's 2 evaluations per step make it), then the floor; the plot draws
the metric against NFE per label with the floor dashed. --readme writes the table between the README's markers
<!-- nfe:SECTION:begin --> and <!-- nfe:SECTION:end -->.
"""
import argparse
import csv
import sys
from pathlib import Path



def fail(message: str) -> None:
    sys.exit(f"error: {message}")


def read_sweep(run_dir: Path) -> tuple[str, list[tuple[int, float]], float]:
    """(metric name, [(nfe, value)] by NFE, floor) of an evaluate.py run directory."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        fail(f"{run_dir}: no metrics.csv (not a finished scripts/evaluate.py run)")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    if "nfe" not in columns:
        fail(f"{path}: no nfe column")
    metric = next((c for c in columns[columns.index("nfe") + 1:] if not c.endswith("_floor")), None)
    if metric is None or f"{metric}_floor" not in columns:
        fail(f"{path}: needs a metric column and its _floor")
    points = sorted((int(r["nfe"]), float(r[metric])) for r in rows)
    return metric, points, float(rows[0][f"{metric}_floor"])


def cell(points: list[tuple[int, float]], nfe: int) -> str:
    """The value at the grid point nearest to nfe (within 25%), with that point's NFE where it differs."""
    got, value = min(points, key=lambda p: abs(p[0] - nfe))
    if abs(got - nfe) > 0.25 * nfe:
        return ""
    return f"{value:.3g}" + ("" if got == nfe else f" ({got})")


def table(sweeps: dict[str, tuple], columns: list[int]) -> str:
    metrics = {m for m, _, _ in sweeps.values()}
    if len(metrics) != 1:
        fail(f"the runs report different metrics {sorted(metrics)}: compare one metric per table")
    lines = [f"| {metrics.pop()} at NFE | " + " | ".join(map(str, columns)) + " | floor |",
             "|---|" + "---|" * (len(columns) + 1)]
    for label, (_, points, floor) in sweeps.items():
        lines.append(f"| {label} | " + " | ".join(cell(points, n) for n in columns) + f" | {floor:.3g} |")
    return "\n".join(lines)


def plot(sweeps: dict[str, tuple], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, (metric, points, floor)) in enumerate(sweeps.items()):
        ax.plot(*zip(*points), marker="o", color=f"C{i % 10}", label=label)
        ax.set_ylabel(metric)
    floor = next(iter(sweeps.values()))[2]
    ax.axhline(floor, color="0.5", linestyle="--", label=f"floor (real vs real) {floor:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_section(readme: Path, section: str, text: str) -> None:
    begin, end = f"<!-- nfe:{section}:begin -->", f"<!-- nfe:{section}:end -->"
    content = readme.read_text()
    if begin not in content or end not in content:
        fail(f"{readme}: no section {section}; it needs the two marker lines {begin} and {end}")
    head, rest = content.split(begin, 1)
    readme.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=EVALUATE_RUN_DIR")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50], help="table columns")
    parser.add_argument("--readme", type=Path)
    parser.add_argument("--section", help="the README section's name (with --readme)")
    parser.add_argument("--plot", type=Path, help="write the plot here")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    if any("=" not in r for r in args.runs):
        fail(f"runs: {next(r for r in args.runs if '=' not in r)!r} is not LABEL=DIR")
    if args.readme and not args.section:
        fail("--readme needs --section")
    sweeps = {label: read_sweep(Path(d)) for label, d in (r.split("=", 1) for r in args.runs)}
    text = table(sweeps, args.nfe)
    print(text)
    if args.plot:
        print(f"wrote {plot(sweeps, args.plot, args.title)}")
    if args.readme:
        write_section(args.readme, args.section, text)
        print(f"wrote {args.readme}")


if __name__ == "__main__":
    main()

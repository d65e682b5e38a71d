"""Two CPU training jobs side by side, with torch's default threads and with `threads=N/2` each: the cost of
oversubscription. `python scripts/benchmarking/concurrent_jobs.py --out DIR [-- OVERRIDES]` writes DIR/concurrent.json
(scripts/figures.py collect benchmark DIR --name NAME).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from diffusion_lab.machine import provenance  # noqa: E402


def side_by_side(out: Path, overrides: list[str], threads: int | None) -> dict:
    """Starts two train.py jobs at once; their training seconds (summary.json) and the wall time of the pair."""
    extra = [f"threads={threads}"] if threads else []
    env = {**os.environ, "WANDB_MODE": "offline"}
    t0 = time.perf_counter()
    jobs = [subprocess.Popen([sys.executable, "train.py", *overrides, *extra, f"hydra.run.dir={out / f'job{i}'}"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
    errors = [j.communicate()[1] for j in jobs]
    if any(j.returncode for j in jobs):
        sys.exit(f"error: a job failed: {errors[0][-500:] or errors[1][-500:]}")
    seconds = [json.loads((out / f"job{i}" / "summary.json").read_text())["train_seconds"] for i in range(2)]
    return {"threads": threads or "torch default", "train_seconds": seconds, "wall_seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs="*", default=["experiment=digits_dit", "trainer.max_steps=300",
                                                    "trainer.val_check_interval=300", "callbacks.evaluate=null",
                                                    "trainer.enable_progress_bar=false", "logger=csv"])
    args = p.parse_args()
    share = max(1, len(os.sched_getaffinity(0)) // 2)  # each job its half of the cores this process may use
    rows = [side_by_side(args.out / "default", args.overrides, None),
            side_by_side(args.out / "shared", args.overrides, share)]
    for r in rows:
        print(f"threads {r['threads']}: training seconds {r['train_seconds'][0]:.1f} and {r['train_seconds'][1]:.1f}, "
              f"pair wall {r['wall_seconds']:.0f} s")
    record = {"overrides": args.overrides, "rows": rows, **provenance()}
    (args.out / "concurrent.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

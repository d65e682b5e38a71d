"""The parts of `python scripts/benchmark.py`: measure (timers), workloads (what is timed), report (JSON, markdown)."""

"""Cold wall time of `unlearnspec validate specs/` (fresh interpreter each run).

Last line: the median wall seconds over the runs. Target: <= 1.0 s on a 2-core machine.
Usage: python benchmarks/bench_validate.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "unlearnspec", "validate", "specs/", "--quiet"]
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    n_specs = sum(1 for p in (REPO / "specs").rglob("*.y*ml"))
    print(f"files={n_specs} runs={args.runs} min={min(times):.3f}s max={max(times):.3f}s")
    print(f"validate_median_seconds={statistics.median(times):.3f}")


if __name__ == "__main__":
    main()

"""Submission latency on a live SLURM cluster through submitit: one job, and an array of 10.

Run on a machine with a cluster up (tests/slurm/start-cluster.sh), from the repo root:
    PYTHONPATH=$PWD python benchmarks/bench_slurm_submit.py [--partition debug]
Prints JSON: seconds from submit to RUNNING (as squeue/scontrol shows it, polled every 50 ms) and to the
function's first line, for one job and for each job of a 10-job array, plus what submitit's own state
query reported (without a slurmdbd it cannot see any state).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import submitit

REPO = Path(__file__).resolve().parents[1]


def started_at(sleep: float) -> float:
    t = time.time()
    time.sleep(sleep)
    return t


def running_times(job_ids: list[str], t_submit: float, timeout: float = 300) -> dict[str, float]:
    """First time each job is seen RUNNING (or already finished) by squeue, relative to t_submit."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(job_ids) and time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join({j.split("_")[0] for j in job_ids})],
            capture_output=True,
            text=True,
        ).stdout
        states = dict(line.split("|") for line in out.splitlines() if "|" in line)
        now = time.time() - t_submit
        for j in job_ids:
            if j not in seen and states.get(j, "GONE") in ("RUNNING", "COMPLETING", "GONE"):
                seen[j] = now
        time.sleep(0.05)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--array", type=int, default=10)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="us-bench-slurm-"))
    ex = submitit.AutoExecutor(folder=folder / "%j")
    ex.update_parameters(
        slurm_partition=args.partition,
        timeout_min=5,
        cpus_per_task=1,
        slurm_setup=[f"export PYTHONPATH={REPO}:${{PYTHONPATH:-}}"],
    )
    report: dict = {"cluster": ex.cluster, "folder": str(folder)}

    t0 = time.time()
    job = ex.submit(started_at, 0.5)
    report["one_submit_call_s"] = round(time.time() - t0, 3)
    run = running_times([job.job_id], t0)
    began = job.result() - t0
    report["one_to_running_s"] = round(run[job.job_id], 2)
    report["one_to_function_start_s"] = round(began, 2)
    report["one_submitit_state"] = job.watcher.get_state(job.job_id, mode="force")

    t0 = time.time()
    jobs = ex.map_array(started_at, [0.5] * args.array)
    report["array_submit_call_s"] = round(time.time() - t0, 3)
    run = running_times([j.job_id for j in jobs], t0)
    starts = sorted(j.result() - t0 for j in jobs)
    report["array_to_running_s"] = [round(run[j.job_id], 2) for j in jobs]
    report["array_to_function_start_s"] = {
        "first": round(starts[0], 2),
        "median": round(statistics.median(starts), 2),
        "last": round(starts[-1], 2),
    }
    report["array_all_done_s"] = round(time.time() - t0, 2)
    report["array_submitit_states"] = sorted({j.watcher.get_state(j.job_id, mode="force") for j in jobs})
    report["submitit_sacct_calls"] = job.watcher.num_calls
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()

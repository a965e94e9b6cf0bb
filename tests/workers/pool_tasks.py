"""Stand-ins for the pool's per-job work (PoolExecutor.work): they record, in a worker process, when a job
ran and what that process sees (GPU set, threads, numerics pins, whether torch was loaded), then
succeed or fail as the test asks. No training: the scheduling is what is under test."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from unlearnspec.run.executors.worker import JobResult

LOG = "UNLEARNSPEC_TEST_POOL_LOG"
"""Folder each job writes its record to."""
FAIL = "UNLEARNSPEC_TEST_POOL_FAIL"
"""Comma-separated job ids that fail (recorded failure, as a diverged point)."""


def record(job_id: str, job_hash: str) -> JobResult:
    start = time.time()
    seen = {
        "job": job_id,
        "pid": os.getpid(),
        "start": start,
        "torch_loaded": "torch" in sys.modules,
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "aten": os.environ.get("ATEN_CPU_CAPABILITY"),
    }
    time.sleep(0.4)
    failed = job_id in os.environ.get(FAIL, "").split(",")
    seen["end"] = time.time()
    (Path(os.environ[LOG]) / (job_id.replace(":", "_").replace("/", "_") + ".json")).write_text(json.dumps(seen))
    return JobResult(
        job_id, "failed" if failed else "ok", "injected failure" if failed else None, seen["end"] - start, os.getpid()
    )


def read_log(folder: Path) -> dict[str, dict]:
    return {d["job"]: d for d in (json.loads(p.read_text()) for p in folder.glob("*.json"))}

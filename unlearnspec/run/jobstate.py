"""Where a job of the plan stands, read from its folder: done, failed (recorded so) or todo."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import ValidationError

from unlearnspec.run.plan import SCORES_FILE, Job
from unlearnspec.run.results import RunRecord
from unlearnspec.run.rundirs import marker
from unlearnspec.safeio import read_json_lenient

POINT_FILE = "point.json"
LDS_FILE = "lds.json"  # what one LDS retraining measured (unlearnspec.magic.lds)
SIDECAR_FILE = "scores.json"
State = Literal["done", "failed", "todo"]


def read_record(folder: Path) -> Optional[RunRecord]:
    """The point.json of a job folder the tool wrote, or None."""
    if marker(folder) is None:
        return None
    raw = read_json_lenient(folder / POINT_FILE)
    try:
        return RunRecord.model_validate(raw) if isinstance(raw, dict) else None
    except (ValueError, ValidationError):
        return None


def job_state(job: Job) -> State:
    """done / failed (recorded as failed: a point that diverged, a score run that failed) / todo."""
    if job.kind == "baseline":
        return "done" if marker(job.out) is not None and (job.out / "eval.json").is_file() else "todo"
    record = read_record(job.out)
    if record is None or record.spec_hash != job.hash:
        return "todo"
    if record.status != "ok":
        return "failed"
    if job.kind == "score" and not (job.out / SCORES_FILE).is_file():
        return "todo"
    if job.kind == "lds" and not (job.out / LDS_FILE).is_file():
        return "todo"
    return "done"

"""Where a SLURM-submitted job stands: its state files, what SLURM says, and the status `status` prints.

Each job of the plan whose folder is P/NAME keeps P/.slurm/NAME/: `submission.json` (written when it is
submitted: SLURM id, name, log paths), `run.json` (written by the job itself: running, finished, error,
requeued) and submitit's own files and logs. The job's results are in its point folder as with the local
executor; these files only say where the job is. SLURM is asked with `squeue` for live jobs; for ended
ones `sacct` (with a slurmdbd), else `scontrol show job` (recently ended), else the job completion log.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from unlearnspec.records import JsonDict
from unlearnspec.run.executors.base import JobStatus
from unlearnspec.run.plan import Job

SLURM_DIR = ".slurm"
SUBMISSION = "submission.json"
RUN = "run.json"
REQUEST = "request.json"
LIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
}
ENDED_REASON = {
    "TIMEOUT": "stopped by its time limit (raise slurm.jobs.<kind>.time_min)",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "OUT_OF_MEMORY": "out of memory (raise slurm.jobs.<kind>.mem_gb)",
    "DEADLINE": "past its deadline",
    "PREEMPTED": "preempted and not requeued",
}


class SlurmUnavailable(RuntimeError):
    """squeue did not answer (no cluster here, or the controller is down)."""


def job_dir(job: Job) -> Path:
    """The job's state folder: next to its output folder, under .slurm/."""
    return job.out.parent / SLURM_DIR / job.out.name


def read_json(path: Path) -> Optional[JsonDict]:
    """A state file, or None when it is missing, not a regular file, too large or not a JSON object."""
    from unlearnspec.safeio import read_json_lenient

    data: object = read_json_lenient(path, max_bytes=16 << 20)
    return data if isinstance(data, dict) else None


def slurm_id_of(record: JsonDict) -> str:
    """The SLURM job id a state file records ('' when none, or not an id: `123` or an array's `123_4`); it is
    passed to squeue/sacct and onto `--dependency` lines, so nothing else gets through."""
    value = str(record.get("slurm_id", ""))
    return value if re.fullmatch(r"[0-9]{1,20}(_[0-9]{1,10})?", value) else ""


def write_state(path: Path, payload: Mapping[str, object]) -> None:
    from unlearnspec.safeio import write_json

    write_json(path, payload, root=path.parent.parent)  # the job's state folder may not be a link


# --------------------------------------------------------------------------- asking SLURM
@dataclass(frozen=True)
class Live:
    """A job squeue still lists."""

    state: str
    reason: str
    name: str
    node: str


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def live_jobs(ids: list[str]) -> dict[str, Live]:
    """squeue's view of these job ids (absent: not queued or running any more)."""
    ids = sorted({i for i in ids if i})
    if not ids:
        return {}
    try:
        out = _run(["squeue", "-h", "-o", "%i|%T|%r|%j|%N", "-j", ",".join(ids)])
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmUnavailable(f"squeue failed: {exc}") from None
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # a single id that has ended long ago
            return {}
        raise SlurmUnavailable(f"squeue failed: {out.stderr.strip()[:300]}")
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 5:
            jobs[parts[0]] = Live(parts[1], parts[2], parts[3], parts[4])
    return jobs


def ended_state(slurm_id: str) -> str:
    """Final SLURM state of an ended job ('' when no source knows it any more)."""
    queries = (
        ["sacct", "-n", "-P", "-X", "-j", slurm_id, "-o", "JobID,State"],
        ["sacct", "--completion", "-n", "-P", "-j", slurm_id, "-o", "JobID,State"],
    )
    try:
        out = _run(["scontrol", "show", "job", "-o", slurm_id])
        for token in out.stdout.split() if out.returncode == 0 else []:
            if token.startswith("JobState="):
                return token.split("=", 1)[1]
        for cmd in queries:
            out = _run(cmd)
            for line in out.stdout.splitlines() if out.returncode == 0 else []:
                jid, _, state = line.partition("|")
                if jid == slurm_id and state:
                    return state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return ""


# --------------------------------------------------------------------------- one job's status
def job_status(job: Job, live: dict[str, Live], blocked: Optional[str] = None) -> JobStatus:
    """Where `job` stands: its folder first (done / recorded failure), then its submission and SLURM."""
    from unlearnspec.run.jobstate import job_state, read_record

    state = job_state(job)
    sub = read_json(job_dir(job) / SUBMISSION) or {}
    slurm_id, log = slurm_id_of(sub), str(sub.get("log_out", ""))
    row = JobStatus(job.id, job.kind, "", slurm_id=slurm_id, log=log)
    if state == "done":
        row.state = "done"
        return row
    if state == "failed":
        record = read_record(job.out)
        row.state, row.recorded = "failed", True
        row.detail = (record.reason if record is not None else None) or "recorded as failed"
        return row
    if not slurm_id:
        if blocked:
            row.state, row.detail = "not run", blocked
        else:
            row.state, row.detail = "not submitted", str(sub.get("reason", ""))
        return row
    now = live.get(slurm_id)
    if now is not None and now.name == sub.get("name", now.name):
        if now.state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"):
            row.state = "queued"
            row.detail = {"Dependency": "waiting for the jobs it needs"}.get(
                now.reason, now.reason if now.reason != "None" else ""
            )
            if now.reason == "DependencyNeverSatisfied":
                row.state, row.detail = "not run", blocked or "a job it needs failed"
        else:
            row.state, row.detail = "running", f"on {now.node}" if now.node else ""
        return row
    return _ended(row, job, read_json(job_dir(job) / RUN) or {}, blocked)


def _ended(row: JobStatus, job: Job, run: JsonDict, blocked: Optional[str]) -> JobStatus:
    """A submitted job SLURM no longer lists, which left no record in its folder."""
    if run.get("state") == "error":
        row.state, row.detail = "failed", str(run.get("reason", "the job raised an error"))
        return row
    final = ended_state(row.slurm_id)
    started = run.get("state") not in (None, "submitted")
    if final == "CANCELLED" and not started and blocked:
        row.state, row.detail = "not run", blocked
    elif final == "CANCELLED":
        row.state, row.detail = (
            "cancelled",
            "cancelled (scancel, or by the cluster)" + (" while running" if started else ""),
        )
    elif final in ENDED_REASON:
        row.state, row.detail = "failed", ENDED_REASON[final].replace("<kind>", job.kind)
    elif final == "FAILED":
        row.state, row.detail = "failed", "the job exited with an error; see its log"
    elif run.get("state") == "finished":
        row.state, row.detail = "lost", "finished, but its folder is missing"
    else:
        row.state = "lost"
        row.detail = f"SLURM state {final}, no record" if final else "no longer known to SLURM and left no record"
    return row


def my_env() -> dict[str, str]:
    """What a job records about where it runs."""
    return {
        k: os.environ[k]
        for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_RESTART_COUNT", "SLURMD_NODENAME")
        if k in os.environ
    }

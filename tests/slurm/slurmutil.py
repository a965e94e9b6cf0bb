"""Small helpers for the SLURM tests: job state straight from slurmctld, accounting check, waiting."""

from __future__ import annotations

import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)


def accounting_enabled() -> bool:
    """Whether `sacct` answers (needs a slurmdbd); submitit reads job states only through it."""
    return _run("sacct", "-n", "-X", "-P", "-o", "JobID", "-S", "now").returncode == 0


def scontrol_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` fields of a job slurmctld still holds (MinJobAge after its end), else {}."""
    out = _run("scontrol", "show", "job", "-o", job_id)
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    fields: dict[str, str] = {}
    for token in out.stdout.splitlines()[0].split():
        key, _, value = token.partition("=")
        fields.setdefault(key, value)
    return fields


def completion_state(job_id: str) -> str:
    """The final state in the job completion log (JobCompType=jobcomp/filetxt) via `sacct --completion`."""
    out = _run("sacct", "--completion", "-n", "-P", "-j", job_id, "-o", "JobID,State")
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        if jid == job_id:
            return state
    return ""


def wait_for(check: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)

"""What one run of a plan did: the record every executor returns and the progress summary reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unlearnspec.run.results import Results


@dataclass
class Outcome:
    """What one run of the plan did (local executors: once every job ended; SLURM: once submitted)."""

    ran: list[str] = field(default_factory=list)
    """Jobs run now (failed ones included)."""
    skipped: list[str] = field(default_factory=list)
    """Jobs found finished (or recorded as failed) in their folders."""
    failed: dict[str, str] = field(default_factory=dict)
    """Job id -> reason: failed now, recorded as failed, or not run because a job it needs failed."""
    results: dict[Path, Results] = field(default_factory=dict)
    """results.json of each spec, when written here."""
    submitted: dict[str, str] = field(default_factory=dict)
    """Job id -> where it was handed (a SLURM job id); empty for local executors."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Job id -> wall seconds of the jobs run now."""
    complete: bool = False
    """Every job ended here, so results.json are final and the reports can be written now."""
    interrupted: bool = False
    """Ctrl-C or SIGTERM stopped the run; a rerun resumes."""

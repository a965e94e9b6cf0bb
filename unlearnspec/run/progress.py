"""What `run` shows while the jobs run: on a terminal a live panel (jobs done by kind, the running jobs,
elapsed time, ETA); in logs one plain line per finished job with its counter; at the end a summary.
Serial and pool executors report the same events to it; it never decides anything."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Mapping, Optional, Sequence

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from unlearnspec.run.outcome import Outcome
from unlearnspec.run.plan import Job, JobKind, Plan

KINDS: tuple[JobKind, ...] = ("score", "lds", "baseline", "point")


def clock(seconds: float) -> str:
    """`4:05`, `1:02:03`: elapsed time and ETA."""
    s = round(max(0.0, seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def estimate(
    remaining: Mapping[str, int],
    times: Mapping[str, Sequence[float]],
    running: Sequence[tuple[str, float]],
    workers: int,
) -> Optional[float]:
    """Seconds until every remaining job (running ones included) has ended: per kind, the mean wall time
    of the jobs of that kind measured so far (a kind not measured yet: the mean over all measured jobs)
    times the jobs left, less what the running jobs have already done, spread over the workers.
    None while nothing has been measured."""
    left = sum(remaining.values())
    if left == 0:
        return 0.0
    measured = [t for ts in times.values() for t in ts]
    if not measured:
        return None
    overall = sum(measured) / len(measured)
    mean = {k: (sum(ts) / len(ts) if ts else overall) for k, ts in times.items()}
    work = sum(n * mean.get(kind, overall) for kind, n in remaining.items())
    work -= sum(min(elapsed, mean.get(kind, overall)) for kind, elapsed in running)
    return max(0.0, work) / max(1, min(workers, left))


def job_name(job: Job) -> str:
    """`point exp7_all_tokens/lr_0.001`: the kind, then the id without its kind prefix."""
    return f"{job.kind} {job.id.split(':', 1)[-1]}"


class RunDisplay:
    """Progress of one run. `console` None: silent (other torchrun ranks); `live`: a rich live panel
    (stdout is a terminal) above which messages and per-job lines scroll."""

    def __init__(self, console: Optional[Console] = None, live: bool = False) -> None:
        self.console = console
        self.live = live and console is not None
        self._lock = threading.Lock()
        self._progress: Optional[_Panel] = None
        self.start = time.perf_counter()
        self.workers = 1
        self.total: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}
        self.running: dict[str, tuple[Job, float]] = {}

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "RunDisplay":
        if self.live:
            self._progress = _Panel(
                self,
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def progress(self) -> Optional[Progress]:
        """The rich Progress that in-job steps (training, reverse pass) add their bars to, or None."""
        return self._progress

    def say(self, message: str) -> None:
        if self.console is not None:
            (self._progress.console if self._progress is not None else self.console).print(
                message, markup=False, highlight=False
            )

    # ---------------------------------------------------------------- events
    def begin(self, plan: Plan, workers: int = 1) -> None:
        with self._lock:
            self.start = time.perf_counter()
            self.workers = max(1, workers)
            self.total = Counter(j.kind for j in plan.jobs)
            self.ended = Counter()
            self.times = {k: [] for k in self.total}
            self.running = {}

    def started(self, job: Job) -> None:
        with self._lock:
            self.running[job.id] = (job, time.perf_counter())

    def skipped(self, job: Job) -> None:
        with self._lock:
            self.ended[job.kind] += 1

    def finished(self, job: Job, status: str, seconds: float, reason: Optional[str] = None) -> None:
        with self._lock:
            self.running.pop(job.id, None)
            self.ended[job.kind] += 1
            self.times.setdefault(job.kind, []).append(seconds)
        eta = self.eta()
        why = f" ({reason})" if reason and status != "ok" else ""
        self.say(
            f"[{self.done}/{sum(self.total.values())}] {job_name(job)} {status} {seconds:.1f} s{why}"
            + (f" · ETA {clock(eta)}" if eta and self.done < sum(self.total.values()) else "")
        )

    def not_run(self, job: Job, reason: str) -> None:
        with self._lock:
            self.ended[job.kind] += 1
        self.say(f"[{self.done}/{sum(self.total.values())}] {job_name(job)} not run: {reason}")

    @property
    def done(self) -> int:
        return sum(self.ended.values())

    def eta(self) -> Optional[float]:
        now = time.perf_counter()
        with self._lock:
            remaining = {k: self.total[k] - self.ended[k] for k in self.total}
            running = [(job.kind, now - t0) for job, t0 in self.running.values()]
            times = {k: list(v) for k, v in self.times.items()}
        return estimate(remaining, times, running, self.workers)

    # ---------------------------------------------------------------- rendering
    def header(self) -> str:
        """The live panel's lines: counts by kind, elapsed, ETA, the running jobs."""
        now = time.perf_counter()
        eta = self.eta()
        with self._lock:
            kinds = " · ".join(f"{k} {self.ended[k]}/{self.total[k]}" for k in KINDS if self.total[k])
            running = [f"{job_name(job)} {clock(now - t0)}" for job, t0 in self.running.values()]
            done, total = sum(self.ended.values()), sum(self.total.values())
        lines = [
            f"jobs {done}/{total}  ({kinds})  elapsed {clock(now - self.start)}  ETA "
            + (clock(eta) if eta is not None else "after the first job")
        ]
        lines += [f"running  {r}" for r in running]
        return "\n".join(lines)

    def summary(self, outcome: Outcome, plan: Plan) -> None:
        """Done, failed (with reasons), not run, skipped, submitted, and the wall time."""
        wall = clock(time.perf_counter() - self.start)
        failed_now = [j for j in outcome.ran if j in outcome.failed]
        ok = len(outcome.ran) - len(failed_now)
        not_run = [j for j in outcome.failed if j not in outcome.ran and j not in outcome.skipped]
        parts = [
            f"{ok} done",
            f"{len(failed_now)} failed",
            f"{len(not_run)} not run",
            f"{len(outcome.skipped)} skipped (already done or recorded as failed)",
        ]
        if outcome.submitted:
            parts.append(f"{len(outcome.submitted)} submitted")
        head = "[interrupted]" if outcome.interrupted else "[summary]"
        own = clock(sum(outcome.seconds.values()))  # what these jobs would take one after another
        self.say(f"{head} {len(plan.jobs)} job(s) in {wall} wall (jobs' own time {own}): " + ", ".join(parts))
        for job_id in failed_now:
            self.say(f"  failed   {job_id}: {outcome.failed[job_id]}")
        for job_id in not_run:
            self.say(f"  not run  {job_id}: {outcome.failed[job_id]}")
        if outcome.interrupted:
            self.say("  rerun the same command to resume: finished jobs are kept, unfinished ones start again")


class _Panel(Progress):
    """A rich Progress whose live area starts with the run's header, above the bars of the job at work."""

    def __init__(
        self, display: RunDisplay, *columns: ProgressColumn, console: Optional[Console] = None, transient: bool = False
    ) -> None:
        self.display = display
        super().__init__(*columns, console=console, transient=transient)

    def get_renderable(self) -> RenderableType:
        header = Text(self.display.header())
        return Group(header, self.make_tasks_table(self.tasks)) if self.tasks else header

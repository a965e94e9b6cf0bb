"""`run --executor slurm` and `status`: the request SLURM jobs rebuild the plan from, and where each job stands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from unlearnspec.errors import UserError
from unlearnspec.run.executors.base import JobStatus
from unlearnspec.run.options import RunOptions
from unlearnspec.run.slurm import Request, context_for, plan_for, statuses
from unlearnspec.run.slurmstate import REQUEST, SLURM_DIR, SlurmUnavailable
from unlearnspec.spec.profile import slurm_settings

if TYPE_CHECKING:
    from rich.console import Console


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise UserError.one(
            "--executor",
            "sbatch is not on PATH: this machine cannot submit SLURM jobs. Run on a "
            "login node of the cluster, or run here without --executor slurm (--jobs N runs N jobs "
            "at once).",
        )
    if shutil.which("srun") is None:  # submitit writes `srun ...` into every job script and refuses without it
        raise UserError.one(
            "--executor",
            "sbatch is on PATH but srun is not: jobs start their work with srun, so this "
            "is not a complete SLURM client. Run on a login node of the cluster (or load its SLURM "
            "module so both are on PATH), or run here without --executor slurm.",
        )


def make_request(paths: list[Path], options: RunOptions, cluster: Optional[Path]) -> Request:
    """The request jobs rebuild the plan from: absolute paths, and the plan's device from the resources
    of baseline jobs (their cache key names the device kind they evaluate on)."""
    settings, _ = slurm_settings(cluster, options.profile)
    absolute = lambda p: str(Path(p).resolve()) if p is not None else None  # noqa: E731
    return Request(
        paths=[str(p.resolve()) for p in paths],
        profile=absolute(options.profile),
        overrides=list(options.overrides),
        out=absolute(options.out),
        plan_device="cuda" if settings.jobs.baseline.gpus else "cpu",
        cluster=absolute(cluster),
        retry_failed=options.retry_failed,
        report=options.report,
        reports_dir=absolute(options.reports_dir),
    )


def _requests(paths: list[Path], options: RunOptions) -> list[Request]:
    """A run folder with .slurm/request.json is shown as submitted; spec paths are planned now."""
    requests, specs = [], []
    for p in paths:
        req = p / SLURM_DIR / REQUEST
        if p.is_dir() and req.is_file():
            requests.append(Request.read(req))
        else:
            specs.append(p)
    if specs:
        requests.append(
            Request(
                paths=[str(p.resolve()) for p in specs],
                profile=str(options.profile.resolve()) if options.profile else None,
                overrides=list(options.overrides),
                out=str(options.out.resolve()) if options.out else None,
                plan_device=_planned_device(specs, options),
            )
        )
    return requests


def _planned_device(specs: list[Path], options: RunOptions) -> str:
    """The device kind of a submitted request for these specs (so baseline ids match), else cpu."""
    from unlearnspec.spec.load import load_spec, resolve_path

    for spec_path in specs:
        if spec_path.is_file():
            spec = load_spec(spec_path, profile=options.profile, overrides=options.overrides, check_refs=False)
            out = options.out or resolve_path(spec_path, spec.output.dir)
            req = out / SLURM_DIR / REQUEST
            if req.is_file():
                return Request.read(req).plan_device
    return "cpu"


def show_status(paths: list[Path], options: RunOptions, console: Console, as_json: bool = False) -> int:
    """One row per job: state (done, failed, queued, running, not submitted, not run, cancelled, lost),
    why, its SLURM id and its log."""
    from rich.table import Table

    rows: list[JobStatus] = []
    for request in _requests(paths, options):
        ctx = context_for(request, request.plan_device, say=lambda m: None)
        plan = plan_for(request, ctx)
        try:
            found = statuses(plan)
        except SlurmUnavailable as exc:
            raise UserError.one(
                "status", f"SLURM does not answer ({exc}); the folders alone say only done/failed."
            ) from None
        rows.extend(found.values())
    if as_json:
        console.out(json.dumps({"jobs": [r.as_dict() for r in rows]}, indent=2), highlight=False)
        return 0
    counts = {s: sum(1 for r in rows if r.state == s) for s in dict.fromkeys(r.state for r in rows)}
    table = Table(title="status: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for col in ("job", "state", "detail", "slurm", "log"):
        table.add_column(col, overflow="fold")
    colour = {
        "done": "green",
        "failed": "red",
        "not run": "red",
        "lost": "red",
        "cancelled": "yellow",
        "running": "cyan",
        "queued": "blue",
    }
    from rich.markup import escape

    def text(value: str) -> str:  # job names, reasons and log paths come from files: text, never markup or escapes
        return escape("".join(c if c.isprintable() else "?" for c in value))

    for r in rows:
        state = f"[{colour[r.state]}]{r.state}[/]" if r.state in colour else text(r.state)
        table.add_row(
            text(r.job),
            state,
            text(r.detail),
            text(r.slurm_id or "-"),
            text(r.log) if r.state != "done" else "",
        )
    console.print(table)
    return 0

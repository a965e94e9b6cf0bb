"""`unlearnspec run` and `unlearnspec plan`: build the plan, show it or hand it to the chosen executor with
live progress, then render the reports of the experiments that ran."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from unlearnspec.run.options import (  # noqa: F401 - RunOptions and friends: imported from here by callers
    RunOptions,
    make_context,
    make_plan,
    quiet_libraries,
    reports_dir_for,
)

if TYPE_CHECKING:
    from unlearnspec.run.executors.base import ExecutorOptions


def run_study(paths: list[Path], options: RunOptions, console: Any, executor: Optional[str] = None,
              settings: Optional[ExecutorOptions] = None) -> int:
    """Run the given specs with the named executor; returns the exit code (0 all ok, 1 when some job failed
    or was not run, 130 when interrupted)."""
    from unlearnspec.run.executors import executor_class
    from unlearnspec.run.executors.base import ExecutorOptions
    from unlearnspec.run.progress import RunDisplay

    settings = settings or ExecutorOptions()
    cls = executor_class(executor, settings)
    main = _is_main()
    with RunDisplay(console if main else None, live=main and console.is_terminal) as display:
        ex = cls.create(options, settings, display)
        plan = ex.make_plan(paths)
        display.say(f"[plan] {len(plan.jobs)} job(s) for {len(plan.specs)} spec(s) {ex.where}")
        ex.submit(plan)
        outcome = ex.wait()
    if not main:
        return 0
    display.summary(outcome, plan)
    if outcome.interrupted:
        return 130
    experiments = [r for r in plan.specs if not r.is_score and r.path in outcome.results]
    if options.report and outcome.complete and experiments:
        from unlearnspec.report.commands import run_report

        run_report([str(r.out) for r in experiments], out=reports_dir_for(plan, options), reference=None,
                   toy=options.profile is not None, plot=True, console=console)
    return 1 if outcome.failed else 0


def show_plan(paths: list[Path], options: RunOptions, console: Any, as_json: bool = False) -> int:
    """Print the jobs in order: kind, id, folder, waits-for, state (done / failed / todo)."""
    import json

    from rich.table import Table

    from unlearnspec.run.jobstate import job_state

    ctx = make_context(options, say=lambda m: None)
    plan = make_plan(paths, options, ctx)
    rows = [{"order": i + 1, "kind": j.kind, "id": j.id, "folder": str(j.out), "after": list(j.after),
             "state": job_state(j)} for i, j in enumerate(plan.jobs)]
    if as_json:
        console.out(json.dumps({"device": ctx.device, "jobs": rows}, indent=2), highlight=False)
        return 0
    table = Table(title=f"plan: {len(rows)} job(s) on {ctx.device}")
    for col in ("#", "kind", "job", "folder", "after", "state"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["order"]), r["kind"], r["id"], r["folder"], ", ".join(r["after"]) or "-", r["state"])
    console.print(table)
    return 0


def _is_main() -> bool:
    from unlearnspec.run.context import rank

    return rank() == 0

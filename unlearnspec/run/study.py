"""`unlearnspec run` and `unlearnspec plan`: build the plan, show it or hand it to the chosen executor with
live progress, then render the reports of the experiments that ran."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, TypedDict

from unlearnspec.run.options import (  # noqa: F401 - RunOptions and friends: imported from here by callers
    RunOptions,
    make_context,
    make_plan,
    quiet_libraries,
    reports_dir_for,
)
from unlearnspec.run.plan import plan_layouts

if TYPE_CHECKING:
    from rich.console import Console

    from unlearnspec.run.executors.base import ExecutorOptions


class PlanRow(TypedDict):
    """One job of `unlearnspec plan` (a row of the table, an entry of `--format json`'s `jobs`)."""

    order: int
    kind: str
    id: str
    folder: str
    after: list[str]
    state: str
    batch: Optional[dict[str, int]]
    """The batch split over the ranks (BatchLayout.as_dict) of a training job, else None."""


def run_study(
    paths: list[Path],
    options: RunOptions,
    console: Console,
    executor: Optional[str] = None,
    settings: Optional[ExecutorOptions] = None,
) -> int:
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
        summary = plan.mapping_summary()  # what the profile changed, so no mapped knob is a surprise
        for line in summary:
            display.say(f"[profile] {line}")
        if len(summary) < len(plan.mapping_lines()):
            display.say(
                "[profile] each knob with the profile field that changed it: `unlearnspec plan` with the same arguments"
            )
        display.say(f"[plan] {len(plan.jobs)} job(s) for {len(plan.specs)} spec(s) {ex.where}")
        ex.submit(plan)
        outcome = ex.wait()
    if not main:
        return 0
    display.summary(outcome, plan)
    if outcome.interrupted:
        return 130
    experiments = [r for r in plan.specs if not r.is_score and r.path in outcome.results]
    if options.report and options.reporter is not None and outcome.complete and experiments:
        options.reporter(
            [r.out for r in experiments], reports_dir_for(plan, options), options.profile is not None, console
        )
    return 1 if outcome.failed else 0


def check_launch(paths: list[Path], options: RunOptions, world_size: int) -> None:
    """Refuse, before torchrun starts `world_size` ranks, every spec whose global batch they cannot share."""
    ctx = make_context(options, say=lambda m: None)
    plan_layouts(make_plan(paths, options, ctx), lambda job: world_size, lambda job: f"--nproc {world_size}")


def show_plan(
    paths: list[Path], options: RunOptions, console: Console, as_json: bool = False, world_size: int = 1
) -> int:
    """Print the jobs in order: kind, id, folder, waits-for, state (done / failed / todo), and the batch split of
    each training job over `world_size` ranks (refused, with the fix, when they cannot share it)."""
    import json

    from rich.table import Table

    from unlearnspec.run.jobstate import job_state

    ctx = make_context(options, say=lambda m: None)
    plan = make_plan(paths, options, ctx)
    layouts = plan_layouts(plan, lambda job: world_size, lambda job: f"--nproc {world_size}")
    rows: list[PlanRow] = [
        {
            "order": i + 1,
            "kind": j.kind,
            "id": j.id,
            "folder": str(j.out),
            "after": list(j.after),
            "state": job_state(j),
            "batch": layouts[j.id].as_dict() if j.id in layouts else None,
        }
        for i, j in enumerate(plan.jobs)
    ]
    if as_json:
        console.out(
            json.dumps(
                {"device": ctx.device, "world_size": world_size, "profile_changes": plan.mapping_lines(), "jobs": rows},
                indent=2,
            ),
            highlight=False,
        )
        return 0
    for line in plan.mapping_lines():
        console.print(f"[profile] {line}", markup=False, highlight=False)
    table = Table(
        title=f"plan: {len(rows)} job(s) on {ctx.device}"
        + (f", {world_size} processes each" if world_size > 1 else ""),
        caption="batch: rows per optimizer step = ranks x rows per micro-batch x micro-batches",
    )
    for col in ("#", "kind", "job", "folder", "after", "batch", "state"):
        table.add_column(col, overflow="fold")
    for r in rows:
        b = r["batch"]
        batch = f"{b['global_batch']} = {b['world_size']}x{b['micro_batch_size']}x{b['accumulation']}" if b else "-"
        table.add_row(str(r["order"]), r["kind"], r["id"], r["folder"], ", ".join(r["after"]) or "-", batch, r["state"])
    console.print(table)
    return 0


def _is_main() -> bool:
    from unlearnspec.run.context import rank

    return rank() == 0

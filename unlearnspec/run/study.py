"""`unlearnspec run` and `unlearnspec plan`: build the plan, show it or hand it to an executor with live
progress, then render the reports of the experiments that ran."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from unlearnspec.run.context import RunContext, resolve_device, toy_context
from unlearnspec.run.plan import Plan, build_plan, plan_layouts
from unlearnspec.spec.load import project_root


@dataclass
class RunOptions:
    """How to run (none of this changes an experiment: that lives in specs and profiles)."""

    profile: Optional[Path] = None
    overrides: list[str] = field(default_factory=list)
    out: Optional[Path] = None
    retry_failed: bool = False
    device: Optional[str] = None
    auto_produce: bool = False
    """Run missing score producers first (on with --toy, where a score run costs seconds)."""
    report: bool = True
    reports_dir: Optional[Path] = None


def quiet_libraries() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for name in ("lm_eval", "lm-eval", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_context(options: RunOptions, say: Any = print, progress: Any = None) -> RunContext:
    device = resolve_device(options.device)
    explicit = options.device not in (None, "", "auto")
    if options.profile is not None:
        return toy_context(options.profile, device=device, device_requested=explicit, say=say, progress=progress)
    return RunContext(device=device, device_requested=explicit, say=say, progress=progress)


def make_plan(paths: list[Path], options: RunOptions, ctx: RunContext) -> Plan:
    return build_plan(paths, profile=options.profile, overrides=tuple(options.overrides), out=options.out,
                      auto_produce=options.auto_produce, assets=ctx.assets, device=ctx.device.split(":")[0])


def reports_dir_for(plan: Plan, options: RunOptions) -> Path:
    """--reports-dir; else next to the output with --out; else the reports/ of the specs' project."""
    if options.reports_dir is not None:
        return options.reports_dir
    if options.out is not None:
        return options.out / "reports"
    return project_root(plan.specs[-1].path) / "reports"


def run_study(paths: list[Path], options: RunOptions, console: Any) -> int:
    """Run the given specs; returns the exit code (0 all ok, 1 when some sweep point failed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from unlearnspec.run.executor import LocalExecutor

    quiet_libraries()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not _is_main()) as progress:
        say = (lambda m: progress.console.print(m, markup=False, highlight=False)) if _is_main() else (lambda m: None)
        ctx = make_context(options, say=say, progress=progress if _is_main() else None)
        plan = make_plan(paths, options, ctx)
        for line in plan.mapping_lines():  # what the profile changed, so no mapped knob is a surprise
            say(f"[profile] {line}")
        plan_layouts(plan, lambda job: ctx.world_size, lambda job: "the processes of this launch")
        say(f"[plan] {len(plan.jobs)} job(s) for {len(plan.specs)} spec(s) on {ctx.device}"
            + (f", {ctx.world_size} processes" if ctx.world_size > 1 else ""))
        outcome = LocalExecutor(ctx, retry_failed=options.retry_failed).run(plan)
    if not ctx.is_main:
        return 0
    experiments = [r for r in plan.specs if not r.is_score and r.path in outcome.results]
    if options.report and experiments:
        from unlearnspec.report.commands import run_report

        run_report([str(r.out) for r in experiments], out=reports_dir_for(plan, options), reference=None,
                   toy=options.profile is not None, plot=True, console=console)
    failed = [j for j in outcome.failed]
    if failed:
        console.print(f"[yellow]{len(failed)} job(s) failed or were not run; the reasons are in results.json[/yellow]")
    return 1 if failed else 0


def check_launch(paths: list[Path], options: RunOptions, world_size: int) -> None:
    """Refuse, before torchrun starts `world_size` ranks, every spec whose global batch they cannot share."""
    ctx = make_context(options, say=lambda m: None)
    plan_layouts(make_plan(paths, options, ctx), lambda job: world_size, lambda job: f"--nproc {world_size}")


def show_plan(paths: list[Path], options: RunOptions, console: Any, as_json: bool = False, world_size: int = 1) -> int:
    """Print the jobs in order: kind, id, folder, waits-for, state (done / failed / todo), and the batch split of
    each training job over `world_size` ranks (refused, with the fix, when they cannot share it)."""
    import json

    from rich.table import Table

    from unlearnspec.run.jobstate import job_state

    ctx = make_context(options, say=lambda m: None)
    plan = make_plan(paths, options, ctx)
    layouts = plan_layouts(plan, lambda job: world_size, lambda job: f"--nproc {world_size}")
    rows = [{"order": i + 1, "kind": j.kind, "id": j.id, "folder": str(j.out), "after": list(j.after),
             "state": job_state(j), "batch": layouts[j.id].as_dict() if j.id in layouts else None}
            for i, j in enumerate(plan.jobs)]
    if as_json:
        console.out(json.dumps({"device": ctx.device, "world_size": world_size, "profile_changes": plan.mapping_lines(),
                                "jobs": rows}, indent=2), highlight=False)
        return 0
    for line in plan.mapping_lines():
        console.print(f"[profile] {line}", markup=False, highlight=False)
    table = Table(title=f"plan: {len(rows)} job(s) on {ctx.device}" + (f", {world_size} processes each" if world_size > 1 else ""),
                  caption="batch: rows per optimizer step = ranks x rows per micro-batch x micro-batches")
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

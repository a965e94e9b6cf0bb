"""How a run is asked for (RunOptions: nothing here changes an experiment) and what every executor
builds from it first: the run context and the plan."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

from unlearnspec.run.context import RunContext, Say, resolve_device, toy_context
from unlearnspec.run.plan import Plan, PlanOptions, build_plan
from unlearnspec.spec.load import project_root

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


class Reporter(Protocol):
    """Writes and prints the reports of the experiment folders a run finished (the report layer, above this one,
    passes it in: `unlearnspec.report.commands.report_runs`; run/ never imports report/)."""

    def __call__(self, runs: list[Path], out: Path, toy: bool, console: Console) -> None: ...


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
    reporter: Optional[Reporter] = None
    """What writes the reports when `report` is on; None (a library caller that did not pass one): no reports."""


def quiet_libraries() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for name in ("lm_eval", "lm-eval", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_context(options: RunOptions, say: Say = print, progress: Optional[Progress] = None) -> RunContext:
    device = resolve_device(options.device)
    explicit = options.device not in (None, "", "auto")
    if options.profile is not None:
        return toy_context(options.profile, device=device, device_requested=explicit, say=say, progress=progress)
    return RunContext(device=device, device_requested=explicit, say=say, progress=progress)


def make_plan(paths: list[Path], options: RunOptions, ctx: RunContext) -> Plan:
    return build_plan(
        paths,
        PlanOptions(
            profile=options.profile,
            overrides=tuple(options.overrides),
            out=options.out,
            auto_produce=options.auto_produce,
            device=ctx.device.split(":")[0],
        ),
        ctx.assets,
    )


def reports_dir_for(plan: Plan, options: RunOptions) -> Path:
    """--reports-dir; else next to the output with --out; else the reports/ of the specs' project."""
    if options.reports_dir is not None:
        return options.reports_dir
    if options.out is not None:
        return options.out / "reports"
    return project_root(plan.specs[-1].path) / "reports"

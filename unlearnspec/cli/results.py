"""The commands that read what runs wrote: `report`, `diff`, `lds` (validate a finished score run) and
`status`, on their own Typer app that unlearnspec.cli merges into the main one (after its own commands)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from unlearnspec.cli.support import (
    DeviceOption,
    ProfileOption,
    SetOption,
    ToyOption,
    _console,
    output_folder,
    resolve_profile,
    user_errors,
)
from unlearnspec.errors import UserError

results_app = typer.Typer()


@results_app.command()
@user_errors
def report(
    inputs: Optional[List[str]] = typer.Argument(
        None,
        help="Run folders (holding results.json) or spec files; with --reference-only: spec files, names or reference JSONs (none: all).",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for <spec>.md/.json/.png (default: reports/; with --reference-only: print only)."
    ),
    reference: Optional[bool] = typer.Option(
        None,
        "--reference/--no-reference",
        help="Show the seed's recorded numbers beside the run (default: on when reports/reference/<spec>.json exists and the run is not a toy run).",
    ),
    reference_only: bool = typer.Option(
        False, "--reference-only", help="Print the seed's recorded tables exactly as recorded."
    ),
    toy: bool = ToyOption,
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write PNG plots (needs the `plot` extra: matplotlib)."),
    hazard_task: Optional[str] = typer.Option(
        None,
        "--hazard-task",
        help="Task whose drop selectivity rewards (default: the spec's eval.hazard_task, else the one task named like wmdp).",
    ),
    general_task: Optional[str] = typer.Option(
        None,
        "--general-task",
        help="Task whose drop selectivity penalises (default: the spec's eval.general_task, else the one task named like mmlu).",
    ),
    power: float = typer.Option(
        0.8, "--power", help="Power at which each table states its minimum detectable effect (MDE), in [0.5, 1)."
    ),
    study_name: str = typer.Option(
        "study",
        "--study-name",
        help="File name (without .md/.png) of the index and plot written when several runs are reported together.",
    ),
) -> None:
    """Tables vs baseline and matched control (intervals, paired/unpaired tests, chance flags), Markdown + JSON + plot.

    Example: [bold]unlearnspec report specs/exp5_selective.yaml specs/exp7_all_tokens.yaml[/bold]
    """
    from unlearnspec.report.commands import ReportOutput, run_reference_only, run_report
    from unlearnspec.report.inputs import Selection

    console = _console()
    output_folder(out, "--out")
    if reference_only:
        run_reference_only(inputs or [], out, plot, console)
    else:
        output = ReportOutput(out or Path("reports"), plot, study_name)
        run_report(inputs or [], output, reference, toy, console, Selection(hazard_task, general_task, power))


@results_app.command()
@user_errors
def diff(
    old: str = typer.Argument(..., help="Report JSON, reference JSON, results.json, run folder or spec file."),
    new: str = typer.Argument(..., help="The same kinds of input, to compare against OLD."),
    format: str = typer.Option("text", "--format", help="text | markdown (a table to post as a pull-request comment)."),
) -> None:
    """Cells that changed (old -> new), each marked beyond or within noise. Exit 0 if nothing changed beyond noise, else 1.

    Example: [bold]unlearnspec diff reports/reference/exp7_all_tokens.json reports/exp7_all_tokens.json[/bold]
    """
    from unlearnspec.report.commands import run_diff

    if format not in ("text", "markdown"):
        raise UserError.one("--format", f"unknown format {format!r}; use text or markdown.")
    raise typer.Exit(run_diff(old, new, _console(), format))


@results_app.command()
@user_errors
def lds(
    target: Path = typer.Argument(..., help="A score run folder (holding scores.json), or a MAGIC spec file."),
    subsets: Optional[int] = typer.Option(
        None, "--subsets", help="Random subsets (default: the spec's magic.lds, else 30)."
    ),
    fraction: Optional[float] = typer.Option(
        None, "--fraction", help="Share of the units each subset drops (default 0.01)."
    ),
    unit: Optional[str] = typer.Option(None, "--unit", help="row | token (default row)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the subsets (default 0)."),
    set_: Optional[List[str]] = SetOption,
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
    out: Optional[Path] = typer.Option(
        None, "--out", help="The score run's folder, when TARGET is a spec run with --out."
    ),
    device: Optional[str] = DeviceOption,
) -> None:
    """Validate a finished score run by its linear datamodeling score: retrain the recorded run once per random
    subset with the subset dropped, and correlate the actual change of the query loss with the scores'
    prediction. Writes the `lds` entry of scores.json (what `doctor` reads). Cost: subsets + 1 forward training runs.

    Example: [bold]unlearnspec lds runs/toy/magic/magic_wmdp[/bold]
    """
    from unlearnspec.run.lds_command import lds_target, run_lds_command
    from unlearnspec.run.study import RunOptions
    from unlearnspec.toy.numerics import pin_for_profile

    output_folder(out, "--out")
    options = RunOptions(profile=resolve_profile(toy, profile), overrides=set_ or [], out=out, device=device)
    spec_path, options = lds_target(target, options)
    pin_for_profile(options.profile)  # before torch is imported (a folder made under the toy profile pins as it did)
    settings = {"subsets": subsets, "fraction": fraction, "unit": unit, "seed": seed}
    raise typer.Exit(run_lds_command(spec_path, options, settings, _console()))


@results_app.command()
@user_errors
def status(
    paths: List[Path] = typer.Argument(..., help="Run folders submitted with --executor slurm, or spec files/folders."),
    set_: Optional[List[str]] = SetOption,
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (one spec only), as given to run."),
    format: str = typer.Option("table", "--format", help="table | json."),
) -> None:
    """Where each job stands: done, failed (why, and its log), queued, running, not submitted, not run
    (a job it needs failed), cancelled or lost. Reads the job folders and asks SLURM.

    Example: [bold]unlearnspec status specs/exp7_all_tokens.yaml --toy[/bold]
    """
    from unlearnspec.run.cluster_commands import show_status
    from unlearnspec.run.study import RunOptions

    if format not in ("table", "json"):
        raise UserError.one("--format", f"unknown format {format!r}; use table or json.")
    options = RunOptions(profile=resolve_profile(toy, profile), auto_produce=toy, overrides=set_ or [], out=out)
    raise typer.Exit(show_status(paths, options, _console(), as_json=format == "json"))

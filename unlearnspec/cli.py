"""The `unlearnspec` command line. Heavy imports (torch, transformers, trl, peft, lm_eval) happen
inside the commands that need them, so `validate`, `schema`, `show` and `--help` start fast."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer

from unlearnspec.errors import Problem, UserError

app = typer.Typer(
    name="unlearnspec",
    help="Validated specs for attribution-guided unlearning: run, score (MAGIC), evaluate, report.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)

F = TypeVar("F", bound=Callable[..., object])

SetOption = typer.Option(None, "--set", help="Override a field before validation, e.g. --set training.lr=1e-5 (repeatable).")
ToyOption = typer.Option(False, "--toy", help="Map the spec onto the embedded toy world (specs/profiles/toy.yaml).")
ProfileOption = typer.Option(None, "--profile", help="Map the spec through this profile file instead of the toy profile.")


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Tables are wide: when output goes to a file or CI log, don't squeeze them into 80 columns.
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def render_problems(problems: list[Problem], title: str = "error") -> None:
    from rich.markup import escape

    console = _console(stderr=True)
    for p in problems:
        where = f"{p.file}:{p.line}" if p.line else p.file
        field = f" [bold]{escape(p.loc)}[/bold]:" if p.loc else ""
        console.print(f"[red]{title}[/red] [cyan]{escape(where)}[/cyan]{field} {escape(p.message)}")


def filesystem_problem(exc: OSError) -> Optional[Problem]:
    """An OSError about a path the user chose (an --out that is a file, a folder without write
    permission, UNLEARNSPEC_CACHE below a file, /proc/...) as one Problem naming the path; None
    for errors without a path (a closed pipe), which stay real errors."""
    if exc.filename is None:
        return None
    names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    why = exc.strerror or type(exc).__name__
    return Problem(names, "", f"{why}. Check this path: a file may stand where a folder is needed (or the reverse), or a folder may not be writable.")


def user_errors(fn: F) -> F:
    """Render UserError, and OSError about a named path, as short messages and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            render_problems(exc.problems)
            raise typer.Exit(2) from None
        except OSError as exc:
            problem = filesystem_problem(exc)
            if problem is None:
                raise
            render_problems([problem])
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def output_folder(path: Optional[Path], option: str) -> Optional[Path]:
    """Refuse an output folder option up front (before minutes of work) when it, or the nearest
    existing folder above it, is not a folder."""
    if path is None:
        return None
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "is a file" if existing == path else f"lies below the file {existing}"
        raise UserError.one(option, f"{path} {what}; give a folder (it is created if missing).")
    return path


def resolve_profile(toy: bool, profile: Optional[Path]) -> Optional[Path]:
    if toy and profile is not None:
        raise UserError.one("--profile", "give either --toy or --profile, not both.")
    if profile is not None:
        return profile
    if toy:
        from unlearnspec.spec.profile import default_toy_profile

        return default_toy_profile()
    return None


@app.command()
@user_errors
def validate(
    paths: List[Path] = typer.Argument(..., help="Spec files or folders (searched recursively)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
) -> None:
    """Validate spec files (and profiles under a `profiles/` folder). Exit 0 if all are valid, 2 otherwise.

    Example: [bold]unlearnspec validate specs/[/bold]
    """
    from unlearnspec.spec.load import find_spec_files, validate_files

    files, problems = find_spec_files(paths)
    if not files and not problems:
        problems.append(Problem(" ".join(map(str, paths)), "", "no .yaml/.yml files found."))
    checked, file_problems = validate_files(files)
    problems.extend(file_problems)
    if problems:
        render_problems(problems)
        bad = len({p.file for p in problems})
        _console(stderr=True).print(f"[red]{bad} of {len(files)} file(s) invalid[/red]")
        raise typer.Exit(2)
    if not quiet:
        _console().print(f"[green]ok[/green] {checked} file(s) valid")


@app.command()
def schema() -> None:
    """Print the JSON Schema of spec files (use with yaml-language-server, see README)."""
    from unlearnspec.spec import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
@user_errors
def show(
    spec: Path = typer.Argument(..., help="Spec file."),
    set_: Optional[List[str]] = SetOption,
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
) -> None:
    """Print the resolved spec (after --set overrides and an optional profile).

    Example: [bold]unlearnspec show specs/exp7_all_tokens.yaml --toy --set training.lr=1e-3[/bold]
    """
    from unlearnspec.spec.load import dump_spec, load_spec

    resolved = load_spec(spec, overrides=set_ or [], profile=resolve_profile(toy, profile))
    sys.stdout.write(dump_spec(resolved))


@app.command()
@user_errors
def report(
    inputs: Optional[List[str]] = typer.Argument(None, help="Run folders (holding results.json) or spec files; with --reference-only: spec files, names or reference JSONs (none: all)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for <spec>.md/.json/.png (default: reports/; with --reference-only: print only)."),
    reference: Optional[bool] = typer.Option(None, "--reference/--no-reference", help="Show the seed's recorded numbers beside the run (default: on when reports/reference/<spec>.json exists and the run is not a toy run)."),
    reference_only: bool = typer.Option(False, "--reference-only", help="Print the seed's recorded tables exactly as recorded."),
    toy: bool = ToyOption,
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write PNG plots (needs the `plot` extra: matplotlib)."),
) -> None:
    """Tables vs baseline and matched control (intervals, paired/unpaired tests, chance flags), Markdown + JSON + plot.

    Example: [bold]unlearnspec report specs/exp5_selective.yaml specs/exp7_all_tokens.yaml[/bold]
    """
    from unlearnspec.report.commands import run_reference_only, run_report

    console = _console()
    output_folder(out, "--out")
    if reference_only:
        run_reference_only(inputs or [], out, plot, console)
    else:
        run_report(inputs or [], out or Path("reports"), reference, toy, plot, console)


@app.command()
@user_errors
def diff(
    old: str = typer.Argument(..., help="Report JSON, reference JSON, results.json, run folder or spec file."),
    new: str = typer.Argument(..., help="The same kinds of input, to compare against OLD."),
) -> None:
    """Cells that changed (old -> new), each marked beyond or within noise. Exit 0 if nothing changed beyond noise, else 1.

    Example: [bold]unlearnspec diff reports/reference/exp7_all_tokens.json reports/exp7_all_tokens.json[/bold]
    """
    from unlearnspec.report.commands import run_diff

    raise typer.Exit(run_diff(old, new, _console()))


@app.command()
@user_errors
def doctor(
    paths: List[Path] = typer.Argument(..., help="Spec files or folders (searched recursively)."),
    format: str = typer.Option("table", "--format", help="table | json."),
    strict: bool = typer.Option(False, "--strict", help="Count warnings as errors (exit 2)."),
    lr_factor: float = typer.Option(1.25, "--lr-factor", help="Flag a per-token LR ratio to the control above this."),
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
) -> None:
    """Find what invalidates an experiment: unmatched controls, score/data/regime mismatches, precision, alignment,
    masked-LR shifts, and (from results.json or the recorded tables) collapse, within-noise effects, moving controls.
    Exit 0 clean, 1 warnings only, 2 errors (or warnings with --strict).

    Example: [bold]unlearnspec doctor specs/[/bold]
    """
    from unlearnspec.doctor import diagnose, exit_code, print_findings, to_json

    if format not in ("table", "json"):
        raise UserError.one("--format", f"unknown format {format!r}; use table or json.")
    findings, count = diagnose(paths, lr_factor, profile=resolve_profile(toy, profile))
    if format == "json":
        sys.stdout.write(to_json(findings, count, strict))
    else:
        print_findings(findings, count, _console())
    raise typer.Exit(exit_code(findings, strict))


@app.command()
@user_errors
def run(
    paths: List[Path] = typer.Argument(..., help="Spec files or folders. Score specs run first, then controls, then the rest."),
    set_: Optional[List[str]] = SetOption,
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (one spec only); default: the spec's output.dir."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Rerun sweep points recorded as failed."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write reports/<spec>.md/.json for the experiments run."),
    reports_dir: Path = typer.Option(Path("reports"), "--reports-dir", help="Where reports go."),
) -> None:
    """Run specs: baseline, one run dir per sweep point (resumable), results.json, then reports.

    Examples: [bold]unlearnspec run specs/exp7_all_tokens.yaml --toy[/bold] ;
    [bold]unlearnspec run specs/ --toy[/bold] (the whole toy study)
    """
    import os

    output_folder(out, "--out")
    output_folder(reports_dir, "--reports-dir")
    resolved_profile = resolve_profile(toy, profile)
    from unlearnspec.numerics import pin_for_profile

    pin_for_profile(resolved_profile)  # before torch is imported: ATen and MKL read their pins once
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from unlearnspec.run.study import run_study

    code = run_study(paths, overrides=set_ or [], profile=resolved_profile, out=out,
                     retry_failed=retry_failed, auto_produce=toy, report=report, reports_dir=reports_dir,
                     console=_console())
    raise typer.Exit(code)


toy_app = typer.Typer(help="The embedded offline toy world: tiny model, corpora and cloze tasks.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")
WorldOption = typer.Option(None, "--config", help="Toy world file (default: specs/profiles/toy_world.yaml).")


@toy_app.command("build")
@user_errors
def toy_build(
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache holds this world."),
    config: Optional[Path] = WorldOption,
) -> None:
    """Build (or find) the cached toy world and print where it is and its baseline accuracy.

    Example: [bold]UNLEARNSPEC_CACHE=.cache/unlearnspec unlearnspec toy build --force[/bold]
    """
    from unlearnspec.numerics import pin_for_world

    pin_for_world(config)  # before torch is imported: ATen and MKL read their pins once
    from unlearnspec.toy.build import ensure_toy_world

    console = _console()
    world = ensure_toy_world(config, force=force, log=lambda msg: console.print(msg))
    info = world.info
    console.print(f"[green]toy world[/green] {world.root}  (built in {info['build_seconds']}s)")
    console.print(f"model     {world.model_dir}\ntasks     {world.task_dir}")
    for task, m in info["baseline"].items():
        console.print(f"baseline  {task}: acc {m['acc']:.4f} ± {m['acc_stderr']:.4f}, acc_norm {m['acc_norm']:.4f} (n={m['n']})")


@toy_app.command("write-tasks")
@user_errors
def toy_write_tasks(
    out: Path = typer.Option(Path("plugins/toy"), "--out", help="Task folder to (over)write."),
    config: Optional[Path] = WorldOption,
) -> None:
    """Regenerate the toy lm-eval task folder (YAML, loader, JSONL docs) from the world file.

    Example: [bold]unlearnspec toy write-tasks[/bold]  (then commit plugins/toy)
    """
    output_folder(out, "--out")
    from unlearnspec.toy.build import load_config
    from unlearnspec.toy.taskfiles import write_task_folder
    from unlearnspec.toy.world import generate_world

    for path in write_task_folder(generate_world(load_config(config)), out):
        _console().print(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

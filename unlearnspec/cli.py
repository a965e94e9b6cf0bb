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

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def render_problems(problems: list[Problem], title: str = "error") -> None:
    from rich.markup import escape

    console = _console(stderr=True)
    for p in problems:
        where = f"{p.file}:{p.line}" if p.line else p.file
        field = f" [bold]{escape(p.loc)}[/bold]:" if p.loc else ""
        console.print(f"[red]{title}[/red] [cyan]{escape(where)}[/cyan]{field} {escape(p.message)}")


def user_errors(fn: F) -> F:
    """Render UserError as short messages and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            render_problems(exc.problems)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def resolve_profile(toy: bool, profile: Optional[Path]) -> Optional[Path]:
    if toy and profile is not None:
        raise UserError.one("--profile", "give either --toy or --profile, not both.")
    if profile is not None:
        return profile
    if toy:
        from unlearnspec.profile import default_toy_profile

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
    from unlearnspec.specfile import find_spec_files, validate_files

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
    from unlearnspec.specfile import dump_spec, load_spec

    resolved = load_spec(spec, overrides=set_ or [], profile=resolve_profile(toy, profile))
    sys.stdout.write(dump_spec(resolved))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

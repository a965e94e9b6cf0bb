"""What every command shares: option declarations, the console, and the wrapper that turns user
mistakes (UserError, filesystem errors naming a path) into short messages with exit code 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer

from unlearnspec.errors import Problem, UserError

F = TypeVar("F", bound=Callable[..., object])

DeviceOption = typer.Option(None, "--device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")
SetOption = typer.Option(
    None, "--set", help="Override a field before validation, e.g. --set training.lr=1e-5 (repeatable)."
)
ToyOption = typer.Option(False, "--toy", help="Map the spec onto the embedded toy world (specs/profiles/toy.yaml).")
ProfileOption = typer.Option(
    None, "--profile", help="Map the spec through this profile file instead of the toy profile."
)
ClusterOption = typer.Option(
    None,
    "--cluster",
    help="Site file with the SLURM resources per job kind (see specs/profiles/slurm_example.yaml); default: the profile's `slurm:` section.",
)


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Tables are wide: when output goes to a file or CI log, don't squeeze them into 80 columns.
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def shown(text: str) -> str:
    """Text from files or arguments as the terminal may show it: control characters (ESC, CR, NUL...) as
    escapes, so a name read back cannot rewrite the screen; line breaks inside a message stay."""
    return "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)


def render_problems(problems: list[Problem], title: str = "error") -> None:
    from rich.markup import escape

    console = _console(stderr=True)
    for p in problems:
        where = f"{p.file}:{p.line}" if p.line else p.file
        field = f" [bold]{escape(shown(p.loc))}[/bold]:" if p.loc else ""
        console.print(f"[red]{title}[/red] [cyan]{escape(shown(where))}[/cyan]{field} {escape(shown(p.message))}")


def filesystem_problem(exc: BaseException) -> Optional[Problem]:
    """An OSError about a path the user chose (an --out that is a file, a folder without write permission,
    UNLEARNSPEC_CACHE below a file, /proc/...) or about the disk (full, quota, read-only), also when a library
    wrapped it in its own exception, as one Problem naming the path and the fix for that errno; None for
    anything else (a closed pipe, a bug), which stays a real error."""
    from unlearnspec.safewrite import advice, disk_error

    disk = disk_error(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return Problem(
            names,
            "",
            f"{advice(exc)}. "
            + ("Files being written were left as they were; rerun to resume." if disk else "Check this path."),
        )
    if disk is not None:
        return Problem(
            "(writing the outputs)",
            "",
            f"{disk}. Files being written were left as they were (outputs are "
            "written to temporary names and renamed when complete); rerun to resume.",
        )
    return None


def user_errors(fn: F) -> F:
    """Render UserError, and OSError about a named path, as short messages and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            render_problems(exc.problems)
            raise typer.Exit(2) from None
        except Exception as exc:  # an OSError, or a library's wrapper of a disk error (SafetensorError, RuntimeError)
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

"""`unlearnspec lds`: validate an existing score run by LDS (its recorded step plan, its spec).

The target is a score run folder (its results.json names the spec and profile it ran) or a MAGIC spec
(its output.dir, or --out, holds the run). The score job must be finished; the command then runs that
spec's LDS retraining jobs (resumable; finished ones are skipped) and writes the summary into scores.json.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional

from unlearnspec.errors import UserError
from unlearnspec.records import JsonDict
from unlearnspec.run.options import RunOptions

if TYPE_CHECKING:
    from rich.console import Console


def lds_target(target: Path, options: RunOptions) -> tuple[Path, RunOptions]:
    """(spec path, options with --out and the profile) for a score run folder or a spec file."""
    if not target.is_dir():
        if not target.is_file():
            raise UserError.one(
                str(target), "not found; give a score run folder (holding scores.json) or a MAGIC spec file."
            )
        return target, options
    results = target / "results.json"
    if not (target / "scores.json").is_file() or not results.is_file():
        raise UserError.one(
            str(target),
            "is not a finished score run (no scores.json and results.json). Give the folder a "
            "MAGIC spec wrote, or the spec file itself.",
        )
    from unlearnspec.safeio import read_json

    try:
        info = read_json(
            results, "results.json", "missing.", f"Give the spec file instead: `unlearnspec lds SPEC --out {target}`."
        )["spec"]
        spec_path, profile_name = Path(str(info["path"])), info.get("profile")
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError.one(
            str(results),
            f"unreadable ({type(exc).__name__}); give the spec file instead: `unlearnspec lds SPEC --out {target}`.",
        ) from None
    if not spec_path.is_file():
        raise UserError.one(
            str(target),
            f"its spec {spec_path} is not found from here; run the command from the project "
            f"folder, or give the spec: `unlearnspec lds SPEC --out {target}`.",
        )
    profile = options.profile
    if profile is None and profile_name is not None:
        from unlearnspec.spec.profile import default_toy_profile, load_profile

        toy = default_toy_profile()
        if getattr(load_profile(toy), "name", None) != profile_name:
            raise UserError.one(
                str(target), f"the scores were made under profile {profile_name!r}; pass it with --profile."
            )
        profile = toy
    return spec_path, replace(options, profile=profile, out=target.resolve())


def run_lds_command(target: Path, options: RunOptions, settings: Mapping[str, object], console: Console) -> int:
    """Run the LDS jobs of one score run here; print the summary. Exit 0, or 1 when a retraining failed. `settings`:
    the `magic.lds` fields given on the command line (None: not given)."""
    from unlearnspec.run.executors.serial import SerialExecutor
    from unlearnspec.run.jobstate import job_state
    from unlearnspec.run.options import make_context, make_plan, quiet_libraries
    from unlearnspec.run.plan import Plan
    from unlearnspec.run.progress import RunDisplay

    spec_path, options = lds_target(target, options) if target.is_dir() else (target, options)
    given = {k: v for k, v in settings.items() if v is not None}
    overrides = [f"magic.lds.{k}={v}" for k, v in given.items()] or ["magic.lds.subsets=30"]
    options = replace(options, overrides=[*options.overrides, *overrides], auto_produce=False, report=False)
    quiet_libraries()
    display = RunDisplay(console)
    ctx = make_context(options, say=display.say)
    plan = make_plan([spec_path], options, ctx)
    run = next(r for r in plan.specs if r.path.resolve() == spec_path.resolve())
    if not run.is_score:
        raise UserError.one(str(spec_path), "is not a MAGIC spec (no `magic:` section); LDS validates score runs.")
    score = plan.job(run.points[0])
    if job_state(score) != "done":
        raise UserError.one(
            str(score.out),
            f"holds no finished score run of {spec_path} as it is now (scores missing, or made "
            f"by another version of the spec). Run `unlearnspec run {spec_path}` first.",
        )
    lds = run.spec.magic.lds if run.spec.magic is not None else None
    assert lds is not None
    ctx.say(
        f"[lds] {run.spec.name}: {lds.subsets} retrainings of {lds.fraction:.0%} {lds.unit}s dropped + 1 reference, "
        "each replays the recorded steps forward (no reverse pass) and evaluates the query"
    )
    sub = Plan(jobs=[score] + [plan.job(j) for j in run.lds], specs=[run], profile=plan.profile)
    outcome = SerialExecutor(ctx, display=display).run(sub)
    return _print_summary(run.out, console) if not outcome.failed else 1


def _number(value: object) -> Optional[float]:
    """A number of the read-back summary, else None (printed n/a)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _print_summary(folder: Path, console: Console) -> int:
    from rich.table import Table

    from unlearnspec.magic.lds import lds_table

    entry: Optional[JsonDict] = lds_table(folder / "scores.json")
    if entry is None:
        console.print(f"[yellow]no LDS summary in {folder / 'scores.json'}[/yellow]")
        return 1
    table = Table(title=f"LDS of {folder}")
    for col in ("unit", "fraction", "subsets", "Spearman", "95% CI", "Pearson", "|pred|/|actual|"):
        table.add_column(col)

    def num(x: Optional[float]) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    ci = entry.get("spearman_ci95")
    lo, hi = ci if isinstance(ci, list) and len(ci) == 2 else [None, None]
    fraction = _number(entry.get("fraction"))
    table.add_row(
        str(entry.get("unit")),
        f"{fraction:.1%}" if fraction is not None else "n/a",
        str(entry.get("subsets")),
        num(_number(entry.get("spearman"))),
        f"{num(_number(lo))} - {num(_number(hi))}",
        num(_number(entry.get("pearson"))),
        num(_number(entry.get("scale_ratio"))),
    )
    console.print(table)
    return 0

"""`unlearnspec run` over many specs: order them (score producers, controls, the rest), run each
with live progress, and render the reports of the experiments that ran."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from unlearnspec.errors import Problem, UserError
from unlearnspec.spec.profile import is_world_file
from unlearnspec.spec.load import find_spec_files, is_profile_path, load_spec, resolve_path


def _quiet_libraries() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for name in ("lm_eval", "lm-eval", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def order_specs(paths: list[Path], profile: Optional[Path]) -> list[Path]:
    """Producers of scores first, then specs that others name as control, then the rest (stable)."""
    specs = {p: load_spec(p, profile=profile) for p in paths}
    controls = {resolve_path(p, s.control).resolve() for p, s in specs.items() if s.control}

    def rank(p: Path) -> int:
        s = specs[p]
        return 0 if s.magic is not None else 1 if p.resolve() in controls else 2

    return sorted(paths, key=rank)


def run_study(paths: list[Path], *, overrides: list[str], profile: Optional[Path], out: Optional[Path],
              retry_failed: bool, auto_produce: bool, report: bool, reports_dir: Path, console: Any) -> int:
    """Run the given specs; returns the exit code (0 all ok, 1 when some sweep point failed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from unlearnspec.run.runner import RunOptions, run_spec

    files, problems = find_spec_files(paths)
    files = [f for f in files if not is_profile_path(f) and not is_world_file(f)]
    if problems:
        raise UserError(problems)
    if not files:
        raise UserError([Problem(" ".join(map(str, paths)), "", "no spec files found.")])
    if out is not None and len(files) > 1:
        raise UserError.one("--out", "--out takes one spec; several specs each write to their own output.dir.")
    ordered = order_specs(files, profile)
    _quiet_libraries()
    failed = 0
    experiments: list[tuple[Path, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        options = RunOptions(profile=profile, overrides=overrides, out=out, retry_failed=retry_failed,
                             auto_produce=auto_produce, say=lambda m: progress.console.print(m, markup=False, highlight=False),
                             progress=progress)
        sweep = progress.add_task("specs", total=len(ordered))
        for path in ordered:
            progress.update(sweep, description=f"spec {path.stem}")
            results = run_spec(path, options)
            failed += sum(r.status == "failed" for r in results.runs)
            spec = load_spec(path, overrides=overrides, profile=profile)
            if spec.magic is None:
                experiments.append((path, results))
            progress.advance(sweep)
    if report and experiments:
        _report(experiments, profile, out, reports_dir, console)
    if failed:
        console.print(f"[yellow]{failed} sweep point(s) failed; their reasons are in results.json[/yellow]")
    return 1 if failed else 0


def _report(experiments: list[tuple[Path, Any]], profile: Optional[Path], out: Optional[Path], reports_dir: Path,
            console: Any) -> None:
    from unlearnspec.report.commands import run_report

    run_dirs = []
    for path, _ in experiments:
        spec = load_spec(path, profile=profile)
        run_dirs.append(str(out if out is not None else resolve_path(path, spec.output.dir)))
    run_report(run_dirs, out=reports_dir, reference=None, toy=profile is not None, plot=True, console=console)

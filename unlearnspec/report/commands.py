"""The `report` and `diff` commands: read inputs, write reports/<spec>.{md,json,png}, print tables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from unlearnspec.errors import UserError
from unlearnspec.report.build import table_from_reference
from unlearnspec.report.diff import diff_tables
from unlearnspec.report.inputs import Selection, load_run_input, load_table, report_for
from unlearnspec.report.model import ReportTable
from unlearnspec.report.plot import plot_tables
from unlearnspec.report.reference import (
    REFERENCE_DIR,
    ReferenceFile,
    all_references,
    find_reference,
    load_reference,
    render_reference_markdown,
)
from unlearnspec.report.render import markdown, print_table
from unlearnspec.safeio import check_name, write_json, write_text
from unlearnspec.spec.load import SPEC_SUFFIXES, load_spec


def _write(path: Path, text: str, out: Path) -> None:
    """Every report file goes through the one write path: atomic, inside `out`, never through a link."""
    write_text(path, text, root=out)


def write_report(
    table: ReportTable, out: Path, plot: bool, control: Optional[ReportTable] = None
) -> tuple[list[Path], Optional[str]]:
    """reports/<spec>.md, .json and (with matplotlib) .png with the control's sweep beside the
    run's; returns the files and a plot note."""
    check_name(table.spec, "spec name", f"report of {out}")  # it names the files below
    written = []
    note = None
    plot_line = None
    if plot:
        png = out / f"{table.spec}.png"
        tables = [table] + ([control] if control is not None else [])
        labels = [table.spec] + ([f"{control.spec} (control)"] if control is not None else [])
        note = plot_tables(tables, png, f"{table.spec}: hazard vs general accuracy over the LR sweep", labels, focus=0)
        if note is None:
            written.append(png)
            plot_line = f"![{table.spec}: hazard vs general accuracy]({png.name})"
        else:
            plot_line = f"_{note}_"
    md, js = out / f"{table.spec}.md", out / f"{table.spec}.json"
    _write(md, markdown(table, plot_line), out)
    write_json(js, table.model_dump(mode="json"), root=out, ensure_ascii=False)  # as `dumps`, and never NaN
    return [md, js, *written], note


def write_study(tables: list[ReportTable], out: Path, plot: bool, name: str = "study") -> list[Path]:
    """An index of several reports with one plot of all their sweeps."""
    for t in tables:
        check_name(t.spec, "spec name", f"study index {name}")
    lines = [f"# {name}", ""]
    written = []
    if plot:
        png = out / f"{name}.png"
        note = plot_tables(tables, png, "Hazard vs general accuracy, one line per experiment (LRs annotated)")
        if note is None:
            lines += [f"![{name}]({png.name})", ""]
            written.append(png)
        else:
            lines += [f"_{note}_", ""]
    lines += [
        f"- [{t.spec}]({t.spec}.md)" + (f": {t.title}" if t.title != t.spec else "")
        for t in sorted(tables, key=lambda t: t.spec)
    ]
    md = out / f"{name}.md"
    _write(md, "\n".join(lines) + "\n", out)
    return [md, *written]


def check_power(power: float, option: str = "--power") -> float:
    """The power an MDE is stated at must be in [0.5, 1) (Connor's formula picks the root for z(power) >= 0)."""
    if not 0.5 <= power < 1.0:
        raise UserError.one(
            option,
            f"must be in [0.5, 1) (got {power}); it is the probability of detecting an effect of the MDE's size.",
        )
    return power


@dataclass(frozen=True)
class ReportOutput:
    """Where `report` writes: the folder of <spec>.md/.json/.png, whether it draws plots, and the file name (without
    .md/.png) of the study index written when several runs are reported together."""

    folder: Path
    plot: bool = True
    study_name: str = "study"


def report_runs(runs: list[Path], out: Path, toy: bool, console) -> None:
    """The reports a finished `run` writes (run/options.Reporter): every experiment folder, with plots."""
    run_report([str(r) for r in runs], ReportOutput(out), reference=None, toy=toy, console=console)


def run_report(
    args: list[str],
    output: ReportOutput,
    reference: Optional[bool],
    toy: bool,
    console,
    selection: Optional[Selection] = None,
) -> list[Path]:
    """Write and print the report of each run into `output`; with several, also the study index and plot
    (`<study_name>.md`, `.png`). Runs reported together form the study: a positive control among them gives the
    others' oracle fraction."""
    out, plot, study_name = output.folder, output.plot, output.study_name
    check_power((selection or Selection()).power)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", study_name):
        raise UserError.one(
            "--study-name", f"{study_name!r} is not a plain file name; use letters, digits, `_` or `-`."
        )
    if not args:
        raise UserError.one(
            "unlearnspec report",
            "needs run folders (holding results.json) or spec files, e.g. `unlearnspec report specs/exp7_all_tokens.yaml`.",
        )
    runs = [load_run_input(a, toy=toy) for a in args]
    names = [r.results.spec.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError.one(
            "unlearnspec report",
            f"got two runs of the same spec ({', '.join(dupes)}); their reports would overwrite each other. Report them into different --out folders.",
        )
    written: list[Path] = []
    tables = []
    for run in runs:
        built = report_for(run, runs, reference, selection)
        table, note = built.table, built.note
        files, plot_note = write_report(table, out, plot, built.control)
        written += files
        tables.append(table)
        print_table(table, console, plot_note)
        if note:
            console.print(f"  note: {note}", markup=False)
    if len(tables) > 1:
        written += write_study(tables, out, plot, study_name)
    console.print("wrote " + ", ".join(str(p) for p in written), markup=False)
    return written


def _reference_for(arg: str) -> ReferenceFile:
    path = Path(arg)
    if path.suffix == ".json" and path.is_file():
        return load_reference(path)
    name = load_spec(path, check_refs=False).name if path.suffix in SPEC_SUFFIXES and path.is_file() else arg
    ref = find_reference(name)
    if ref is None:
        known = ", ".join(r.spec for r in all_references())
        raise UserError.one(arg, f"no recorded reference for {name!r}; the seed recorded: {known}.")
    return ref


def reference_markdown(args: list[str]) -> tuple[str, list[ReferenceFile]]:
    refs = [_reference_for(a) for a in args] if args else all_references()
    if not refs:
        raise UserError.one(str(REFERENCE_DIR), "no recorded reference files found; reinstall unlearnspec.")
    return "\n".join(render_reference_markdown(r) for r in refs), refs


def run_reference_only(args: list[str], out: Optional[Path], plot: bool, console) -> list[Path]:
    """Print the seed's tables as recorded; with --out also write recorded.md and its plot."""
    text, refs = reference_markdown(args)
    console.out(text, highlight=False)
    if out is None:
        return []
    written = []
    body = text
    if plot:
        png = out / "recorded_study.png"
        tables = [table_from_reference(r) for r in refs]
        note = plot_tables(tables, png, "Recorded seed runs (invalid: bad HPs): hazard vs general accuracy")
        body = (f"![recorded study]({png.name})\n\n" if note is None else f"_{note}_\n\n") + text
        if note is None:
            written.append(png)
    md = out / "recorded.md"
    _write(md, "# Recorded tables of the seed\n\n" + body, out)
    written.insert(0, md)
    console.print("wrote " + ", ".join(str(p) for p in written), markup=False)
    return written


def run_diff(old: str, new: str, console, fmt: str = "text") -> int:
    """Print changed cells (text, or a Markdown table for a PR comment); exit 0 when nothing changed
    beyond noise, else 1."""
    changes = diff_tables(load_table(old), load_table(new))
    if fmt == "markdown":
        from unlearnspec.report.diff import markdown_summary

        console.out(markdown_summary(changes, old, new), highlight=False, end="")
        return 1 if any(c.beyond_noise for c in changes) else 0
    if not changes:
        console.print("no changes", markup=False)
        return 0
    for change in changes:
        console.print(change.render(), markup=False)
    real = sum(c.beyond_noise for c in changes)
    console.print(f"{len(changes)} change(s), {real} beyond noise (|Δ| > 1.96·sqrt(se_old² + se_new²))", markup=False)
    return 1 if real else 0

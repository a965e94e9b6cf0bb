"""Resolve report/diff arguments (run folders, results.json, spec files, report or reference JSON)
to loaded results, and find each run's control results and recorded reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from unlearnspec.errors import UserError
from unlearnspec.report.build import (  # noqa: F401 - Selection: re-exported for the CLI
    PositiveControl,
    Selection,
    StudyContext,
    selectivity_by_lr,
    table_from_reference,
    table_from_results,
)
from unlearnspec.report.model import ReportTable, load_report
from unlearnspec.report.reference import ReferenceFile, find_reference, load_reference
from unlearnspec.run.results import RESULTS_FILE, Results, load_results
from unlearnspec.safeio import read_json
from unlearnspec.spec.load import SPEC_SUFFIXES, load_spec, project_root, resolve_path
from unlearnspec.spec.yamlio import read_yaml_file


@dataclass
class RunInput:
    """One spec run: its results and the folder holding results.json."""

    results: Results
    folder: Path
    spec_path: Optional[Path] = None
    title: Optional[str] = None

    @property
    def root(self) -> Path:
        return project_root(self.spec_path or self.folder / RESULTS_FILE)

    @property
    def toy(self) -> bool:
        tasks = self.results.spec.tasks
        return self.results.spec.profile is not None or (bool(tasks) and all(t.startswith("toy_") for t in tasks))


def toy_profile() -> Path:
    try:
        from unlearnspec.spec.profile import default_toy_profile
    except ImportError:
        raise UserError.one(
            "--toy",
            "the toy profile (unlearnspec.spec.profile) is not available in this checkout; pass the toy run's output folder instead.",
        ) from None
    return Path(default_toy_profile())


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def _description(spec_file: Path) -> Optional[str]:
    try:
        data, _ = read_yaml_file(spec_file)
    except UserError:  # only a title: an unreadable spec just has none
        return None
    desc = data.get("description") if isinstance(data, dict) else None
    return desc if isinstance(desc, str) and desc else None


def load_run_input(arg: str, toy: bool = False) -> RunInput:
    """A run folder, a results.json, or a spec file (its output.dir; through the toy profile with --toy)."""
    path = Path(arg)
    if path.suffix in SPEC_SUFFIXES and path.is_file():
        spec = load_spec(path, profile=toy_profile() if toy else None)
        folder = resolve_path(path, spec.output.dir)
        if not (folder / RESULTS_FILE).is_file():
            raise UserError.one(
                str(path),
                f"no results yet in {spec.output.dir}/; run `unlearnspec run {arg}{' --toy' if toy else ''}` first.",
            )
        return RunInput(load_results(folder), folder, path, spec.description or None)
    if path.is_dir() or path.name == RESULTS_FILE:
        folder = path if path.is_dir() else path.parent
        run = RunInput(load_results(folder), folder)
        spec_file = project_root(folder / RESULTS_FILE) / run.results.spec.path
        if spec_file.is_file():
            run.title = _description(spec_file)
        return run
    if not path.exists():
        raise UserError.one(arg, "no such file or folder. Give a run folder (holding results.json) or a spec file.")
    raise UserError.one(arg, "not a run folder, results.json or spec file.")


def profile_path(profile: Optional[str], root: Path) -> Optional[Path]:
    """The profile a run was mapped through: results.json may hold a path or just its stem."""
    if not profile:
        return None
    given = Path(profile)
    for candidate in (given, root / given, root / "specs" / "profiles" / f"{profile}.yaml"):
        if candidate.suffix in SPEC_SUFFIXES and candidate.is_file():
            return candidate
    try:
        toy = toy_profile()
    except UserError:
        return None
    return toy if toy.stem == given.stem else None


@dataclass
class ControlLookup:
    """The control's results (if found), its spec name, and a short path-stable status note."""

    found: Optional[tuple[Results, Path]]
    name: Optional[str]
    status: Optional[str]


def find_control(run: RunInput, siblings: list[RunInput]) -> ControlLookup:
    """The control's results: from a sibling argument, else from the control spec's output dir."""
    info = run.results.spec
    if info.control is None and info.control_path is None:
        return ControlLookup(None, None, None)
    spec = None
    status = None
    if info.control_path is not None:
        spec_path = resolve_path(run.spec_path or run.folder / RESULTS_FILE, info.control_path)
        if not spec_path.is_file():
            status = f"control spec {info.control_path} not found"
        else:
            try:
                spec = load_spec(spec_path, profile=profile_path(info.profile, run.root))
            except UserError:
                status = f"control spec {info.control_path} is invalid"
    names = {n for n in (info.control, spec.name if spec is not None else None) if n}
    name = spec.name if spec is not None else info.control
    for other in siblings:
        if other is not run and other.results.spec.name in names and other.toy == run.toy:
            return ControlLookup(
                (other.results, other.folder),
                other.results.spec.name,
                f"results in {_relative(other.folder, run.root)}",
            )
    if spec is None:
        return ControlLookup(
            None, name, status or "control results not found (give its run folder as another argument)"
        )
    folder = resolve_path(spec_path, spec.output.dir)
    if not (folder / RESULTS_FILE).is_file():
        return ControlLookup(
            None, name, f"no results yet in {spec.output.dir}/ (run `unlearnspec run {info.control_path}`)"
        )
    return ControlLookup((load_results(folder), folder), name, f"results in {spec.output.dir}")


@dataclass
class Built:
    """A run's report, its control's (for the plot), and a console note."""

    table: ReportTable
    control: Optional[ReportTable] = None
    note: Optional[str] = None


def find_positive_control(run: RunInput, siblings: list[RunInput], lookup: ControlLookup) -> Optional[RunInput]:
    """The study's oracle: a run among those reported together (`report A B C`, or every experiment
    of `unlearnspec run`) whose results.json records `role: positive_control` and whose matched
    control is this run's control (same world). The first by spec name when there are several;
    None for the positive control itself and for runs without a control."""
    if lookup.name is None or run.results.spec.role == "positive_control":
        return None
    found = [
        other
        for other in siblings
        if other is not run
        and other.results.spec.role == "positive_control"
        and other.toy == run.toy
        and find_control(other, siblings).name == lookup.name
    ]
    return min(found, key=lambda r: r.results.spec.name) if found else None


def report_for(
    run: RunInput, siblings: list[RunInput], reference: Optional[bool], selection: Optional[Selection] = None
) -> Built:
    """The report of one run; the recorded reference is shown by default unless this is a toy run
    (toy accuracies measure another world). Selectivity rows get the fraction of the oracle's
    selectivity when a positive control of the same study is among `siblings`."""
    sel = selection or Selection()
    lookup = find_control(run, siblings)
    control = lookup.found
    ref = find_reference(run.results.spec.name)
    show = reference if reference is not None else (ref is not None and not run.toy)
    note = f"no recorded reference for {run.results.spec.name}" if reference and ref is None else None
    recorded = ref.recorded_table(comparable=not run.toy) if show and ref is not None else None
    oracle_run = find_positive_control(run, siblings, lookup)
    positive = None
    if oracle_run is not None:
        found = find_control(oracle_run, siblings).found
        status = f"results in {_relative(oracle_run.folder, run.root)}" + (
            "" if found is not None else "; its control results not found"
        )
        oracle_table = table_from_results(
            oracle_run.results,
            oracle_run.folder,
            toy=run.toy,
            study=StudyContext(control=found, control_status=""),
            selection=sel,
        )
        positive = PositiveControl(oracle_run.results.spec.name, status, selectivity_by_lr(oracle_table))
    study = StudyContext(control=control, control_status=lookup.status, positive=positive, recorded=recorded)
    table = table_from_results(run.results, run.folder, title=run.title, toy=run.toy, study=study, selection=sel)
    if lookup.name is not None:
        table = table.model_copy(update={"control": lookup.name})
    control_table = None
    if control is not None:
        control_table = table_from_results(*control, toy=run.toy, selection=sel)
    return Built(table, control_table, note)


def load_table(arg: str) -> ReportTable:
    """For diff: a report JSON, a reference JSON, a results.json, a run folder or a spec file."""
    path = Path(arg)
    if path.suffix == ".json" and path.is_file() and path.name != RESULTS_FILE:
        raw = read_json(
            path,
            "JSON file",
            "file not found.",
            "Give a report JSON, reference JSON, results.json, run folder or spec file.",
        )
        if isinstance(raw, dict) and "columns" in raw and raw.get("recorded") is True:
            ref: ReferenceFile = load_reference(path)
            return table_from_reference(ref)
        if isinstance(raw, dict) and "runs" in raw:
            return table_from_results(load_results(path), path.parent)
        return load_report(path)
    run = load_run_input(arg)
    return table_from_results(run.results, run.folder, title=run.title, toy=run.toy)

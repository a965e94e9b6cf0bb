"""Doctor rules that read numbers — results.json of a run, or the seed's recorded tables: collapse to
chance, effects within noise, and an all-tokens control that itself moves the metrics (D7-D9)."""

from __future__ import annotations

from typing import Iterator, Optional

from unlearnspec.doctor.context import Entry, Workspace
from unlearnspec.doctor.findings import Finding
from unlearnspec.report.build import Selection, StudyContext, table_from_reference, table_from_results
from unlearnspec.report.model import ReportTable, Row
from unlearnspec.report.render import TEST_LABEL, fmt_p
from unlearnspec.report.stats import DEFAULT_POWER
from unlearnspec.spec.schema import Spec


def tables_for(entry: Entry, ws: Workspace, power: float = DEFAULT_POWER) -> list[tuple[str, ReportTable]]:
    """(origin, table) for the spec's results.json and for its recorded reference, when present
    (`power`: the power their MDE is stated at)."""
    out: list[tuple[str, ReportTable]] = []
    control = ws.control(entry)
    found = ws.results(entry)
    if found is not None:
        ctrl = ws.results(control) if control is not None else None
        status = "results" if ctrl is not None else None
        study = StudyContext(control=ctrl, control_status=status)
        out.append(("results.json", table_from_results(*found, study=study, selection=Selection(power=power))))
    ref = ws.reference(entry)
    if ref is not None:
        ctrl_ref = ws.reference(control) if control is not None else None
        out.append((f"recorded reports/reference/{ref.spec}.json", table_from_reference(ref, ctrl_ref, power)))
    return out


def _cells_text(table: ReportTable, row: Row) -> str:
    parts = []
    for t in table.tasks:
        c = row.cells.get(t.name)
        if c is not None:
            parts.append(f"{t.display} {c.acc:.4f} [{c.ci_low:.4f}, {c.ci_high:.4f}]")
    return ", ".join(parts)


def _delta_text(table: ReportTable, row: Row, against: str) -> str:
    parts = []
    for t in table.tasks:
        c = row.cells.get(t.name)
        comp = (c.vs_control if against == "control" else c.vs_baseline) if c is not None else None
        if comp is not None:
            parts.append(f"{t.display} {comp.delta:+.4f} ({fmt_p(comp.p)}, {TEST_LABEL[comp.test]})")
    return ", ".join(parts)


def _ok_runs(table: ReportTable) -> list[Row]:
    return [r for r in table.rows if r.kind == "run" and r.status == "ok" and r.cells]


# --------------------------------------------------------------------------- D7 collapse
def collapse(entry: Entry, origin: str, table: ReportTable) -> Iterator[Finding]:
    rows = [r for r in _ok_runs(table) if r.collapsed]
    if not rows:
        return
    yield Finding(
        "D7",
        "warning",
        entry.shown,
        f"{len(rows)} sweep point(s) collapsed to chance on every task ({origin})",
        tuple(f"lr {r.label}: {_cells_text(table, r)}" for r in rows),
        "Exclude these points from any selectivity claim (nothing is left to be selective about); sweep lower LRs.",
    )


# --------------------------------------------------------------------------- D8 within noise
def _against(row: Row) -> Optional[str]:
    cells = list(row.cells.values())
    if any(c.vs_control is not None for c in cells):
        return "control"
    if any(c.vs_baseline is not None for c in cells):
        return "baseline"
    return None


def _significant(row: Row, against: str) -> bool:
    comps = [c.vs_control if against == "control" else c.vs_baseline for c in row.cells.values()]
    return any(c is not None and c.significant for c in comps)


def within_noise(entry: Entry, origin: str, table: ReportTable) -> Iterator[Finding]:
    spec = entry.spec
    if spec is not None and _all_tokens_control(spec):
        return  # a control that does not move is what a control should do (see D9)
    live = [r for r in _ok_runs(table) if not r.collapsed]
    quiet = []
    for row in live:
        against = _against(row)
        if against is not None and not _significant(row, against):
            quiet.append(f"lr {row.label} vs {against}: {_delta_text(table, row, against)}")
    if not quiet:
        return
    if len(quiet) == len(live):
        message = f"no sweep point differs from its reference beyond noise: the experiment's only 'effect' is noise ({origin})"
    else:
        message = f"{len(quiet)} of {len(live)} non-collapsed sweep point(s) show no difference beyond noise ({origin})"
    yield Finding(
        "D8",
        "warning",
        entry.shown,
        message,
        tuple(quiet),
        "Do not read these differences as effects; log per-question samples (paired McNemar is more sensitive) or evaluate more questions.",
    )


def _all_tokens_control(spec: Spec) -> bool:
    """Plain training on every token: what D8 leaves alone and D9 judges. An unlearning objective on all forget
    tokens (`tokens.mode: all`, `objective: npo`, ...) is an experiment, not a control."""
    return spec.tokens.mode == "all" and spec.objective.name == "weighted"


# --------------------------------------------------------------------------- D9 control moves the metrics
def control_moves(entry: Entry, origin: str, table: ReportTable) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None or spec.magic is not None or not _all_tokens_control(spec):
        return
    moved = [r for r in _ok_runs(table) if _significant(r, "baseline")]
    if not moved:
        return
    yield Finding(
        "D9",
        "warning",
        entry.shown,
        f"the all-tokens control itself moves the metrics beyond noise at {len(moved)} LR(s) ({origin})",
        tuple(f"lr {r.label} vs baseline: {_delta_text(table, r, 'baseline')}" for r in moved),
        "Read every experiment against this control at the same LR (the report's `Δ control` column), not against the untouched baseline.",
    )


def result_findings(entry: Entry, ws: Workspace, power: float = DEFAULT_POWER) -> Iterator[Finding]:
    """D7-D9 on each table of the spec (results.json, recorded reference)."""
    for origin, table in tables_for(entry, ws, power):
        yield from collapse(entry, origin, table)
        yield from within_noise(entry, origin, table)
        yield from control_moves(entry, origin, table)

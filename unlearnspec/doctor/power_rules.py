"""Rules about a whole study: can it show an effect at all?

The study: the specs given to one doctor call that share a control (the experiments whose `control:`
resolves to the same spec file, plus that control). An experiment without a control is in no study
(D1 says so); score specs are in none.

- D13 (no-positive-control): no experiment of the study has `role: positive_control`. On the toy world
  (toy specs, e.g. `doctor --toy`, or results written through a profile or on toy tasks) this is always a
  warning: the world knows which tokens carry the hazard, so a study there can and should show that it
  could find an effect. On real runs it is a warning only when the results (or the recorded tables) show
  that nothing moved anywhere: the control within noise of the baseline and every run within noise of
  its control and the baseline, none collapsed. Without results, a real study is not judged.
- D14 (underpowered): the study's largest effect is below the minimum detectable effect of its test.
  The effects are every experiment's Δ control (Δ base where it has no control results) on every task
  of its ok, non-collapsed rows; each is divided by the MDE its table states for that task (power
  `--power`, default 0.8, at α = 0.05; see report.power); when the largest ratio is below 1, no effect
  in the study is one its tests would find reliably.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from unlearnspec.doctor.context import Entry, Workspace, display
from unlearnspec.doctor.findings import Finding
from unlearnspec.doctor.result_rules import tables_for
from unlearnspec.report.model import ReportTable
from unlearnspec.report.render import fmt_power
from unlearnspec.report.stats import DEFAULT_POWER


def studies(entries: list[Entry], ws: Workspace) -> list[tuple[Entry, list[Entry]]]:
    """(control, experiments) per control that the given experiments share, in control path order."""
    groups: dict[Path, tuple[Entry, list[Entry]]] = {}
    for entry in entries:
        if not entry.is_experiment or entry.spec is None or entry.spec.control is None:
            continue
        control = ws.control(entry)
        if control is None or control.spec is None:
            continue  # D0/D1 report a missing or invalid control
        key = control.path.resolve()
        if key == entry.path.resolve():
            continue
        groups.setdefault(key, (control, []))[1].append(entry)
    return [groups[k] for k in sorted(groups)]


def _is_toy(entry: Entry, ws: Workspace) -> bool:
    spec = entry.spec
    if spec is None:
        return False
    if spec.model.toy is not None:
        return True
    found = ws.results(entry)
    if found is None:
        return False
    info = found[0].spec
    return info.profile is not None or (bool(info.tasks) and all(t.startswith("toy_") for t in info.tasks))


def _moved(table: ReportTable) -> Optional[bool]:
    """Whether any ok run of the table collapsed or differs beyond noise from its baseline or control;
    None when the table has no ok run."""
    rows = [r for r in table.rows if r.kind == "run" and r.status == "ok" and r.cells]
    if not rows:
        return None
    return any(
        r.collapsed
        or any(
            (c.vs_baseline is not None and c.vs_baseline.significant)
            or (c.vs_control is not None and c.vs_control.significant)
            for c in r.cells.values()
        )
        for r in rows
    )


def _study_text(control: Entry, experiments: list[Entry]) -> str:
    names = ", ".join(sorted(display(e.path) for e in experiments))
    return f"study: the specs checked whose control is {control.shown}: {names}"


def no_positive_control(
    control: Entry, experiments: list[Entry], ws: Workspace, power: float = DEFAULT_POWER
) -> Iterator[Finding]:
    """D13 (see the module docstring)."""
    if any(e.spec is not None and e.spec.role == "positive_control" for e in experiments):
        return
    members = [control, *experiments]
    if any(_is_toy(e, ws) for e in members):
        why = "the study runs on the toy world, whose ground truth gives a positive control (the forget-fact tokens)"
    else:
        moved = [m for e in members for _, t in tables_for(e, ws, power) if (m := _moved(t)) is not None]
        if not moved or any(moved):
            return
        why = "nothing moved anywhere: the control is within noise of the baseline and every run within noise of its control and the baseline"
    yield Finding(
        "D13",
        "warning",
        control.shown,
        "no positive control in the study: a null result cannot be told apart from a world or an evaluation that cannot show an effect",
        (_study_text(control, experiments), why),
        "Add an experiment with `role: positive_control` matched field by field to the same control (on the toy world: ascent on the "
        "ground-truth forget-fact tokens, e.g. specs/controls/oracle.yaml) and check it in the same doctor call.",
    )


def underpowered(
    control: Entry, experiments: list[Entry], ws: Workspace, power: float = DEFAULT_POWER
) -> Iterator[Finding]:
    """D14 (see the module docstring)."""
    best: Optional[tuple[float, str]] = None
    states: list[str] = []
    for entry in experiments:
        for origin, table in tables_for(entry, ws, power):
            mdes = {p.task: p for p in table.mde if p.mde}
            states += (
                [f"{entry.name} ({origin}) MDE: " + "; ".join(fmt_power(table, p) for p in table.mde)]
                if table.mde
                else []
            )
            for row in table.rows:
                if row.kind != "run" or row.status != "ok" or row.collapsed:
                    continue
                for task, cell in row.cells.items():
                    p = mdes.get(task)
                    comp = (cell.vs_control if p.against == "control" else cell.vs_baseline) if p is not None else None
                    if p is None or comp is None or p.mde is None:
                        continue
                    ratio = abs(comp.delta) / p.mde
                    display_name = next((t.display for t in table.tasks if t.name == task), task)
                    text = f"{entry.name} lr {row.label} {display_name} Δ {p.against} {comp.delta:+.4f} (MDE {p.mde:.4f}, {origin})"
                    if best is None or ratio > best[0]:
                        best = (ratio, text)
    if best is None or best[0] >= 1.0:
        return
    yield Finding(
        "D14",
        "warning",
        control.shown,
        f"the study's largest effect is below the minimum detectable effect of its tests (power {power:.2f}, α = 0.05)",
        (_study_text(control, experiments), f"largest effect: {best[1]}, {best[0]:.2f}x the MDE", *states),
        "An effect this small would be missed most of the time: evaluate more questions (the MDE shrinks with 1/sqrt(n)), log per-question "
        "samples (paired McNemar), or test a stronger intervention; do not read the absence of significant effects as no effect.",
    )


def study_findings(entries: list[Entry], ws: Workspace, power: float = DEFAULT_POWER) -> Iterator[Finding]:
    """D13 and D14 for every study among the checked specs."""
    for control, experiments in studies(entries, ws):
        yield from no_positive_control(control, experiments, ws, power)
        yield from underpowered(control, experiments, ws, power)

"""Build report tables: from a results.json (+ samples.json, + the control's results) or from the
seed's recorded numbers. Each cell gets its interval, chance flag and tests vs baseline and control."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TypeVar

from unlearnspec.report.attack import attack_cells
from unlearnspec.report.evaluation import Evaluation
from unlearnspec.report.model import (
    KNOWN_TASK_SIZES,
    Cell,
    Comparison,
    RecordedTable,
    ReportTable,
    Row,
    Selectivity,
    TaskInfo,
    display_name,
    task_role,
)
from unlearnspec.report.power import table_mde
from unlearnspec.report.reference import ReferenceFile
from unlearnspec.report.selectivity import missing_selectivity, selectivity, selectivity_tasks, with_oracle
from unlearnspec.report.stats import ALPHA, DEFAULT_POWER, at_chance, wilson_interval
from unlearnspec.run.results import EvalRecord, Results, RunRecord, load_samples


def _p(value: float) -> float:
    return float(f"{value:.4g}")


def compare(task: str, new: Evaluation, ref: Evaluation) -> Optional[Comparison]:
    """new - ref on one task: McNemar when both have per-question correctness on the same questions,
    else the unpaired two-proportion z test."""
    if task not in new.acc or task not in ref.acc:
        return None
    result = new.test_against(ref, task)
    return Comparison(
        delta=round(new.acc[task] - ref.acc[task], 4),
        p=_p(result.p),
        test=result.test,
        significant=result.significant(ALPHA),
        b=result.b,
        c=result.c,
    )


def make_cells(
    ev: Evaluation, tasks: list[str], base: Optional[Evaluation], control: Optional[Evaluation]
) -> dict[str, Cell]:
    cells = {}
    for task in tasks:
        if task not in ev.acc:
            continue
        acc, n = ev.acc[task], ev.n[task]
        low, high = wilson_interval(acc, n)
        cells[task] = Cell(
            acc=round(acc, 4),
            stderr=round(ev.stderr[task], 6),
            n=n,
            ci_low=round(low, 4),
            ci_high=round(high, 4),
            at_chance=at_chance(acc, n),
            vs_baseline=compare(task, ev, base) if base is not None else None,
            vs_control=compare(task, ev, control) if control is not None else None,
        )
    return cells


def format_lr(lr: float) -> str:
    """Compact LR as people write it: 1e-4, 2.5e-5, 0.01."""
    if lr == 0 or 1e-2 <= abs(lr) < 1e4:
        return f"{lr:g}"
    mant, exp = f"{lr:.6e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


V = TypeVar("V")


def _lr_key(lr: Optional[float], other: dict[float, V]) -> Optional[V]:
    if lr is None:
        return None
    return next((ev for k, ev in other.items() if math.isclose(k, lr, rel_tol=1e-9)), None)


def _collapsed(cells: dict[str, Cell]) -> bool:
    return bool(cells) and all(c.at_chance for c in cells.values())


def _tasks_info(tasks: list[str]) -> list[TaskInfo]:
    return [TaskInfo(name=t, display=display_name(t), role=task_role(t)) for t in tasks]


# --------------------------------------------------------------------------- from results.json
def evaluation_of(results_dir: Path, record: EvalRecord, metric: str) -> Evaluation:
    loaded, problem = load_samples(results_dir, record)
    samples = loaded or {}
    ev = Evaluation(samples_problem=problem)
    for task, m in record.metrics.items():
        use_norm = metric == "acc_norm" and m.acc_norm is not None
        acc = m.acc_norm if use_norm else m.acc
        stderr = m.acc_norm_stderr if use_norm else m.acc_stderr
        ev.add(task, float(acc), m.n, stderr, samples.get(task))  # type: ignore[arg-type]
    return ev


def _run_lr(run: RunRecord) -> Optional[float]:
    lr = run.hparams.get("lr")
    return float(lr) if lr is not None else None


def _baseline_evaluation(results: Results, folder: Path) -> tuple[Optional[Evaluation], str]:
    base = results.baseline
    if base is None:
        return None, "baseline"
    if base.status == "ok" and base.metrics:
        return evaluation_of(folder, base, results.spec.metric), "baseline"
    if base.recorded:
        # Recorded numbers come without n: use the run's question count (same eval settings).
        ns = {t: m.n for run in results.runs for t, m in run.metrics.items()}
        ev = Evaluation()
        for task, acc in base.recorded.items():
            n = ns.get(task, KNOWN_TASK_SIZES.get(task))
            if n:
                ev.add(task, acc, n)
        return ev, "baseline (recorded)"
    return None, "baseline"


def control_evaluations(results: Results, folder: Path) -> dict[float, Evaluation]:
    out = {}
    for run in results.runs:
        lr = _run_lr(run)
        if run.status == "ok" and lr is not None:
            out[lr] = evaluation_of(folder, run, results.spec.metric)
    return out


@dataclass(frozen=True)
class Selection:
    """How a report reads selectivity: which tasks (None: selectivity_tasks's rule) and the MDE's power."""

    hazard_task: Optional[str] = None
    general_task: Optional[str] = None
    power: float = DEFAULT_POWER


@dataclass(frozen=True)
class PositiveControl:
    """The study's positive control (its oracle), when one was reported with the run: every row with a selectivity
    then gets the fraction of the oracle's at the same LR."""

    name: str
    status: str
    """Where its results were found (shown in the table's header)."""
    selectivity: dict[float, Selectivity]
    """The oracle's selectivity by LR (`selectivity_by_lr` of its own table)."""


@dataclass(frozen=True)
class StudyContext:
    """What a run's table is compared with besides its baseline: its matched control, the study's positive
    control and the seed's recorded numbers for the spec."""

    control: Optional[tuple[Results, Path]] = None
    """The control spec's results and folder, if found."""
    control_status: Optional[str] = None
    """How the control was looked for (a note for the header; None: the spec names no control)."""
    positive: Optional[PositiveControl] = None
    recorded: Optional[RecordedTable] = None


def table_from_results(
    results: Results,
    folder: Path,
    *,
    title: Optional[str] = None,
    toy: bool = False,
    study: StudyContext = StudyContext(),
    selection: Selection = Selection(),
) -> ReportTable:
    """The report of one spec run (the folder holds its results.json), compared with what `study` holds; the
    hazard/general tasks default to selectivity.selectivity_tasks's rule; `selection.power` is the power the MDE
    is stated at."""
    control, control_status, positive = study.control, study.control_status, study.positive
    hazard_task, general_task, power = selection.hazard_task, selection.general_task, selection.power
    oracle = positive.selectivity if positive is not None else None
    metric = results.spec.metric
    tasks = list(results.spec.tasks) or sorted({t for r in results.runs for t in r.metrics})
    hazard, general = selectivity_tasks(
        _tasks_info(tasks), hazard_task, general_task, results.spec.hazard_task, results.spec.general_task
    )
    base_ev, base_label = _baseline_evaluation(results, folder)
    ctrl = control_evaluations(*control) if control is not None else {}
    rows: list[Row] = []
    if base_ev is not None:
        cells = make_cells(base_ev, tasks, None, None)
        rows.append(
            Row(kind="baseline", point="baseline", label=base_label, cells=cells, samples_note=_samples_note(base_ev))
        )
    elif results.baseline is not None and results.baseline.status != "ok":
        rows.append(
            Row(
                kind="baseline",
                point="baseline",
                label="baseline",
                status=results.baseline.status,
                reason=results.baseline.reason,
            )
        )
    runs = sorted(results.runs, key=lambda r: (_run_lr(r) if _run_lr(r) is not None else math.inf, r.point))
    for run in runs:
        lr = _run_lr(run)
        stats = run.token_stats
        label = format_lr(lr) if lr is not None else run.point
        fraction = round(stats.selected_fraction, 4) if stats else None
        factor = round(stats.per_token_lr_factor, 4) if stats else None
        if run.status != "ok":
            reason = (run.reason or "no reason recorded").strip()
            rows.append(
                Row(
                    kind="run",
                    point=run.point,
                    lr=lr,
                    label=label,
                    status="failed",
                    reason=reason,
                    selected_fraction=fraction,
                    lr_factor=factor,
                )
            )
            continue
        ctrl_ev = _lr_key(lr, ctrl)
        run_ev = evaluation_of(folder, run, metric)
        cells = make_cells(run_ev, tasks, base_ev, ctrl_ev)
        sel = selectivity(run_ev, ctrl_ev, hazard, general) if ctrl_ev is not None else None
        if sel is not None and oracle is not None:
            sel = with_oracle(sel, _lr_key(lr, oracle))
        rows.append(
            Row(
                kind="run",
                point=run.point,
                lr=lr,
                label=label,
                selected_fraction=fraction,
                lr_factor=factor,
                collapsed=_collapsed(cells),
                control_point=(ctrl_ev is not None) if control_status is not None else None,
                cells=cells,
                samples_note=_samples_note(run_ev, ctrl_ev),
                selectivity=sel,
                attack=attack_cells(run, hazard, run_ev, base_ev, lambda record: evaluation_of(folder, record, metric)),
            )
        )
    infos = _tasks_info(tasks)
    return ReportTable(
        spec=results.spec.name,
        title=title or results.spec.name,
        source="run",
        toy=toy,
        metric=metric,
        tasks=infos,
        control=results.spec.control,
        control_status=control_status,
        role=results.spec.role,
        hazard_task=hazard,
        general_task=general,
        selectivity_note=missing_selectivity(infos, hazard, general) if results.spec.control else None,
        positive_control=positive.name if positive is not None else None,
        positive_control_status=positive.status if positive is not None else None,
        alpha=ALPHA,
        power=power,
        mde=table_mde(rows, infos, ALPHA, power),
        rows=rows,
        recorded=study.recorded,
        provenance=_provenance(results),
    )


def selectivity_by_lr(table: ReportTable) -> dict[float, Selectivity]:
    """The selectivity of each ok run row of a table, by LR (the oracle's, for the other runs' fraction)."""
    return {r.lr: r.selectivity for r in table.rows if r.lr is not None and r.selectivity is not None}


def _samples_note(ev: Evaluation, control: Optional[Evaluation] = None) -> Optional[str]:
    """Say in the row when a logged samples file was unusable, so its tests fell back to unpaired."""
    notes = []
    if ev.samples_problem:
        notes.append(f"unpaired: samples unreadable ({ev.samples_problem})")
    if control is not None and control.samples_problem:
        notes.append(f"unpaired vs control: control samples unreadable ({control.samples_problem})")
    return "; ".join(notes) or None


def _provenance(results: Results) -> dict[str, str]:
    prov = {k: str(v) for k, v in results.provenance.items()}
    prov["spec_hash"] = results.spec.hash
    if results.spec.profile:
        prov["profile"] = Path(results.spec.profile).name
    return dict(sorted(prov.items()))


# --------------------------------------------------------------------------- from recorded numbers
def recorded_evaluation(metrics: dict[str, str]) -> Evaluation:
    ev = Evaluation()
    for task, text in metrics.items():
        n = KNOWN_TASK_SIZES.get(task)
        if n is not None:
            ev.add(task, float(text), n)
    return ev


def table_from_reference(
    ref: ReferenceFile, control: Optional[ReferenceFile] = None, power: float = DEFAULT_POWER
) -> ReportTable:
    """The seed's table with intervals and unpaired tests (n from the known question counts)."""
    tasks = [t for t in ref.tasks if t in KNOWN_TASK_SIZES]
    hazard, general = selectivity_tasks(_tasks_info(tasks))
    base_ev = recorded_evaluation(ref.baseline)
    ctrl = {float(r.lr): recorded_evaluation(r.metrics) for r in control.rows} if control is not None else {}
    rows = [
        Row(
            kind="baseline", point="baseline", label="baseline (recorded)", cells=make_cells(base_ev, tasks, None, None)
        )
    ]
    fraction = ref.token_stats.selected_fraction if ref.token_stats else None
    for rec in sorted(ref.rows, key=lambda r: float(r.lr)):
        lr = float(rec.lr)
        ev = recorded_evaluation(rec.metrics)
        ctrl_ev = _lr_key(lr, ctrl)
        cells = make_cells(ev, tasks, base_ev, ctrl_ev)
        rows.append(
            Row(
                kind="run",
                selectivity=selectivity(ev, ctrl_ev, hazard, general) if ctrl_ev is not None else None,
                point=f"lr={rec.lr}",
                lr=lr,
                label=rec.lr,
                selected_fraction=fraction,
                collapsed=_collapsed(cells),
                control_point=(ctrl_ev is not None) if control is not None else None,
                cells=cells,
            )
        )
    return ReportTable(
        spec=ref.spec,
        title=ref.title,
        source="recorded",
        tasks=_tasks_info(tasks),
        hazard_task=hazard,
        general_task=general,
        alpha=ALPHA,
        power=power,
        mde=table_mde(rows, _tasks_info(tasks), ALPHA, power),
        control=control.spec if control is not None else None,
        control_status=f"recorded {control.spec}" if control is not None else None,
        rows=rows,
        provenance={"source": ref.source, "status": ref.status, **({"script": ref.script} if ref.script else {})},
    )

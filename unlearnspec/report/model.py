"""The report of one experiment as data: rows of cells with intervals and tests (reports/<spec>.json).

Rendering (console, Markdown), diff, plots and doctor's result rules all read this one model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from unlearnspec.report.stats import TestName
from unlearnspec.run.results import read_json_model

REPORT_FORMAT = 1
RECORDED_LABEL = "recorded (invalid: bad HPs)"

TASK_DISPLAY = {
    "wmdp_bio_robust": "WMDP Bio Robust",
    "wmdp_bio": "WMDP Bio",
    "mmlu": "MMLU",
    "toy_wmdp": "Toy WMDP",
    "toy_mmlu": "Toy MMLU",
}

KNOWN_TASK_SIZES = {"wmdp_bio_robust": 868, "mmlu": 14042}
"""Questions per task, for recorded numbers that come without n (NOTES.md)."""


def display_name(task: str) -> str:
    return TASK_DISPLAY.get(task, task)


def task_role(task: str) -> Literal["hazard", "general", "other"]:
    """WMDP-like tasks measure the hazard to forget, MMLU-like ones the knowledge to keep."""
    low = task.lower()
    if "wmdp" in low:
        return "hazard"
    if "mmlu" in low:
        return "general"
    return "other"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Comparison(_Model):
    """acc of this cell minus acc of the reference (baseline or control), with its test."""

    delta: float
    p: float
    test: TestName
    significant: bool
    b: Optional[int] = None
    c: Optional[int] = None


class Cell(_Model):
    """One task of one row."""

    acc: float
    stderr: float
    n: int
    ci_low: float
    ci_high: float
    at_chance: bool
    vs_baseline: Optional[Comparison] = None
    vs_control: Optional[Comparison] = None


class Selectivity(_Model):
    """Selectivity of a run against its matched control at the same LR:
    sel = (ctrl_hazard - run_hazard) - (ctrl_general - run_general), i.e. how much more the run
    forgot of the hazard task than of the general task, beyond what training on all tokens does.

    Each task's paired difference d = run - ctrl has Var(d) = (psi - d^2) / n from its per-question
    discordant pairs (psi = discordant / n); the two tasks have different questions, so
    Var(sel) = Var(d_hazard) + Var(d_general) and the 95% interval is sel +- 1.96 * sqrt(Var(sel)).
    A task without per-question samples on both sides uses the unpaired Var(d) = p_r(1-p_r)/n_r +
    p_c(1-p_c)/n_c; `test` then says `unpaired` (both tasks) or `mixed` (one)."""

    value: float
    se: float
    ci_low: float
    ci_high: float
    test: Literal["paired", "unpaired", "mixed"]
    significant: bool
    """The 95% interval excludes 0."""
    oracle: Optional[float] = None
    """The positive control's selectivity at the same LR (when the study has one)."""
    oracle_fraction: Optional[float] = None
    """value / oracle: the fraction of the oracle's selectivity this run achieves."""
    oracle_note: Optional[str] = None
    """Why oracle_fraction is n/a (no oracle run at this LR, the oracle's selectivity within noise, ...)."""


class TaskPower(_Model):
    """The minimum detectable effect (MDE) of one task's test in a table (see report.power)."""

    task: str
    n: int
    against: Literal["control", "baseline"]
    """The comparison the MDE is for: Δ control when the table has one, else Δ base."""
    test: Literal["mcnemar", "z-unpaired"]
    discordance: Optional[float] = None
    """McNemar: pooled discordance rate psi = sum(b + c) / sum(n) over the compared rows."""
    mde: Optional[float] = None
    note: Optional[str] = None
    """Why the MDE is n/a."""


class AttackCell(_Model):
    """The hazard task after k steps of the relearning attack on a run's model (report.attack)."""

    steps: int
    acc: float
    n: int
    ci_low: float
    ci_high: float
    recovery: Optional[float] = None
    """(acc - acc_unlearned) / (acc_baseline - acc_unlearned); None when n/a (`recovery_note` says why)."""
    recovery_low: Optional[float] = None
    recovery_high: Optional[float] = None
    recovery_method: Optional[Literal["bootstrap", "delta"]] = None
    """`bootstrap`: paired percentile bootstrap over questions; `delta`: delta method, independent binomials."""
    recovery_note: Optional[str] = None


class Row(_Model):
    """The baseline or one sweep point."""

    kind: Literal["baseline", "run"]
    point: str
    lr: Optional[float] = None
    status: Literal["ok", "failed", "skipped"] = "ok"
    reason: Optional[str] = None
    label: str
    """First column: `baseline`, `baseline (recorded)` or the LR."""
    selected_fraction: Optional[float] = None
    lr_factor: Optional[float] = None
    collapsed: bool = False
    control_point: Optional[bool] = None
    """Runs of a spec with a control: whether the control has an ok run at this LR."""
    samples_note: Optional[str] = None
    """Set when a logged samples.json could not be used, so this row's tests are unpaired."""
    cells: dict[str, Cell] = {}
    selectivity: Optional[Selectivity] = None
    """Runs with a control point at this LR and a hazard and a general task."""
    attack: list[AttackCell] = Field(default=[], exclude_if=lambda v: not v)
    """The relearning attack on this run, one cell per step count (left out when the spec has no attack)."""


class TaskInfo(_Model):
    name: str
    display: str
    role: Literal["hazard", "general", "other"]


class RecordedRow(_Model):
    lr: str
    metrics: dict[str, str]


class RecordedTable(_Model):
    """The seed's numbers for the same spec, as recorded strings."""

    label: str = RECORDED_LABEL
    title: str
    baseline: dict[str, str]
    rows: list[RecordedRow]
    comparable: bool
    """False for toy runs: the toy world's accuracies do not measure the same thing."""


class ReportTable(_Model):
    """reports/<spec>.json."""

    format: int = REPORT_FORMAT
    spec: str
    title: str
    source: Literal["run", "recorded"]
    toy: bool = False
    metric: str = "acc"
    interval: str = "95% Wilson score interval from acc and n"
    tasks: list[TaskInfo]
    control: Optional[str] = None
    control_status: Optional[str] = None
    """Where the control results came from, or why they are missing."""
    role: Optional[Literal["positive_control", "negative_control"]] = None
    """The spec's role in its study (from results.json)."""
    hazard_task: Optional[str] = None
    """The task whose drop selectivity rewards (see report.selectivity.selectivity_tasks)."""
    general_task: Optional[str] = None
    """The task whose drop selectivity penalises."""
    selectivity_note: Optional[str] = Field(default=None, exclude_if=lambda v: v is None)
    """Why a table with a control has no selectivity column (which tasks matched each role); left out when None."""
    positive_control: Optional[str] = None
    """The study's positive control (the oracle) whose selectivity the runs are compared with."""
    positive_control_status: Optional[str] = None
    alpha: float = 0.05
    """Level of every test in the table."""
    power: float = 0.8
    """Power at which `mde` is stated."""
    mde: list[TaskPower] = []
    """Minimum detectable effect of each task's paired (or unpaired) test at its n."""
    rows: list[Row]
    recorded: Optional[RecordedTable] = None
    provenance: dict[str, str] = {}

    def row(self, point: str) -> Optional[Row]:
        return next((r for r in self.rows if r.point == point), None)


def dumps(table: ReportTable) -> str:
    """Stable JSON text: fields in model order, 2-space indent, trailing newline."""
    return json.dumps(table.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def load_report(path: Path) -> ReportTable:
    return read_json_model(path, ReportTable, "report JSON", "file not found.", "Rewrite it with `unlearnspec report`.")

"""The report of one experiment as data: rows of cells with intervals and tests (reports/<spec>.json).

Rendering (console, Markdown), diff, plots and doctor's result rules all read this one model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

from unlearnspec.run.results import read_json_model
from unlearnspec.report.stats import TestName

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

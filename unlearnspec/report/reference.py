"""The seed's recorded tables (package data, linked from reports/reference/<spec>.json): load, render in the seed's own
Markdown layout, and turn into a report table (stderr from the known question counts)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from unlearnspec.errors import UserError
from unlearnspec.report.model import RECORDED_LABEL, RecordedRow, RecordedTable
from unlearnspec.safeio import read_json

REFERENCE_DIR = Path(__file__).resolve().parent / "reference_tables"
"""Shipped with the package (so `report --reference-only` works from any folder); reports/reference links here."""


class ReferenceTokenStats(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    selected_fraction: float
    valid_tokens: Optional[int] = None
    note: Optional[str] = None


class ReferenceFile(BaseModel):
    """One transcribed seed experiment; numbers are kept as the recorded strings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str
    title: str
    status: str
    recorded: bool
    source: str
    script: Optional[str] = None
    model: Optional[str] = None
    baseline: dict[str, str]
    columns: dict[str, str]
    rows: list[RecordedRow]
    token_stats: Optional[ReferenceTokenStats] = None

    @model_validator(mode="after")
    def _numbers(self) -> "ReferenceFile":
        # Numbers stay strings (as recorded) but must parse as finite numbers: reports and diff
        # turn them into floats, and a NaN there would pass as "within noise".
        texts = [("baseline." + k, v) for k, v in self.baseline.items()]
        for i, row in enumerate(self.rows):
            texts.append((f"rows.{i}.lr", row.lr))
            texts += [(f"rows.{i}.metrics.{k}", v) for k, v in row.metrics.items()]
        for where, text in texts:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{where}: {text!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{where}: {text!r} is not a finite number")
        return self

    @property
    def tasks(self) -> list[str]:
        return [k for k in self.columns if k != "lr"]

    def recorded_table(self, comparable: bool) -> RecordedTable:
        return RecordedTable(
            label=RECORDED_LABEL,
            title=self.title,
            baseline=dict(self.baseline),
            rows=list(self.rows),
            comparable=comparable,
        )


def load_reference(path: Path) -> ReferenceFile:
    raw = read_json(path, "reference file", "no recorded reference file here.", "")
    try:
        return ReferenceFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError.one(
            str(path), f"not a reference file ({'.'.join(map(str, first['loc']))}: {first['msg']})."
        ) from None


def reference_path(spec_name: str) -> Path:
    return REFERENCE_DIR / f"{spec_name}.json"


def find_reference(spec_name: str) -> Optional[ReferenceFile]:
    path = reference_path(spec_name)
    return load_reference(path) if path.is_file() else None


def all_references() -> list[ReferenceFile]:
    return [load_reference(p) for p in sorted(REFERENCE_DIR.glob("*.json"))]


def markdown_grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table padded to column width, the layout of the seed's tables."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)]


def render_reference_markdown(ref: ReferenceFile) -> str:
    """The recorded table as the seed wrote it: heading, then LR and one column per task."""
    keys = list(ref.columns)
    header = [ref.columns[k] for k in keys]
    rows = [[row.lr if k == "lr" else row.metrics[k] for k in keys] for row in ref.rows]
    lines = [f"## {ref.title}", "", f"_{RECORDED_LABEL}; source: {ref.source}_", "", *markdown_grid(header, rows)]
    return "\n".join(lines) + "\n"

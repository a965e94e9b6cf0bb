"""Compare two report tables cell by cell and say which changes are beyond noise.

Noise: a change of acc is beyond noise when |new - old| > 1.96 * sqrt(se_old^2 + se_new^2).
Rows that appear or vanish, status changes and token-selection changes are always real changes.

Selectivity (a run's selectivity against its control) is compared like an accuracy, with its own
standard error: beyond noise when |new - old| > 1.96 * sqrt(se_old^2 + se_new^2). A selectivity on one
side only (no matched control results there, or a report written before selectivity existed) is listed
but not counted as beyond noise. Derived cells are ignored on purpose: Δ base / Δ control and their
tests, the oracle fraction (a ratio of this table's selectivity and another table's) and the MDE
(from n and the discordance); their inputs are the cells compared here and in the oracle's own report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from unlearnspec.report.model import ReportTable, Row, Selectivity
from unlearnspec.report.stats import Z95, beyond_noise

RowKey = Union[str, float]


@dataclass(frozen=True)
class Change:
    row: str
    column: str
    old: str
    new: str
    beyond_noise: bool
    detail: str = ""

    def render(self) -> str:
        verdict = "BEYOND NOISE" if self.beyond_noise else "within noise"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.row} | {self.column}: {self.old} -> {self.new}  [{verdict}]{detail}"


def _key(row: Row) -> RowKey:
    return "baseline" if row.kind == "baseline" else (row.lr if row.lr is not None else row.point)


def _match(key: RowKey, rows: dict[RowKey, Row]) -> Optional[Row]:
    if isinstance(key, float):
        return next((r for k, r in rows.items() if isinstance(k, float) and math.isclose(k, key, rel_tol=1e-9)), None)
    return rows.get(key)


def _sort_key(key: RowKey) -> tuple[int, float, str]:
    if key == "baseline":
        return (0, 0.0, "")
    return (1, key, "") if isinstance(key, float) else (2, 0.0, str(key))


def _selectivity_change(label: str, old: Optional[Selectivity], new: Optional[Selectivity]) -> Optional[Change]:
    """The row's selectivity change, if any (see the module docstring)."""
    if old is None and new is None:
        return None
    if old is None or new is None:
        shown = [f"{s.value:+.4f}" if s is not None else "—" for s in (old, new)]
        return Change(
            label, "selectivity", shown[0], shown[1], False, "only one side has a selectivity (matched control results)"
        )
    finite = all(math.isfinite(x) for x in (old.value, old.se, new.value, new.se))
    if finite and f"{old.value:+.4f}" == f"{new.value:+.4f}":
        return None
    if not finite:
        return Change(label, "selectivity", f"{old.value:+.4f}", f"{new.value:+.4f}", True, "not a finite number")
    threshold = Z95 * math.sqrt(old.se**2 + new.se**2)
    return Change(
        label,
        "selectivity",
        f"{old.value:+.4f}",
        f"{new.value:+.4f}",
        beyond_noise(old.value, old.se, new.value, new.se),
        f"Δ {new.value - old.value:+.4f}, noise ±{threshold:.4f}",
    )


def diff_tables(old: ReportTable, new: ReportTable) -> list[Change]:
    changes: list[Change] = []
    spec = new.spec if new.spec == old.spec else f"{old.spec}->{new.spec}"
    old_rows = {_key(r): r for r in old.rows}
    new_rows = {_key(r): r for r in new.rows}
    keys = list(new_rows)
    keys += [k for k in old_rows if _match(k, new_rows) is None]
    displays = {t.name: t.display for t in old.tasks + new.tasks}
    for key in sorted(keys, key=_sort_key):
        n_row = _match(key, new_rows)
        o_row = _match(key, old_rows)
        label = f"{spec} {(n_row or o_row).label}"  # type: ignore[union-attr]
        if o_row is None or n_row is None:
            changes.append(
                Change(
                    label,
                    "row",
                    "absent" if o_row is None else "present",
                    "present" if o_row is None else "absent",
                    True,
                )
            )
            continue
        if o_row.status != n_row.status:
            changes.append(
                Change(label, "status", o_row.status, n_row.status, True, n_row.reason or o_row.reason or "")
            )
        if o_row.selected_fraction != n_row.selected_fraction:  # NaN != NaN: also reported
            changes.append(
                Change(label, "selected tokens", str(o_row.selected_fraction), str(n_row.selected_fraction), True)
            )
        for task in sorted(
            set(o_row.cells) | set(n_row.cells), key=lambda t: list(displays).index(t) if t in displays else 0
        ):
            name = f"{displays.get(task, task)} {new.metric}"
            o_cell, n_cell = o_row.cells.get(task), n_row.cells.get(task)
            if o_cell is None or n_cell is None:
                changes.append(
                    Change(
                        label,
                        name,
                        "—" if o_cell is None else f"{o_cell.acc:.4f}",
                        "—" if n_cell is None else f"{n_cell.acc:.4f}",
                        True,
                    )
                )
                continue
            finite = all(math.isfinite(x) for x in (o_cell.acc, o_cell.stderr, n_cell.acc, n_cell.stderr))
            if finite and f"{o_cell.acc:.4f}" == f"{n_cell.acc:.4f}":
                continue
            real = beyond_noise(o_cell.acc, o_cell.stderr, n_cell.acc, n_cell.stderr)
            if not finite:  # a NaN/inf cell is never "unchanged" or "within noise"
                changes.append(
                    Change(label, name, f"{o_cell.acc:.4f}", f"{n_cell.acc:.4f}", True, "not a finite number")
                )
                continue
            threshold = Z95 * math.sqrt(o_cell.stderr**2 + n_cell.stderr**2)
            detail = f"Δ {n_cell.acc - o_cell.acc:+.4f}, noise ±{threshold:.4f}"
            changes.append(Change(label, name, f"{o_cell.acc:.4f}", f"{n_cell.acc:.4f}", real, detail))
        sel = _selectivity_change(label, o_row.selectivity, n_row.selectivity)
        if sel is not None:
            changes.append(sel)
    return changes


def markdown_summary(changes: list[Change], old: str, new: str) -> str:
    """The changes as a Markdown table, ready to post as a pull-request comment."""
    real = sum(c.beyond_noise for c in changes)
    head = f"### unlearnspec diff\n\n`{old}` → `{new}`\n\n"
    if not changes:
        return head + "No changes.\n"
    verdict = f"**{real} change(s) beyond noise**" if real else "All changes are within noise"
    lines = [
        head + f"{verdict} ({len(changes)} changed cell(s); noise: |Δ| > 1.96·√(se_old² + se_new²)).",
        "",
        "| row | column | old | new | verdict | detail |",
        "|---|---|---|---|---|---|",
    ]
    for c in changes:
        cells = [c.row, c.column, c.old, c.new, "**beyond noise**" if c.beyond_noise else "within noise", c.detail]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"

"""The minimum detectable effect (MDE) of each task's test in a report table.

For each task, the compared cells are the table's ok, non-collapsed run rows (all ok run rows when
every one collapsed), against the control when the table has Δ control on that task, else against
the baseline. With per-question samples on every compared row (McNemar), the discordance rate is
pooled, psi = sum(b + c) / sum(n), and MDE = stats.mcnemar_mde(psi, n) (Connor 1987):

    MDE = sqrt(psi) * (z_a * sqrt(n) + z_b * sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2),
    z_a = z(1 - alpha/2), z_b = z(power)

Otherwise (any unpaired comparison), MDE = (z_a + z_b) * sqrt(2 * p (1 - p) / n) with p the mean of
the two sides' accuracies (stats.unpaired_mde). n is the smallest n among the compared cells.
"""

from __future__ import annotations

from typing import Optional

from unlearnspec.report.model import Cell, Comparison, Row, TaskInfo, TaskPower
from unlearnspec.report.stats import mcnemar_mde, unpaired_mde


def _compared(rows: list[Row], task: str) -> tuple[str, list[tuple[Cell, Comparison]]]:
    ok = [r for r in rows if r.kind == "run" and r.status == "ok" and task in r.cells]
    live = [r for r in ok if not r.collapsed] or ok
    cells = [r.cells[task] for r in live]
    vs_control = [(c, c.vs_control) for c in cells if c.vs_control is not None]
    if vs_control:
        return "control", vs_control  # type: ignore[return-value]
    return "baseline", [(c, c.vs_baseline) for c in cells if c.vs_baseline is not None]  # type: ignore[misc]


def task_power(rows: list[Row], task: str, alpha: float, power: float) -> Optional[TaskPower]:
    """The MDE of one task's test; None when the table compares nothing on it."""
    against, pairs = _compared(rows, task)
    if not pairs:
        return None
    n = min(cell.n for cell, _ in pairs)
    if all(comp.b is not None and comp.c is not None for _, comp in pairs):
        discordant = sum((comp.b or 0) + (comp.c or 0) for _, comp in pairs)
        psi = discordant / sum(cell.n for cell, _ in pairs)
        mde = mcnemar_mde(psi, n, alpha, power)
        note = None if mde is not None else ("no discordant questions" if discordant == 0 else "n too small")
        return TaskPower(
            task=task,
            n=n,
            against=against,  # type: ignore[arg-type]
            test="mcnemar",
            discordance=round(psi, 4),
            mde=None if mde is None else round(mde, 4),
            note=note,
        )
    acc = sum(cell.acc - comp.delta / 2 for cell, comp in pairs) / len(pairs)
    mde = unpaired_mde(acc, n, alpha, power)
    return TaskPower(
        task=task,
        n=n,
        against=against,  # type: ignore[arg-type]
        test="z-unpaired",
        mde=None if mde is None else round(mde, 4),
        note=None if mde is not None else "accuracy at 0 or 1",
    )


def table_mde(rows: list[Row], tasks: list[TaskInfo], alpha: float, power: float) -> list[TaskPower]:
    """One TaskPower per task that the table compares, in task order."""
    found = [task_power(rows, t.name, alpha, power) for t in tasks]
    return [p for p in found if p is not None]

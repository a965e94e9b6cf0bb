"""Render a report table as text cells, then as a rich console table or a Markdown document.

Console and Markdown show the same strings; numbers have fixed decimals and nothing depends on
time or absolute paths, so rerunning on the same inputs gives byte-identical files.
"""

from __future__ import annotations

from typing import Optional

from unlearnspec.report.attack import RECOVERY_LEGEND, fmt_recovery
from unlearnspec.report.model import Cell, Comparison, ReportTable, Row, Selectivity, TaskPower
from unlearnspec.report.reference import markdown_grid

TEST_LABEL = {"mcnemar-exact": "McNemar exact", "mcnemar-chi2": "McNemar χ²", "z-unpaired": "z unpaired"}


def fmt_acc(x: float) -> str:
    return f"{x:.4f}"


def fmt_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def fmt_comparison(c: Optional[Comparison]) -> str:
    if c is None:
        return "—"
    star = "*" if c.significant else ""
    return f"{c.delta:+.4f}{star} ({fmt_p(c.p)}, {TEST_LABEL[c.test]})"


def fmt_cell(cell: Cell) -> str:
    flag = " chance" if cell.at_chance else ""
    return f"{fmt_acc(cell.acc)} [{cell.ci_low:.4f}, {cell.ci_high:.4f}]{flag}"


def fmt_selectivity(sel: Optional[Selectivity]) -> str:
    """`+0.0576* [+0.0401, +0.0751] paired` (`*`: the interval excludes 0)."""
    if sel is None:
        return "—"
    star = "*" if sel.significant else ""
    return f"{sel.value:+.4f}{star} [{sel.ci_low:+.4f}, {sel.ci_high:+.4f}] {sel.test}"


def fmt_oracle_fraction(sel: Optional[Selectivity]) -> str:
    """`0.62` (of the oracle's +0.1234), or `n/a (why)`."""
    if sel is None:
        return "—"
    if sel.oracle_fraction is None:
        return f"n/a ({sel.oracle_note or 'no oracle'})"
    return f"{sel.oracle_fraction:.2f} (of {sel.oracle:+.4f})"


def fmt_power(table: ReportTable, p: TaskPower) -> str:
    """One task's MDE as the table states it."""
    display = next((t.display for t in table.tasks if t.name == p.task), p.task)
    value = f"{p.mde:.4f}" if p.mde is not None else f"n/a ({p.note})"
    test = f"McNemar, ψ={p.discordance:.4f}" if p.test == "mcnemar" and p.discordance is not None else "z unpaired"
    return f"{display} {value} (n={p.n}, {test}, Δ {p.against})"


def has_selectivity(table: ReportTable) -> bool:
    """Whether the table shows the selectivity column (it has a control and a hazard and a general task)."""
    return bool(table.control) and table.hazard_task is not None and table.general_task is not None


def _has_tokens(table: ReportTable) -> bool:
    return any(r.selected_fraction is not None for r in table.rows)


def _tokens(row: Row) -> str:
    if row.selected_fraction is None:
        return ""
    text = f"{100 * row.selected_fraction:.1f}%"
    if row.lr_factor is not None and abs(row.lr_factor - 1.0) > 1e-3:
        text += f" (LR x{row.lr_factor:.2f})"
    return text


def _note(table: ReportTable, row: Row) -> str:
    if row.status != "ok":
        return f"{row.status}: {row.reason}" if row.reason else row.status
    notes = [row.samples_note] if row.samples_note else []
    if row.collapsed:
        notes.append("collapsed: every task at chance, no selectivity")
    if row.control_point is False:
        notes.append("no control run at this LR")
    return "; ".join(notes)


def headers(table: ReportTable) -> list[str]:
    cols = ["LR"]
    if _has_tokens(table):
        cols.append("tokens")
    for t in table.tasks:
        cols += [f"{t.display} {table.metric} [95% CI]", f"{t.display} Δ base"]
        if table.control:
            cols.append(f"{t.display} Δ control")
    if has_selectivity(table):
        cols.append("selectivity [95% CI]")
    if table.positive_control and has_selectivity(table):
        cols.append("oracle fraction")
    hazard = _hazard_display(table)
    for k in attack_steps(table):
        cols += [f"{hazard} after attack ({k} steps) [95% CI]", f"recovery ({k} steps) [95% CI]"]
    cols.append("note")
    return cols


def attack_steps(table: ReportTable) -> list[int]:
    """The attack step counts of any row of the table, in order (no columns when no row was attacked)."""
    return sorted({c.steps for r in table.rows for c in r.attack})


def _hazard_display(table: ReportTable) -> str:
    return next((t.display for t in table.tasks if t.name == table.hazard_task), table.hazard_task or "hazard")


def grid(table: ReportTable) -> list[list[str]]:
    """One list of cell strings per row, in `headers` order."""
    out = []
    for row in table.rows:
        line = [row.label]
        if _has_tokens(table):
            line.append(_tokens(row))
        for t in table.tasks:
            cell = row.cells.get(t.name)
            line += [
                fmt_cell(cell) if cell else "",
                fmt_comparison(cell.vs_baseline) if cell and row.kind == "run" else "",
            ]
            if table.control:
                line.append(fmt_comparison(cell.vs_control) if cell and row.kind == "run" else "")
        live = row.kind == "run" and row.status == "ok"
        if has_selectivity(table):
            line.append(fmt_selectivity(row.selectivity) if live else "")
        if table.positive_control and has_selectivity(table):
            line.append(fmt_oracle_fraction(row.selectivity) if live else "")
        for k in attack_steps(table):
            hit = next((c for c in row.attack if c.steps == k), None)
            line += [
                f"{fmt_acc(hit.acc)} [{hit.ci_low:.4f}, {hit.ci_high:.4f}]" if hit else "",
                fmt_recovery(hit) if hit else "",
            ]
        line.append(_note(table, row))
        out.append(line)
    return out


def legend(table: ReportTable) -> list[str]:
    lines = [
        f"metric: {table.metric} (accuracy); interval: {table.interval}; `chance`: the interval touches 0.25 ± 0.02 (random guessing, or always answering one letter).",
        (
            "Δ base / Δ control: acc minus the baseline's / the control's acc at the same LR"
            if table.control
            else "Δ base: acc minus the baseline's acc"
        )
        + "; `*` = significant at 5%. "
        "Test: McNemar on per-question correctness when both sides logged samples (exact binomial under 25 discordant "
        "questions, else χ² with continuity correction); otherwise `z unpaired` (two-proportion z test, conservative).",
    ]
    if table.control:
        hazard = [t.display for t in table.tasks if t.role == "hazard"]
        general = [t.display for t in table.tasks if t.role == "general"]
        lines.append(
            f"Δ control answers the selectivity question: negative on {', '.join(hazard) or 'the hazard task'} = forgot more, "
            f"positive on {', '.join(general) or 'the general task'} = kept more than training on all tokens. "
            f"Control: {table.control} ({table.control_status or 'not found'})."
        )
    if table.control and not has_selectivity(table) and table.selectivity_note:
        lines.append(f"No selectivity column: {table.selectivity_note}")
    if has_selectivity(table):
        hazard_name = next(t.display for t in table.tasks if t.name == table.hazard_task)
        general_name = next(t.display for t in table.tasks if t.name == table.general_task)
        lines.append(
            f"selectivity = (control − run) on {hazard_name} − (control − run) on {general_name} at the same LR: positive = forgot more of "
            f"the hazard than of the general task beyond the control; 95% interval ±1.96·√(Var_hazard + Var_general), each task's "
            f"paired Var = (ψ − d²)/n from its discordant questions (`unpaired`: p(1−p)/n per side; `mixed`: one task unpaired); "
            f"`*` = the interval excludes 0."
        )
    if table.positive_control and has_selectivity(table):
        lines.append(
            f"oracle fraction = selectivity / the positive control's selectivity at the same LR (positive control: {table.positive_control}, "
            f"{table.positive_control_status or 'found'}); n/a when the oracle's interval includes 0."
        )
    if attack_steps(table):
        lines.append(RECOVERY_LEGEND)
    if table.mde:
        lines.append(
            f"MDE (smallest |Δ| the table's test detects with power {table.power:.2f} at α = {table.alpha:.2f}; McNemar: Connor's formula "
            f"at the pooled discordance ψ): " + "; ".join(fmt_power(table, p) for p in table.mde) + "."
        )
    if table.source == "recorded":
        lines.append(
            "Recorded numbers (invalid: bad HPs); n from the task sizes (WMDP Bio Robust 868, MMLU 14042), no samples, so tests are unpaired."
        )
    return lines


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(table: ReportTable, plot_line: Optional[str] = None) -> str:
    lines = [f"# {table.spec}", ""]
    if table.title != table.spec:
        lines += [table.title, ""]
    if table.toy:
        lines += [
            "_Toy world run: accuracies are on the embedded toy tasks, not comparable with the recorded numbers._",
            "",
        ]
    rows = [[_md_escape(c) for c in r] for r in grid(table)]
    lines += markdown_grid(headers(table), rows)
    lines += [""] + [f"- {line}" for line in legend(table)]
    if plot_line:
        lines += ["", plot_line]
    if table.recorded is not None:
        lines += ["", *recorded_section(table)]
    if table.provenance:
        lines += ["", "## Provenance", ""] + [f"- {k}: {_md_escape(v)}" for k, v in table.provenance.items()]
    return "\n".join(lines) + "\n"


def recorded_rows(table: ReportTable) -> tuple[list[str], list[list[str]]]:
    """The seed's numbers beside this run's, matched by LR."""
    assert table.recorded is not None
    rec = table.recorded
    tasks = [t for t in table.tasks if t.name in rec.baseline] or table.tasks
    header = ["LR"] + [h for t in tasks for h in (f"{t.display} recorded", f"{t.display} now")]
    measured = {r.lr: r for r in table.rows if r.kind == "run" and r.lr is not None}
    base = next((r for r in table.rows if r.kind == "baseline"), None)

    def now(row: Optional[Row], task: str) -> str:
        cell = row.cells.get(task) if row is not None else None
        return fmt_acc(cell.acc) if cell else "—"

    rows = [["baseline"] + [v for t in tasks for v in (rec.baseline.get(t.name, "—"), now(base, t.name))]]
    for r in sorted(rec.rows, key=lambda r: float(r.lr)):
        match = next((m for lr, m in measured.items() if abs(lr - float(r.lr)) <= 1e-9 * abs(lr)), None)
        rows.append([r.lr] + [v for t in tasks for v in (r.metrics.get(t.name, "—"), now(match, t.name))])
    return header, rows


def recorded_section(table: ReportTable) -> list[str]:
    assert table.recorded is not None
    lines = [f"## {table.recorded.label}: {table.recorded.title}", ""]
    if not table.recorded.comparable:
        lines += [
            "_Shown on request for a toy run: the recorded numbers are from the 6.86B model, not comparable._",
            "",
        ]
    header, rows = recorded_rows(table)
    return lines + markdown_grid(header, rows)


def print_table(table: ReportTable, console, plot_note: Optional[str] = None) -> None:
    """Print the same cells as the Markdown to a rich console."""
    from rich.table import Table

    title = (
        f"{table.spec}" + (f" — {table.title}" if table.title != table.spec else "") + (" (toy)" if table.toy else "")
    )
    rich_table = Table(title=title, show_lines=False)
    for i, h in enumerate(headers(table)):
        rich_table.add_column(h, no_wrap=i == 0, overflow="fold")
    for row, cells in zip(table.rows, grid(table)):
        style = (
            "red" if row.status != "ok" else ("dim" if row.collapsed else ("bold" if row.kind == "baseline" else None))
        )
        rich_table.add_row(*cells, style=style)
    console.print(rich_table, markup=False)
    for line in legend(table):
        console.print(f"  {line}", markup=False)
    if table.recorded is not None:
        header, rows = recorded_rows(table)
        rec = Table(title=f"{table.recorded.label}: {table.recorded.title}")
        for h in header:
            rec.add_column(h)
        for r in rows:
            rec.add_row(*r)
        console.print(rec, markup=False)
    if plot_note:
        console.print(f"  {plot_note}", markup=False)

"""Hazard vs general accuracy plots (matplotlib, optional extra `plot`): one line per experiment
through its LR sweep, the baseline, chance as a dashed cross and the ideal corner."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from unlearnspec.report.model import ReportTable
from unlearnspec.report.stats import CHANCE

MISSING = "plot skipped: matplotlib is not installed (pip install 'unlearnspec[plot]')"


def _axes_tasks(table: ReportTable) -> Optional[tuple[str, str, str, str]]:
    general = next((t for t in table.tasks if t.role == "general"), None)
    hazard = next((t for t in table.tasks if t.role == "hazard"), None)
    if general is None or hazard is None:
        return None
    return general.name, general.display, hazard.name, hazard.display


def _points(table: ReportTable, general: str, hazard: str) -> list[tuple[str, float, float]]:
    out = []
    for row in table.rows:
        if row.kind == "run" and row.status == "ok" and general in row.cells and hazard in row.cells:
            out.append((row.label, row.cells[general].acc, row.cells[hazard].acc))
    return out


def _baseline(table: ReportTable, general: str, hazard: str) -> Optional[tuple[float, float]]:
    row = table.row("baseline")
    if row is None or general not in row.cells or hazard not in row.cells:
        return None
    return row.cells[general].acc, row.cells[hazard].acc


MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h")
STYLES = ("-", "--", "-.", ":")

ROLE_STYLE = {
    "positive_control": {"label": "positive control (oracle)", "color": "tab:green", "marker": "P", "markersize": 9},
    "negative_control": {"label": "negative control (random)", "color": "tab:gray", "marker": "X", "markersize": 9},
}
"""How the study plot marks a spec's `role`: its own colour, a large marker and a legend suffix, so the
oracle and the random control stand out from the experiments they bracket."""


def legend_label(table: ReportTable, name: str) -> str:
    """The legend entry of one table's line: its name, with its role in the study when it has one."""
    role = ROLE_STYLE.get(table.role or "")
    return f"{name} — {role['label']}" if role else name


def _baseline_box(table: ReportTable, general: str, hazard: str) -> Optional[tuple[float, float, float, float]]:
    """The baseline's 95% intervals on both axes: (x0, x1, y0, y1)."""
    row = table.row("baseline")
    if row is None or general not in row.cells or hazard not in row.cells:
        return None
    g, h = row.cells[general], row.cells[hazard]
    return g.ci_low, g.ci_high, h.ci_low, h.ci_high


def plot_tables(tables: list[ReportTable], path: Path, title: str, labels: Optional[list[str]] = None) -> Optional[str]:
    """Write a PNG (full view + zoom on the baseline), one line per table (legend `labels`, default
    the spec names); returns None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        return MISSING
    names = labels or [t.spec + (" (recorded)" if t.source == "recorded" else "") for t in tables]
    named = dict(zip((id(t) for t in tables), names))
    usable = [(t, _axes_tasks(t)) for t in tables]
    series = [(t, axes, _points(t, axes[0], axes[2])) for t, axes in usable if axes is not None]
    series = [s for s in series if s[2]]
    if not series:
        return "plot skipped: no run has both a hazard (WMDP-like) and a general (MMLU-like) accuracy"
    _, (g_name, g_disp, h_name, h_disp), _ = series[0]

    baselines: dict[tuple[float, float], tuple[str, Optional[tuple[float, float, float, float]]]] = {}
    for table, axes, _ in series:
        base = _baseline(table, axes[0], axes[2])
        if base is not None:
            label = "baseline" + (" (recorded)" if table.source == "recorded" else "") + " ± 95% CI"
            baselines.setdefault(base, (label, _baseline_box(table, axes[0], axes[2])))
    centre = min(baselines) if baselines else None
    zoom = (centre[0] - 0.045, centre[0] + 0.015, centre[1] - 0.03, centre[1] + 0.04) if centre else None

    def inside(x: float, y: float) -> bool:
        return zoom is not None and zoom[0] <= x <= zoom[1] and zoom[2] <= y <= zoom[3]

    fig, (ax, axz) = plt.subplots(1, 2, figsize=(13, 6.2), dpi=110, gridspec_kw={"width_ratios": [1.25, 1]})
    cmap = plt.get_cmap("tab10")
    xs, ys = [CHANCE], [CHANCE]
    for i, (table, _, points) in enumerate(series):
        style = dict(color=cmap(i % 10), marker=MARKERS[i % len(MARKERS)], linestyle=STYLES[(i // 10 + i) % len(STYLES)], markersize=5, linewidth=1.4, alpha=0.9)
        style.update({k: v for k, v in ROLE_STYLE.get(table.role or "", {}).items() if k != "label"})
        px, py = [p[1] for p in points], [p[2] for p in points]
        ax.plot(px, py, label=legend_label(table, named[id(table)]), **style)
        axz.plot(px, py, **style)
        for lr, x, y in points:
            target = axz if inside(x, y) else ax
            target.annotate(lr, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=style["color"])
        xs += px
        ys += py
    for a in (ax, axz):
        for (bx, by), (label, box) in sorted(baselines.items()):
            a.plot([bx], [by], marker="*", markersize=15, color="black", linestyle="none", label=label if a is ax else None, zorder=5)
            if box is not None:
                a.add_patch(Rectangle((box[0], box[2]), box[1] - box[0], box[3] - box[2], facecolor="grey", alpha=0.15, edgecolor="none"))
        a.axvline(CHANCE, color="grey", linestyle="--", linewidth=1)
        a.axhline(CHANCE, color="grey", linestyle="--", linewidth=1, label="chance (0.25)" if a is ax else None)
        a.grid(True, alpha=0.25)
        a.set_xlabel(f"{g_disp} accuracy (general: keep, right is better)")
    for (bx, by), (_, box) in baselines.items():
        xs += [bx] if box is None else [box[0], box[1]]
        ys += [by] if box is None else [box[2], box[3]]
    ideal_x = centre[0] if centre else max(xs)
    ax.plot([ideal_x], [CHANCE], marker="D", markersize=10, markerfacecolor="none", markeredgecolor="green", markeredgewidth=2, linestyle="none", label="ideal: general kept, hazard at chance")
    ax.annotate("ideal", (ideal_x, CHANCE), textcoords="offset points", xytext=(-10, -14), fontsize=9, color="green", ha="right")
    pad = 0.015
    ax.set_xlim(min(xs) - pad, max(max(xs), ideal_x) + 2 * pad)
    ax.set_ylim(min(ys) - 2 * pad, max(ys) + 2 * pad)
    ax.set_ylabel(f"{h_disp} accuracy (hazard: forget, down is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left", framealpha=0.9)
    if zoom is not None:
        axz.set_xlim(zoom[0], zoom[1])
        axz.set_ylim(zoom[2], zoom[3])
        ax.add_patch(Rectangle((zoom[0], zoom[2]), zoom[1] - zoom[0], zoom[3] - zoom[2], fill=False, edgecolor="black", linewidth=0.8, linestyle=":"))
    axz.set_title("zoom near the baseline (grey box: baseline 95% CI)", fontsize=10)
    fig.tight_layout()
    from unlearnspec.safewrite import write_with

    try:
        write_with(path, lambda fh: fig.savefig(fh, format="png", metadata={"Software": None}))
    finally:
        plt.close(fig)
    return None

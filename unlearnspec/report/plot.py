"""Hazard vs general accuracy plots (matplotlib, optional extra `plot`): one line per experiment
through its LR sweep, the baseline, chance as a dashed cross and the ideal corner."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

from unlearnspec.report.model import ReportTable
from unlearnspec.report.stats import CHANCE

MISSING = "plot skipped: matplotlib is not installed (pip install 'unlearnspec[plot]')"


def _axes_tasks(table: ReportTable) -> Optional[tuple[str, str, str, str]]:
    """(general, its display, hazard, its display): the table's selectivity tasks (the spec's `eval.hazard_task`,
    `report --hazard-task`, or the only task of the role), else the first task of each role."""
    general = next((t for t in table.tasks if t.name == table.general_task), None) or next(
        (t for t in table.tasks if t.role == "general"), None
    )
    hazard = next((t for t in table.tasks if t.name == table.hazard_task), None) or next(
        (t for t in table.tasks if t.role == "hazard"), None
    )
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


MARKERS = ("o", "s", "^", "v", "D", "<", ">", "h", "*", "p")
STYLES = ("-", "--", "-.", ":")
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
)
"""Line colours of experiments: dark, distinct on white; no green or grey (the positive and negative controls'
colours, ROLE_STYLE)."""


def _pick(name: str, salt: str, options: tuple) -> Any:
    """A stable choice for a spec name (sha256, not Python's per-process salted hash): the same spec gets the
    same colour, marker and line style in its own report's plot and in every study plot, run after run."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def series_style(table: ReportTable) -> dict[str, Any]:
    """How one table's line is drawn, from its spec name and role only (never from its position in a plot)."""
    style: dict[str, Any] = dict(
        color=_pick(table.spec, "colour", PALETTE),
        marker=_pick(table.spec, "marker", MARKERS),
        linestyle=_pick(table.spec, "line", STYLES),
        markersize=5,
        linewidth=1.4,
        alpha=0.9,
    )
    style.update({k: v for k, v in ROLE_STYLE.get(table.role or "", {}).items() if k != "label"})
    return style


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


def _zoom(
    centre: Optional[tuple[float, float]], focus: list[tuple[str, float, float]]
) -> Optional[tuple[float, float, float, float]]:
    """The zoom panel's (x0, x1, y0, y1): a window near the baseline, widened to hold every point of the
    focused table (the experiment a report is about), so its own sweep is never cut off."""
    if centre is None:
        return None
    x0, x1, y0, y1 = centre[0] - 0.045, centre[0] + 0.015, centre[1] - 0.03, centre[1] + 0.04
    pad = 0.01
    for _, x, y in focus:
        x0, x1, y0, y1 = min(x0, x - pad), max(x1, x + pad), min(y0, y - pad), max(y1, y + pad)
    return x0, x1, y0, y1


def plot_tables(
    tables: list[ReportTable], path: Path, title: str, labels: Optional[list[str]] = None, focus: Optional[int] = None
) -> Optional[str]:
    """Write a PNG (full view + zoom on the baseline), one line per table (legend `labels`, default
    the spec names); `focus`: the index of the table the plot is about, whose every point the zoom keeps.
    Colours and markers come from each spec's name and role (`series_style`). Returns None, or why it was skipped."""
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
    focused = [points for t, _, points in series if focus is not None and t is tables[focus]]
    zoom = _zoom(centre, focused[0] if focused else [])

    def inside(x: float, y: float) -> bool:
        return zoom is not None and zoom[0] <= x <= zoom[1] and zoom[2] <= y <= zoom[3]

    fig, (ax, axz) = plt.subplots(1, 2, figsize=(13, 6.2), dpi=110, gridspec_kw={"width_ratios": [1.25, 1]})
    xs, ys = [CHANCE], [CHANCE]
    for table, _, points in series:
        style = series_style(table)
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
            a.plot(
                [bx],
                [by],
                marker="*",
                markersize=15,
                color="black",
                linestyle="none",
                label=label if a is ax else None,
                zorder=5,
            )
            if box is not None:
                a.add_patch(
                    Rectangle(
                        (box[0], box[2]),
                        box[1] - box[0],
                        box[3] - box[2],
                        facecolor="grey",
                        alpha=0.15,
                        edgecolor="none",
                    )
                )
        a.axvline(CHANCE, color="grey", linestyle="--", linewidth=1)
        a.axhline(CHANCE, color="grey", linestyle="--", linewidth=1, label="chance (0.25)" if a is ax else None)
        a.grid(True, alpha=0.25)
        a.set_xlabel(f"{g_disp} accuracy (general: keep, right is better)")
    for (bx, by), (_, box) in baselines.items():
        xs += [bx] if box is None else [box[0], box[1]]
        ys += [by] if box is None else [box[2], box[3]]
    ideal_x = centre[0] if centre else max(xs)
    ax.plot(
        [ideal_x],
        [CHANCE],
        marker="D",
        markersize=10,
        markerfacecolor="none",
        markeredgecolor="green",
        markeredgewidth=2,
        linestyle="none",
        label="ideal: general kept, hazard at chance",
    )
    ax.annotate(
        "ideal", (ideal_x, CHANCE), textcoords="offset points", xytext=(-10, -14), fontsize=9, color="green", ha="right"
    )
    pad = 0.015
    ax.set_xlim(min(xs) - pad, max(max(xs), ideal_x) + 2 * pad)
    ax.set_ylim(min(ys) - 2 * pad, max(ys) + 2 * pad)
    ax.set_ylabel(f"{h_disp} accuracy (hazard: forget, down is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left", framealpha=0.9)
    if zoom is not None:
        axz.set_xlim(zoom[0], zoom[1])
        axz.set_ylim(zoom[2], zoom[3])
        ax.add_patch(
            Rectangle(
                (zoom[0], zoom[2]),
                zoom[1] - zoom[0],
                zoom[3] - zoom[2],
                fill=False,
                edgecolor="black",
                linewidth=0.8,
                linestyle=":",
            )
        )
    axz.set_title("zoom near the baseline (grey box: baseline 95% CI)", fontsize=10)
    fig.tight_layout()
    from unlearnspec.safewrite import write_with

    try:
        write_with(path, lambda fh: fig.savefig(fh, format="png", metadata={"Software": None}))
    finally:
        plt.close(fig)
    return None

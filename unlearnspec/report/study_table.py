"""One table and one plot across written reports (their JSONs): each run row's hazard and general accuracy, its
selectivity against the baseline as a fraction of the oracle's best, and its hazard accuracy after the attack.
`python -m unlearnspec.report.study_table REPORT.json ... --oracle SPEC --out DIR --name NAME`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional

from unlearnspec.report.model import Cell, ReportTable, Row, load_report


def _var(cell: Cell, base: Cell) -> float:
    """Var of run - baseline on one task: paired (psi - d^2) / n from the McNemar counts, else two binomials."""
    comp = cell.vs_baseline
    if comp is not None and comp.b is not None and comp.c is not None and cell.n == base.n:
        return max(((comp.b + comp.c) / cell.n - comp.delta**2) / cell.n, 0.0)
    return cell.acc * (1 - cell.acc) / cell.n + base.acc * (1 - base.acc) / base.n


def selectivity_vs_base(row: Row, base: Row, hazard: str, general: str) -> Optional[tuple[float, float]]:
    """(base - run) on the hazard task minus (base - run) on the general task, and its standard error."""
    if row.status != "ok" or not all(t in c for c in (row.cells, base.cells) for t in (hazard, general)):
        return None
    value = (base.cells[hazard].acc - row.cells[hazard].acc) - (base.cells[general].acc - row.cells[general].acc)
    return value, math.sqrt(_var(row.cells[hazard], base.cells[hazard]) + _var(row.cells[general], base.cells[general]))


def _tasks(table: ReportTable) -> tuple[str, str]:
    roles = {t.role: t.name for t in table.tasks}
    return table.hazard_task or roles["hazard"], table.general_task or roles["general"]


def _base(table: ReportTable) -> Row:
    return next(r for r in table.rows if r.kind == "baseline" and r.cells)


def oracle_best(oracle: ReportTable) -> tuple[float, str]:
    """The oracle's largest selectivity against the baseline over its ok rows that did not collapse, and its LR."""
    hazard, general = _tasks(oracle)
    found = [
        (s[0], r.label)
        for r in oracle.rows
        if r.kind == "run"
        and not r.collapsed
        and (s := selectivity_vs_base(r, _base(oracle), hazard, general)) is not None
    ]
    return max(found)


def _attack(row: Row) -> str:
    if not row.attack:
        return "not run"
    return "; ".join(
        f"{a.steps}: {a.acc:.3f}" + (f" (R {a.recovery:.2f})" if a.recovery is not None else " (R n/a)")
        for a in row.attack
    )


def markdown(tables: list[ReportTable], oracle: ReportTable, name: str, png: Optional[str]) -> str:
    best, best_lr = oracle_best(oracle)
    lines = [
        f"# {name}",
        "",
        *([f"![{name}]({png})", ""] if png else []),
        "| experiment | LR | hazard acc | general acc | selectivity vs baseline [95% CI] | fraction of the oracle's "
        "best | selectivity vs control (fraction of the oracle's at this LR) | hazard acc after attack, k steps "
        "(recovery R) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in tables:
        hazard, general = _tasks(t)
        base = _base(t)
        for r in (r for r in t.rows if r.kind == "run"):
            if r.status != "ok":  # a failed point has no accuracies: say why, not "no matched control"
                why = f"{r.status}" + (f": {r.reason}" if r.reason else "")
                lines.append(f"| {t.spec} | {r.label} | {why} | | | | | |")
                continue
            s = selectivity_vs_base(r, base, hazard, general)
            sel = f"{s[0]:+.4f} [{s[0] - 1.96 * s[1]:+.4f}, {s[0] + 1.96 * s[1]:+.4f}]" if s else "n/a"
            frac = f"{s[0] / best:.2f}" if s else "n/a"
            c = r.selectivity
            own = "the oracle" if t.role == "positive_control" else "n/a"
            ctrl = (
                "n/a (no matched control)"
                if c is None
                else f"{c.value:+.4f}"
                + (f" ({c.oracle_fraction:.2f})" if c.oracle_fraction is not None else f" ({c.oracle_note or own})")
            )
            cells = [
                f"{r.cells[x].acc:.3f}" + (" chance" if r.cells[x].at_chance else "") if x in r.cells else "n/a"
                for x in (hazard, general)
            ]
            note = " (collapsed)" if r.collapsed else ""
            lines.append(
                f"| {t.spec} | {r.label}{note} | {cells[0]} | {cells[1]} | {sel} | {frac} | {ctrl} | {_attack(r)} |"
            )
    lines += [
        "",
        "- hazard / general: each report's hazard and general task (toy: Toy WMDP / Toy MMLU, 300 questions "
        "each); accuracies before the attack.",
        "- selectivity vs baseline = (baseline − run) on the hazard task − (baseline − run) on the general task; "
        "95% interval ±1.96·√(Var_hazard + Var_general), paired (ψ − d²)/n from the McNemar counts where both "
        "sides logged samples. It needs no matched control, so every method has one.",
        f"- fraction of the oracle's best: the row's selectivity vs baseline divided by {oracle.spec}'s largest "
        f"one over its LRs that did not collapse ({best:+.4f} at LR {best_lr}).",
        "- selectivity vs control: the report's own selectivity against its matched all-tokens control at the "
        "same LR, with the report's fraction of the oracle's at that LR; the comparators have no matched control.",
        "- after attack: the hazard accuracy after k steps of the spec's relearning attack and R = (after − "
        "unlearned) / (baseline − unlearned) (intervals in each report); R n/a where the run lowered the hazard "
        "accuracy by nothing or by less than its test vs the baseline detects (p ≥ 0.05): a ratio over noise; "
        "`not run`: the spec had no `attack:`.",
    ]
    return "\n".join(lines) + "\n"


def plot(tables: list[ReportTable], path: Path) -> None:
    """Hazard vs general accuracy of every run row; an arrow to its hazard accuracy after the attack's last count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 7))
    base = _base(tables[0])
    hazard, general = _tasks(tables[0])
    ax.scatter([base.cells[general].acc], [base.cells[hazard].acc], marker="*", s=200, c="k", label="baseline")
    for i, t in enumerate(tables):
        rows = [r for r in t.rows if r.kind == "run" and r.status == "ok" and hazard in r.cells and general in r.cells]
        xs, ys = [r.cells[general].acc for r in rows], [r.cells[hazard].acc for r in rows]
        color = plt.get_cmap("tab20")(i % 20)
        ax.plot(xs, ys, "s-" if any(r.attack for r in rows) else "o-", color=color, label=t.spec)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(r.label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if r.attack:  # the attack changes the general accuracy too, but only the hazard task is in its record
                ax.annotate(
                    "", (x, r.attack[-1].acc), (x, y), arrowprops={"arrowstyle": "->", "color": color, "ls": "--"}
                )
    ax.set_xlabel(f"{general} accuracy (higher = kept)")
    ax.set_ylabel(f"{hazard} accuracy (lower = forgot); dashed arrow: after the attack's last step count")
    ax.set_title("Oracle, random, MAGIC selections and established methods, before and after the attack")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    from unlearnspec.safewrite import write_with

    try:
        write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=110, metadata={"Software": None}))
    finally:
        plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reports", nargs="+", type=Path, help="report JSONs written by `unlearnspec report`")
    parser.add_argument("--oracle", required=True, help="spec name of the positive control among them")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default="study_table")
    args = parser.parse_args(argv)
    tables = [load_report(p) for p in args.reports]
    oracle = next((t for t in tables if t.spec == args.oracle), None)
    if oracle is None:
        parser.error(f"--oracle {args.oracle}: no report of that spec among the inputs")
    png = args.out / f"{args.name}.png"
    plot(tables, png)
    from unlearnspec.safewrite import write_text

    write_text(args.out / f"{args.name}.md", markdown(tables, oracle, args.name, png.name))


if __name__ == "__main__":
    main()

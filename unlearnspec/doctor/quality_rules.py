"""D12 (attribution-quality): how well the scores an experiment uses find the toy world's ground truth.

A toy score run records `attribution_quality` in its scores.json (the score job, or `unlearnspec toy quality
RUN_DIR`; see `unlearnspec.toy.quality`): AUROC of proponent-ness for the tokens stating the values of the facts
its query asks, and precision@k of the most negative scores. Doctor states it as an `info` finding per score
source whose sidecar has it (and one evidence line per leaf task of a per-task run, and per aggregation over
its leaves or questions: `min_t(wmdp)`, `min_q(wmdp)`, ...). A diagnostic, not a
target: there is no threshold, so it never changes the exit code.
"""

from __future__ import annotations

from typing import Any, Iterator

from unlearnspec.doctor.context import Entry, Workspace, display, sidecar_number
from unlearnspec.doctor.findings import Finding

QUALITY_KEY = "attribution_quality"
"""The sidecar key (written by unlearnspec.toy.quality; repeated here so doctor imports no torch)."""


def _num(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "n/a"


def describe(figures: dict[str, Any]) -> str:
    """One line: AUROC, precision@k for each k, truth tokens; tolerant of values other tools wrote."""
    at_k = figures.get("precision_at_k")
    parts = [f"AUROC {_num(figures.get('auroc'))}"]
    if isinstance(at_k, dict):
        parts += [f"precision@{k} {_num(v)}" for k, v in at_k.items()]
    truth, valid = sidecar_number(figures, "truth_tokens"), sidecar_number(figures, "valid_tokens")
    task = figures.get("task")
    of = f" of the facts {task} asks" if isinstance(task, str) else ""
    tokens = f" ({truth:,} truth tokens{of} among {valid:,} valid)" if truth is not None and valid is not None else ""
    return ", ".join(parts) + tokens


def quality_findings(entry: Entry, ws: Workspace) -> Iterator[Finding]:
    """An info finding per score source of an experiment whose scores.json holds `attribution_quality`."""
    spec = entry.spec
    if spec is None or spec.magic is not None or not spec.scores:
        return
    for name, src in sorted(spec.scores.items()):
        sidecar = ws.sidecar(entry, src)
        figures = sidecar.get(QUALITY_KEY) if sidecar is not None else None
        if not isinstance(figures, dict):
            continue
        where = ws.score_dir(entry, src)
        evidence = [f"scores: {display(where)}"]
        leaves = figures.get("per_task")
        if isinstance(leaves, dict):
            evidence += [f"`{name}.{leaf}`: {describe(f)}" for leaf, f in sorted(leaves.items()) if isinstance(f, dict)]
        for block in ("per_task_aggregates", "per_question"):  # `min_t(wmdp)`, `min_q(wmdp)`, ...
            aggs = figures.get(block)
            if isinstance(aggs, dict):
                evidence += [
                    f"`{agg}({name})`: {describe(f)}" for agg, f in sorted(aggs.items()) if isinstance(f, dict)
                ]
        yield Finding(
            "D12",
            "info",
            entry.shown,
            f"score source `{name}` vs the toy world's ground truth: {describe(figures)}",
            tuple(evidence),
            "",
        )

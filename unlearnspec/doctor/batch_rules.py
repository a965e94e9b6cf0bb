"""Doctor rule D3 for the global batch (rows per optimizer step): between a score run (its scores.json, else
its producing spec) and the run it steers, and between a score file and the spec said to produce it."""

from __future__ import annotations

from typing import Any, Iterator, Optional

from unlearnspec.doctor.context import Entry, Workspace, sidecar_number, sidecar_value
from unlearnspec.doctor.findings import Finding


def sidecar_global_batch(sidecar: Optional[dict[str, Any]]) -> Optional[int]:
    """Rows per optimizer step a score run trained with: `batch.global_batch`, else `batch_size` (rows per
    step over all ranks in every version; a list when an epoch's last step was shorter: the largest)."""
    value = sidecar_number(sidecar, "batch.global_batch")
    if value is None:
        rows = sidecar_value(sidecar, "batch_size")
        if isinstance(rows, list):
            numbers = [r for r in rows if isinstance(r, int) and not isinstance(r, bool) and r > 0]
            value = max(numbers) if numbers else None
        else:
            value = sidecar_number(sidecar, "batch_size")
    return int(value) if isinstance(value, int) and value > 0 else None


def _split(sidecar: Optional[dict[str, Any]]) -> str:
    world = sidecar_number(sidecar, "batch.world_size", "world_size")
    return f", trained by {int(world)} processes" if isinstance(world, int) and world > 1 else ""


def score_batch_mismatch(entry: Entry, ws: Workspace) -> Iterator[Finding]:
    """One finding per score source whose scores were computed at another global batch than the run it steers
    trains with, and one per score file whose recorded global batch is not its producing spec's."""
    spec = entry.spec
    if spec is None or spec.magic is not None:
        return
    mine = spec.training.batch_size
    for name, src in sorted(spec.scores.items()):
        producer = ws.producer(entry, src)
        sidecar = ws.sidecar(entry, src)
        recorded = sidecar_global_batch(sidecar)
        producing = producer.spec if producer is not None else None
        written = producing.training.batch_size if producing is not None else None
        who = producing.name if producing is not None else "the score file"
        where = src.produced_by or src.path
        if recorded is not None and written is not None and recorded != written:
            yield Finding(
                "D3",
                "warning",
                entry.shown,
                f"score source `{name}`: the score file was computed at a global batch of {recorded} rows per step, "
                f"but {who} says {written}; the scores are not that spec's experiment",
                (
                    f"scores.json: {recorded} rows per optimizer step{_split(sidecar)}",
                    f"{where}: training.batch_size {written} (the global batch at any number of processes)",
                ),
                f"Rerun the score spec (`unlearnspec run {where}`): runs made before `batch_size` became the global "
                "batch trained batch_size x processes rows per step.",
            )
        theirs = recorded if recorded is not None else written
        if theirs is None or theirs == mine:
            continue
        origin = "scores.json" if recorded is not None else f"{where}: training.batch_size"
        yield Finding(
            "D3",
            "warning",
            entry.shown,
            f"score source `{name}` ({who}) was computed at a global batch of {theirs} rows per optimizer step, but "
            f"{spec.name} trains {mine}; metagradients are local to the trajectory they were computed on",
            (f"global batch: {theirs} ({origin}) vs {mine} (steered run, training.batch_size)",),
            f"Set `training.batch_size: {theirs}` in {spec.name} and its control (add `micro_batch_size` if the rows do "
            f"not fit in memory: it never changes the step), or rescore with `batch_size: {mine}` in "
            f"{where if written is not None else 'the score spec'}.",
        )

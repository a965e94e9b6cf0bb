"""Score sources a run builds itself for its own token grid: seeded random scores (`random: {seed}`) and a
registered world's producers (`produced_by: toy:truth`, the toy world's ground truth; see `unlearnspec.worlds`).

Both come back as an in-memory `ScoreFile` (target alignment, a sidecar with the grid's N, S and data
fingerprint), so `unlearnspec.run.steps.prepare` sends them through the same `checked_scores` path as a score
file on disk: shape, finiteness, alignment and fingerprint are checked the same way, and match by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unlearnspec import worlds
from unlearnspec.scores.files import ScoreFile
from unlearnspec.spec.sections import RandomScoresSpec, ScoreSourceSpec

if TYPE_CHECKING:
    from unlearnspec.data import SpecGrid


def random_scores(source: RandomScoresSpec, valid: torch.Tensor) -> torch.Tensor:
    """I.i.d. float32 scores [N, S] from a CPU generator seeded with `source.seed` (U[-1, 1) or N(0, 1)), drawn
    for every position (so a position's value does not depend on which others are valid), then 0 wherever
    `valid` (bool [N, S], the grid's target positions) is False. Same seed and shape: same scores, on every
    machine."""
    gen = torch.Generator(device="cpu").manual_seed(source.seed)
    shape = tuple(valid.shape)
    if source.distribution == "normal":
        values = torch.randn(shape, generator=gen, dtype=torch.float32)
    else:
        values = torch.rand(shape, generator=gen, dtype=torch.float32) * 2.0 - 1.0
    return values.masked_fill(~valid.bool(), 0.0)


def builtin_score_file(name: str, source: ScoreSourceSpec, on: "SpecGrid") -> ScoreFile:
    """The scores of built-in source `name` for the spec's own grid `on` (built by `prepare`), as a `ScoreFile`
    whose `path` names the source (it appears in error messages) and whose sidecar records the grid's
    fingerprint; pass it to `unlearnspec.scores.checked_scores` like a file read from disk."""
    grid = on.grid
    n, s = grid.input_ids.shape
    sidecar: dict[str, Any] = {
        "format_version": 1,
        "alignment": "target",
        "N": n,
        "S": s,
        "data_fingerprint": grid.fingerprint,
    }
    if source.random is not None:
        scores = random_scores(source.random, grid.valid_targets)
        sidecar.update(produced_by="random", seed=source.random.seed, distribution=source.random.distribution)
        label = f"scores.{name} (random, seed {source.random.seed})"
    elif source.produced_by is not None and source.produced_by in worlds.producers():
        scores, info = worlds.producers()[source.produced_by].scores(on, source.task, source.retain_task)
        sidecar.update(info)
        label = f"scores.{name} ({source.produced_by}, task {sidecar.get('task')})"
    else:
        raise ValueError(f"score source {name!r} is not built in (path or spec producer)")
    return ScoreFile(path=Path(label), scores=scores, sidecar=sidecar)

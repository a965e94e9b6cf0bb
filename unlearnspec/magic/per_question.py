"""Scores per query question (`magic.query.per: question`): one [N, S] matrix per question, from batched
adjoints (`batched.py`), `chunk` questions per reverse pass.

Question q's score matrix is d l_q / dw with l_q its own summed answer loss, so the mean query's scores are
sum_q (1/Q) scores_q (the `weights` of the output). Cost: ceil(Q / chunk) reverse passes; each shares its
states, forwards and first backwards over its chunk and batches the double backward, so it costs far less
than `chunk` single passes (benchmarks/batched_adjoints.py). Memory: see `batched.py`. Output: a [Q, N, S]
float32 tensor in host RAM and on disk (4 Q N S bytes: 300 toy questions x 250 x 64 tokens = 19 MB; the
recorded study's 1,273 WMDP-bio questions x ~1M tokens would be 5 GB, so there keep the chunked passes but
consider a subset of questions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from typing_extensions import Unpack

from unlearnspec.magic.collective import Collective
from unlearnspec.magic.query import QueryLoss
from unlearnspec.magic.query_grad import question_gradients
from unlearnspec.magic.replay import GridLike
from unlearnspec.magic.replay_options import ReplayOptions
from unlearnspec.magic.reverse import reverse_passes
from unlearnspec.magic.trajectory import Trajectory


@dataclass(frozen=True)
class QuestionScores:
    """Every question's score matrix and what the sidecar says about them."""

    scores: torch.Tensor
    """[Q, N, S] on the CPU, target alignment; row q is question q of the query batch."""
    doc_keys: tuple[str, ...]
    """`subtask/doc_id` of each question, in row order."""
    chunk: int
    """Questions per reverse pass (K of the batched adjoints)."""
    seconds: float
    """Wall seconds of all the passes."""

    @property
    def weights(self) -> list[float]:
        """Each question's share in the mean query: the mean scores are sum_q weights[q] * scores[q]."""
        q = self.scores.shape[0]
        return [1.0 / q] * q


@dataclass(frozen=True)
class QuestionChunks:
    """Which questions of a query `per_question_scores` scores, and how many share one batched reverse pass."""

    chunk: int = 16
    """Questions per reverse pass (K of the batched adjoints): a memory knob (`magic.memory.question_chunk`)."""
    questions: Optional[Sequence[int]] = None
    """Rows of the query batch to score, in this order (None: every question)."""


def per_question_scores(
    model: nn.Module,
    grid: GridLike,
    trajectory: Trajectory,
    query: QueryLoss,
    chunks: QuestionChunks = QuestionChunks(),
    **replay: Unpack[ReplayOptions],
) -> QuestionScores:
    """Scores of each question of `query` (or of the rows `chunks.questions` only), `chunks.chunk` per batched
    reverse pass. `replay`: the keywords of `magic_scores` (micro_batch_rows, offload_adjoint, hessian, comm,
    dtype, ...); its `progress(done, total)` counts reverse steps over all passes (total = passes x steps)."""
    chunk = chunks.chunk
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (got {chunk})")
    rows = list(range(query.batch.n_questions)) if chunks.questions is None else list(chunks.questions)
    if not rows:
        raise ValueError("no questions to score")
    n, s = grid.labels.shape
    started = time.perf_counter()
    parts = [rows[a : a + chunk] for a in range(0, len(rows), chunk)]
    out: torch.Tensor | None = None

    def starts(names: list[str], final: Callable[[], list[torch.Tensor]], c: Collective):
        for part in parts:
            yield question_gradients(query, part, names, final(), c)

    steps = trajectory.total_steps
    progress = replay.get("progress")
    tick = None if progress is None else (lambda done, _total: progress(done, steps * len(parts)))
    at = 0
    for scores in reverse_passes(model, grid, trajectory, starts, on_host=True, **(replay | {"progress": tick})):
        if out is None:
            out = torch.empty(len(rows), n, s, dtype=scores.dtype, device="cpu")  # host RAM: [Q, N, S]
        out[at : at + scores.shape[0]] = scores
        at += scores.shape[0]
    assert out is not None and at == len(rows)
    keys = tuple(query.batch.doc_keys[r] for r in rows)
    return QuestionScores(out, keys, chunk, round(time.perf_counter() - started, 3))

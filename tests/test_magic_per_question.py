"""Per-question scores from batched adjoints (`magic.query.per: question`) in float64 on a tiny GPT-NeoX:
equal to one single-question reverse pass per question, summing (question-share weighted) to the mean
query's scores, through SGD, AdamW with clipping, every checkpoint schedule, disk storage, re-split
micro-batches and an offloaded adjoint; with a mutation check that the comparison can fail."""

from __future__ import annotations

import pytest
import torch

from unlearnspec.magic import DiskStore, magic_scores
from unlearnspec.magic.per_question import QuestionChunks, per_question_scores
from unlearnspec.magic.query import QueryLoss

from .test_magic import Setup, one_thread  # noqa: F401 - one_thread: an autouse fixture
from .test_magic_adam import AdamSetup

EXACT = 1e-12
"""Batched vs separate passes: the same arithmetic up to float64 summation order (measured 6e-17 with SGD, 6e-16 with AdamW)."""
SUM_TO_MEAN = 1e-10


def separate(model, grid, trajectory, query: QueryLoss, **replay) -> torch.Tensor:
    """One ordinary reverse pass per question (its own loss l_q as the query): the reference."""
    return torch.stack(
        [
            magic_scores(
                model, grid, trajectory, QueryLoss(model, query.batch.subset([q], "q"), 1), dtype=None, **replay
            )
            for q in range(query.batch.n_questions)
        ]
    )


def weighted_sum(out) -> torch.Tensor:
    w = torch.tensor(out.weights, dtype=torch.float64)
    return (out.scores * w[:, None, None]).sum(0)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def sgd() -> tuple[Setup, object]:
    setup = Setup()
    return setup, setup.record("all")


def test_batched_equals_separate_passes_and_sums_to_the_mean(sgd) -> None:
    setup, trajectory = sgd
    ref = separate(setup.model, setup.grid, trajectory, setup.query)
    out = per_question_scores(
        setup.model, setup.grid, trajectory, setup.query, QuestionChunks(2), dtype=None
    )  # chunks of 2 and 1
    assert out.scores.shape == (3, *setup.grid.labels.shape) and out.scores.dtype == torch.float64
    assert out.doc_keys == ("a", "b", "c") and out.weights == pytest.approx([1 / 3] * 3)
    assert max_err(out.scores, ref) < EXACT
    mean = magic_scores(setup.model, setup.grid, trajectory, setup.query, dtype=None)
    assert max_err(weighted_sum(out), mean) < SUM_TO_MEAN
    # the questions differ: per-question attribution is not the mean repeated
    assert max_err(out.scores[0], out.scores[1]) > 0.1


def test_dropping_the_hessian_term_is_caught(sgd) -> None:
    """Mutation: first-order per-question scores are far from the exact ones, so the comparison has power."""
    setup, trajectory = sgd
    ref = separate(setup.model, setup.grid, trajectory, setup.query)
    first_order = per_question_scores(
        setup.model, setup.grid, trajectory, setup.query, QuestionChunks(3), dtype=None, hessian=False
    )
    assert max_err(first_order.scores, ref) > 1e-2


@pytest.mark.parametrize("schedule", ["sqrt", "log"])
def test_schedules_storage_and_memory_knobs(sgd, schedule: str, tmp_path) -> None:
    setup, _ = sgd
    trajectory = setup.record(schedule, store=DiskStore(tmp_path / "states"))
    ref = separate(setup.model, setup.grid, trajectory, setup.query)
    out = per_question_scores(
        setup.model,
        setup.grid,
        trajectory,
        setup.query,
        QuestionChunks(3),
        dtype=None,
        micro_batch_rows=1,
        offload_adjoint=True,
    )
    assert max_err(out.scores, ref) < EXACT


def test_a_subset_of_questions_in_order(sgd) -> None:
    setup, trajectory = sgd
    ref = separate(setup.model, setup.grid, trajectory, setup.query)
    out = per_question_scores(setup.model, setup.grid, trajectory, setup.query, QuestionChunks(4, [2, 0]), dtype=None)
    assert out.doc_keys == ("c", "a")
    assert max_err(out.scores, ref[[2, 0]]) < EXACT


@pytest.mark.parametrize("clip", [None, 0.05])
def test_adamw_with_and_without_clipping(clip) -> None:
    """Adam's adjoint (m, v) and the clipping adjoint broadcast over the K batched adjoints. 0.05 clips
    every step of this run (its gradient norms are ~1), so the clipped branch is the one compared."""
    setup = AdamSetup("adamw", max_grad_norm=clip)
    trajectory = setup.record("sqrt")
    ref = separate(setup.model, setup.grid, trajectory, setup.query)
    out = per_question_scores(setup.model, setup.grid, trajectory, setup.query, QuestionChunks(3), dtype=None)
    assert max_err(out.scores, ref) < EXACT
    mean = magic_scores(setup.model, setup.grid, trajectory, setup.query, dtype=None)
    assert max_err(weighted_sum(out), mean) < SUM_TO_MEAN


def test_float32_output_by_default(sgd) -> None:
    setup, trajectory = sgd
    out = per_question_scores(setup.model, setup.grid, trajectory, setup.query, QuestionChunks(2))
    assert out.scores.dtype == torch.float32


def test_bad_chunk_is_refused(sgd) -> None:
    setup, trajectory = sgd
    with pytest.raises(ValueError, match="chunk"):
        per_question_scores(setup.model, setup.grid, trajectory, setup.query, QuestionChunks(0))

"""ReplayOptions: the typed keywords every reverse pass takes (`magic_scores`, `reverse_passes` and the per-task
and per-question passes built on them), so a recipe hands them over as one checked object, not a loose dict."""

from __future__ import annotations

from typing_extensions import TypedDict


class ReplayOptions(TypedDict, total=False):
    """How the reverse pass replays the recorded run (none of it changes the scores beyond rounding, except the
    two mutation switches). The collective (`comm`) is passed beside it: it is a live object, not an option."""

    micro_batch_rows: int | None
    """Rows per replayed micro-batch (None: the recorded micro-batches)."""
    offload_adjoint: bool
    """Keep the adjoint in host RAM between steps."""
    offload_states: bool
    """Keep the states a segment recomputes in host RAM."""
    hessian: bool
    """False drops the Hessian-vector term (first-order scores; the mutation tests)."""
    second_moment: bool
    """False drops Adam's v-adjoint (the mutation test)."""

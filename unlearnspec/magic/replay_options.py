"""ReplayOptions: the typed keywords every reverse pass takes (`magic_scores`, `reverse_passes` and the per-task
and per-question passes built on them), so a recipe hands them over as one checked object, not a loose dict."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Optional

from typing_extensions import TypedDict

if TYPE_CHECKING:
    import torch

    from unlearnspec.magic.collective import Collective
    from unlearnspec.magic.replay_stats import ReplayStats


class ReplayOptions(TypedDict, total=False):
    """How a reverse pass replays the recorded run, on which ranks, what it reports to and in which dtype it returns
    the scores. None of it changes the scores beyond rounding, except the two mutation switches."""

    micro_batch_rows: Optional[int]
    """Rows per replayed micro-batch (None, the default: the recorded micro-batches). A memory knob."""
    offload_adjoint: bool
    """Keep the adjoint and the H g_bar accumulator in host RAM between steps (default False)."""
    offload_states: bool
    """Keep the states a `sqrt`/`all` segment recomputes in host RAM (default False: up to ceil(sqrt T) states sit on
    the device during a segment)."""
    hessian: bool
    """False drops the Hessian-vector term (first-order scores; the mutation tests). Default True."""
    second_moment: bool
    """False drops Adam's v-adjoint (the mutation test). Default True."""
    comm: Optional["Collective"]
    """The ranks that share the pass (default: the torch.distributed group when one with several ranks exists): each
    step's rows are split over them and every rank returns the same full scores."""
    stats: Optional["ReplayStats"]
    """Filled with the pass's counts, timings and rounding diagnostics (default: a fresh one, discarded)."""
    progress: Optional[Callable[[int, int], None]]
    """Called as progress(done, total) with the reverse steps done over all passes so far."""
    dtype: Optional["torch.dtype"]
    """The dtype the scores are returned in (default float32; None: the compute dtype, the parameters')."""


def check_replay_options(options: Mapping[str, object]) -> None:
    """Refuse a keyword that is no ReplayOptions key, as Python refuses an unknown keyword argument (a misspelt memory
    knob or mutation switch must not be ignored silently)."""
    unknown = sorted(set(options) - set(ReplayOptions.__optional_keys__))
    if unknown:
        raise TypeError(f"unexpected reverse-pass keyword(s) {', '.join(unknown)}; ReplayOptions has none of that name")

"""Which GPUs each pool worker gets: disjoint CUDA_VISIBLE_DEVICES sets cut from the GPUs this process
sees, or a clear refusal when there are not enough."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from unlearnspec.errors import UserError


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs): the entries of
    CUDA_VISIBLE_DEVICES that torch can open, else 0..count-1."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [e.strip() for e in listed.split(",") if e.strip()][:count]


def assign_gpus(visible: Sequence[str], jobs: int, per_job: int) -> list[Optional[tuple[str, ...]]]:
    """One entry per worker: its GPU set (disjoint, in order), or None when jobs get no GPU (the worker
    then hides every GPU, so CPU jobs never touch one by accident)."""
    if jobs < 1:
        raise UserError.one("--jobs", f"needs at least 1 job at once (got {jobs}).")
    if per_job < 0:
        raise UserError.one("--gpus-per-job", f"cannot be negative (got {per_job}).")
    if per_job == 0:
        return [None] * jobs
    if not visible:
        raise UserError.one(
            "--gpus-per-job",
            f"{per_job} GPU(s) per job were asked for, but this machine shows no GPU "
            "(none visible to torch, or CUDA_VISIBLE_DEVICES hides them). Pass --gpus-per-job 0 to run "
            "the jobs on the CPU.",
        )
    need = jobs * per_job
    if need > len(visible):
        fit = len(visible) // per_job
        advice = f"lower --jobs to {fit}" if fit >= 1 else f"lower --gpus-per-job to {len(visible)}"
        raise UserError.one(
            "--gpus-per-job",
            f"--jobs {jobs} x --gpus-per-job {per_job} needs {need} GPUs, but "
            f"{len(visible)} are visible ({', '.join(visible)}); {advice}.",
        )
    return [tuple(visible[i * per_job : (i + 1) * per_job]) for i in range(jobs)]

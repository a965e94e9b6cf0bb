"""Write score files atomically: per_token_scores.pt [N, S], per_example_scores.pt [N], scores.json,
and with `per: task` one per_token_scores.<leaf>.pt [N, S] per leaf task (listed in the sidecar's `per_task`).

Tensors are plain float32 tensors (load with `torch.load(path, weights_only=True)`); the sidecar
says how to read them (alignment, sign, normalizer) and what produced them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unlearnspec import __version__
from unlearnspec.magic.optimizers import OPTIMIZERS
from unlearnspec.magic.trajectory import Trajectory
from unlearnspec.safeio import write_json, write_with

if TYPE_CHECKING:
    from unlearnspec.magic.per_task import TaskScores

SCORES_FORMAT_VERSION = 1
PER_TOKEN_FILE = "per_token_scores.pt"
PER_EXAMPLE_FILE = "per_example_scores.pt"
PER_TASK_FILE = "per_token_scores.{leaf}.pt"
"""One leaf task's scores (`magic.query.per: task`); same format, sidecar and fingerprint as the mean file."""
SIDECAR_FILE = "scores.json"


def _save_tensor(path: Path, tensor: torch.Tensor) -> None:
    """A plain tensor file through the one write path (atomic, never through a link, errors named)."""
    write_with(path, lambda fh: torch.save(tensor, fh))


def lr_schedule_summary(lrs: Sequence[float]) -> dict[str, Any]:
    """First/last/min/max of the per-step learning rates plus a hash of the exact list."""
    digest = hashlib.sha256(json.dumps([float(x) for x in lrs]).encode()).hexdigest()[:16]
    return {
        "kind": "constant" if len(set(lrs)) == 1 else "varying",
        "first": lrs[0],
        "last": lrs[-1],
        "min": min(lrs),
        "max": max(lrs),
        "sha256_16": digest,
    }


def _decay_summary(trajectory: Trajectory) -> float | dict[str, Any]:
    decays = trajectory.decays()
    if len(set(decays)) == 1:
        return decays[0]
    return {"values": sorted(set(decays)), "decayed_params": sum(1 for d in decays if d), "params": len(decays)}


def _optimizer_summary(trajectory: Trajectory, lr: float) -> dict[str, Any]:
    opt = trajectory.optimizer
    out: dict[str, Any] = {"name": opt.name, "lr": lr, "weight_decay": _decay_summary(trajectory)}
    hyper = OPTIMIZERS[opt.name].hyperparameters
    if not hyper:
        out["momentum"] = 0.0
    else:
        out.update({key: list(v) if isinstance(v := getattr(opt, key), tuple) else v for key in hyper})
    if opt.max_grad_norm is not None:
        out["max_grad_norm"] = opt.max_grad_norm
    return out


@dataclass(frozen=True)
class ScoreProvenance:
    """What the sidecar records about where the scores came from, besides the trajectory."""

    fingerprint: str
    """The data fingerprint of the token grid the run trained on (`data.TokenGrid.fingerprint`)."""
    query: Mapping[str, Any]
    """The query's task, loss and n_questions (see `QueryBatch.info`)."""
    dtype: str
    """The model's dtype during the run (`model.dtype` of the spec)."""
    lr: float | None = None
    """The run's LR (None: the trajectory's largest)."""
    fingerprint_inputs: Mapping[str, Any] | None = None
    """What the fingerprint is made of (`data.fingerprint_inputs`), so a mismatch names it."""


def scores_metadata(scores: torch.Tensor, trajectory: Trajectory, provenance: ScoreProvenance) -> dict[str, Any]:
    """The sidecar contents."""
    query, lr, inputs = provenance.query, provenance.lr, provenance.fingerprint_inputs
    missing = {"task", "loss", "n_questions"} - set(query)
    if missing:
        raise ValueError(f"query metadata lacks {sorted(missing)}")
    steps = trajectory.steps
    rows = sorted({s.rows for s in steps})
    micro = sorted({len(s.micro_batches) for s in steps})
    lrs = trajectory.lrs
    return {
        "format_version": SCORES_FORMAT_VERSION,
        "alignment": "target",
        "sign": "d(query loss)/d(token weight); negative = training on the token lowers the query loss (proponent)",
        "N": int(scores.shape[0]),
        "S": int(scores.shape[1]),
        "data_fingerprint": provenance.fingerprint,
        **({"data_fingerprint_inputs": dict(inputs)} if inputs is not None else {}),
        "normalizer": "valid",
        "query": {"task": query["task"], "loss": query["loss"], "n_questions": int(query["n_questions"])},
        "optimizer": _optimizer_summary(trajectory, float(lr) if lr is not None else max(lrs)),
        "lr_schedule": lr_schedule_summary(lrs),
        "steps": trajectory.total_steps,
        "batch_size": rows[0] if len(rows) == 1 else rows,  # rows per optimizer step (all ranks): the global batch
        "micro_batches_per_step": micro[0] if len(micro) == 1 else micro,  # recorded forward passes, all ranks
        "dtype": provenance.dtype,
        "checkpoints": trajectory.schedule,
        "files": {"per_token": PER_TOKEN_FILE, "per_example": PER_EXAMPLE_FILE},
        "unlearnspec_version": __version__,
    }


def write_scores(
    out_dir: str | os.PathLike[str],
    scores: torch.Tensor,
    trajectory: Trajectory,
    provenance: ScoreProvenance,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the three files (sidecar last, so its presence marks a complete set); returns their paths.
    `extra` adds keys to the sidecar (spec name and hash, model id, timings)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, S] (got {tuple(scores.shape)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_token = scores.detach().to(torch.float32).cpu().contiguous()
    per_example = per_token.sum(dim=1)
    meta = scores_metadata(per_token, trajectory, provenance)
    meta.update(extra or {})
    paths = {"per_token": out / PER_TOKEN_FILE, "per_example": out / PER_EXAMPLE_FILE, "sidecar": out / SIDECAR_FILE}
    _save_tensor(paths["per_token"], per_token)
    _save_tensor(paths["per_example"], per_example)
    write_json(paths["sidecar"], meta)
    return paths


def write_task_scores(out_dir: str | os.PathLike[str], per_task: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Write one [N, S] float32 file per leaf (`per_task`: rule leaf name -> `per_task.TaskScores`); returns
    the sidecar's `per_task` block, {leaf: {file, task, questions, reverse_seconds}}. Call before `write_scores`, whose
    sidecar (written last) marks the whole set complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    block: dict[str, dict[str, Any]] = {}
    for leaf, entry in per_task.items():
        if entry.scores.dim() != 2:
            raise ValueError(f"scores of leaf {leaf!r} must be [N, S] (got {tuple(entry.scores.shape)})")
        name = PER_TASK_FILE.format(leaf=leaf)
        tensor = entry.scores.detach().to(torch.float32).cpu().contiguous()
        write_with(out / name, functools.partial(torch.save, tensor), root=out)  # a leaf name may not leave `out`
        block[leaf] = {
            "file": name,
            "task": entry.task,
            "questions": int(entry.questions),
            "reverse_seconds": entry.seconds,
        }
    return block


@dataclass(frozen=True)
class QueryScores:
    """A score job's scores of its query: the mean query's [N, S], and, when computed, each leaf task's (rule leaf
    name -> `per_task.TaskScores`) and each question's [Q, N, S]."""

    task: str
    """The query task (a leaf task or a group)."""
    scores: torch.Tensor
    per_task: Mapping[str, "TaskScores"]
    per_question: torch.Tensor | None = None


PER_QUESTION_FILE = "per_question_scores.pt"
"""Every question's scores (`magic.query.per: question`): [Q, N, S] float32, same alignment and fingerprint."""


def write_question_scores(out_dir: str | os.PathLike[str], per_question: Any) -> dict[str, Any]:
    """Write the [Q, N, S] float32 file of a `per_question.QuestionScores`; returns the sidecar's
    `per_question` block {file, questions, doc_keys, weights, chunk, reverse_seconds}. Call before
    `write_scores`, whose sidecar (written last) marks the whole set complete."""
    tensor = per_question.scores.detach().to(torch.float32).cpu().contiguous()
    if tensor.dim() != 3:
        raise ValueError(f"per-question scores must be [Q, N, S] (got {tuple(tensor.shape)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_tensor(out / PER_QUESTION_FILE, tensor)
    return {
        "file": PER_QUESTION_FILE,
        "questions": int(tensor.shape[0]),
        "doc_keys": list(per_question.doc_keys),
        "weights": per_question.weights,
        "chunk": per_question.chunk,
        "reverse_seconds": per_question.seconds,
    }

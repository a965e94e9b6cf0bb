"""Evaluate an in-memory model with lm-evaluation-harness (no save/reload round trip).

Tasks come from the include paths (plugins/); lm-eval's ~14,700 built-in tasks are indexed only
when a task is not found there. Global RNGs are never reseeded and train mode is restored, so an
evaluation in the middle of a run leaves the run unchanged.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from unlearnspec.errors import Problem, UserError, first_line
from unlearnspec.records import TaskMetrics
from unlearnspec.spec import EvalSpec

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

FEWSHOT_SEED = 1234
"""Seed of lm-eval's few-shot sampler (its own generator; lm-eval's default value)."""


@dataclass
class EvalResult:
    """Metrics and per-question correctness of one evaluation."""

    metrics: dict[str, TaskMetrics]
    """Task or group name (as named in the spec) -> acc, acc_stderr, acc_norm, acc_norm_stderr, n."""
    samples: dict[str, list[int]]
    """Task -> 0/1 correctness under `metric`, by doc id (a group: its subtasks in group order)."""
    metric: str
    """The metric `samples` records (the spec's headline metric)."""
    subtasks: dict[str, list[str]] = field(default_factory=dict)
    """Group -> its leaf tasks, in the order their samples are concatenated."""
    num_fewshot: dict[str, int] = field(default_factory=dict)
    """Task -> few-shot count used."""

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "metrics": {k: v.model_dump(mode="json") for k, v in self.metrics.items()},
            "samples": self.samples,
            "subtasks": self.subtasks,
            "num_fewshot": self.num_fewshot,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "eval.json") -> "EvalResult":
        """Rebuild from `to_json` output; a damaged file (wrong types, missing keys, NaN
        accuracy) is a UserError naming `source`, so a cache can treat it as a miss."""
        try:
            return cls(
                metrics={str(k): TaskMetrics.model_validate(v) for k, v in data["metrics"].items()},
                samples={str(k): [int(x) for x in v] for k, v in data["samples"].items()},
                metric=str(data["metric"]),
                subtasks=dict(data.get("subtasks", {})),
                num_fewshot=dict(data.get("num_fewshot", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # ValidationError is a ValueError
            raise UserError.one(
                source, f"not a valid evaluation record ({first_line(exc, 120)}). Delete it to re-evaluate."
            ) from None


# --------------------------------------------------------------------------- task lookup
def task_manager(names: Sequence[str], include_paths: Sequence[Path]) -> "TaskManager":
    """A TaskManager over the include paths; built-ins are indexed (6-8 s) only when needed."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_paths]
    tm = TaskManager(include_path=paths or None, include_defaults=False)
    missing = [n for n in names if n not in tm.all_tasks]
    if missing:
        tm = TaskManager(include_path=paths or None, include_defaults=True)
        still = [n for n in names if n not in tm.all_tasks]
        if still:
            problems = []
            for name in still:
                close = difflib.get_close_matches(name, tm.all_tasks, n=3, cutoff=0.6)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                local = sorted(TaskManager(include_path=paths, include_defaults=False).all_tasks) if paths else []
                listed = f" Tasks in {', '.join(paths)}: {', '.join(local)}." if local else ""
                problems.append(Problem("eval.tasks", name, f"unknown lm-eval task {name!r}.{hint}{listed}"))
            raise UserError(problems)
    return tm


def _dataset_of(tm: "TaskManager", name: str) -> str:
    """The hub dataset(s) a task, group or tag reads, for error messages (from the YAML index)."""
    from lm_eval.tasks._index import Kind

    index = tm.task_index
    seen: list[str] = []
    visited: set[str] = set()

    def walk(n: str) -> None:
        if n in visited or n not in index:
            return
        visited.add(n)
        entry = index[n]
        cfg = entry.cfg or {}
        if cfg.get("dataset_path") and str(cfg["dataset_path"]) not in seen:
            seen.append(str(cfg["dataset_path"]))
        if entry.kind == Kind.TAG:
            children = [k for k, e in index.items() if n in e.tags]
        else:
            listed = cfg.get("task") if entry.kind == Kind.GROUP else None
            children = listed if isinstance(listed, list) else []
        for child in children:
            walk(child if isinstance(child, str) else str(child.get("task", "")))

    walk(name)
    return ", ".join(seen) or "of the task"


def _load(tm: "TaskManager", name: str) -> Any:
    """Build one task/group; a dataset that cannot be loaded becomes a UserError."""
    try:
        return tm.load([name])
    except Exception as exc:  # lm-eval surfaces hub/offline failures as many exception types
        if not _is_dataset_error(exc):
            raise
        dataset = _dataset_of(tm, name)
        raise UserError.one(
            "eval.tasks",
            f"cannot load dataset {dataset} of task {name!r} ({first_line(exc)}). "
            "The hub is unreachable or the dataset is not cached: download it once with network access "
            "(HF_HUB_OFFLINE=0), or run on the embedded toy world with --toy.",
            loc=name,
        ) from None


def _is_dataset_error(exc: BaseException) -> bool:
    import datasets
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    kinds: tuple[type[BaseException], ...] = (
        datasets.exceptions.DatasetNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        HfHubHTTPError,
        ConnectionError,
        FileNotFoundError,
    )
    while exc is not None:
        if isinstance(exc, kinds):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


# --------------------------------------------------------------------------- evaluation
@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """Silence lm-eval's per-task notices and progress bars (tqdm writes to stderr); errors still raise."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    # lm-eval also shells out to `git describe` for its env info; outside a git checkout that
    # prints "fatal: not a git repository" on file descriptor 2, which redirect_stderr cannot catch.
    saved_fd = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        os.close(devnull)
        logger.setLevel(level)


def evaluate_model(model: Any, tokenizer: Any, eval_spec: EvalSpec, include_paths: Sequence[Path]) -> EvalResult:
    """Evaluate `model` (a transformers causal LM) on the spec's tasks with lm-eval in-process.

    Per-task `num_fewshot` and `limit` are applied to every leaf task (`limit` counts per leaf, as
    lm-eval's --limit does). The model's train/eval mode and the global RNG states are restored.
    """
    with _global_rng_preserved():
        return _evaluate(model, tokenizer, eval_spec, include_paths)


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Restore python/numpy/torch global RNG states afterwards: besides the seeds simple_evaluate
    would set, lm-eval draws from the global `random` on every `Task.task_name` access."""
    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _evaluate(model: Any, tokenizer: Any, eval_spec: EvalSpec, include_paths: Sequence[Path]) -> EvalResult:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    names = [t.name for t in eval_spec.tasks]
    tm = task_manager(names, include_paths)
    with quiet_lm_eval():
        loaded = {t.name: _load(tm, t.name) for t in eval_spec.tasks}

    objects: list[Any] = []
    samples_request: dict[str, list[int]] = {}
    leaves: dict[str, list[str]] = {}
    fewshot: dict[str, int] = {}
    for task in eval_spec.tasks:
        result = loaded[task.name]
        leaves[task.name] = _leaf_order(result, task.name)
        for leaf_name in leaves[task.name]:
            leaf = result["tasks"][leaf_name]
            _check_metric(leaf, leaf_name, task.name, eval_spec.metric)
            # Set on the task itself: simple_evaluate's num_fewshot is global and ignores YAMLs pinning 0.
            leaf.set_config(key="num_fewshot", value=task.num_fewshot)
            fewshot[leaf_name] = int(task.num_fewshot or 0)
            if task.limit is not None:
                samples_request[leaf_name] = list(range(min(task.limit, len(leaf.eval_docs))))
        objects.extend(_top_level(result))

    was_training = bool(getattr(model, "training", False))
    try:
        with quiet_lm_eval():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=eval_spec.batch_size, device=str(model.device))
            res = simple_evaluate(
                model=lm,
                tasks=objects,
                task_manager=tm,
                samples=samples_request or None,
                bootstrap_iters=eval_spec.bootstrap_iters,
                log_samples=True,
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
                fewshot_random_seed=FEWSHOT_SEED,
            )
    finally:
        if was_training:
            model.train()
    if res is None:
        raise RuntimeError("lm-eval returned no results (not rank 0); evaluate in a single process")
    return _collect(res, eval_spec, leaves, fewshot)


def _leaf_order(loaded: Any, name: str) -> list[str]:
    groups = loaded.get("groups", {})
    if name not in groups:
        return [name]
    return [t.task_name for t in groups[name].get_all_tasks()]


def _top_level(loaded: Any) -> list[Any]:
    groups = loaded.get("groups", {})
    children = {c for g in groups.values() for c in g.child_names}
    tops = [g for n, g in groups.items() if n not in children]
    return tops or list(loaded["tasks"].values())


def _check_metric(leaf: Any, leaf_name: str, name: str, metric: str) -> None:
    metrics = sorted(getattr(leaf, "_metric_fn_list", {}))
    if metric not in metrics:
        raise UserError.one(
            "eval.metric",
            f"task {name!r} ({leaf_name}) reports no {metric!r} (its metrics: {', '.join(metrics) or 'none'}); "
            "set `eval.metric` to one it reports.",
            loc="metric",
        )


def _metric(row: dict[str, Any], key: str) -> Optional[float]:
    value = row.get(f"{key},none")
    return None if value is None or value == "N/A" else float(value)


def _collect(res: dict[str, Any], spec: EvalSpec, leaves: dict[str, list[str]], fewshot: dict[str, int]) -> EvalResult:
    table = {**res.get("results", {}), **res.get("groups", {})}
    metrics: dict[str, TaskMetrics] = {}
    samples: dict[str, list[int]] = {}
    subtasks: dict[str, list[str]] = {}
    for task in spec.tasks:
        row = table[task.name]
        correct: list[int] = []
        for leaf in leaves[task.name]:
            logged = sorted(res["samples"][leaf], key=lambda s: s["doc_id"])
            correct.extend(int(round(float(s[spec.metric]))) for s in logged)
        acc = _metric(row, "acc")
        if acc is None:
            raise UserError.one(
                "eval.tasks",
                f"task {task.name!r} reports no `acc`; only multiple-choice tasks with acc are supported.",
                loc=task.name,
            )
        metrics[task.name] = TaskMetrics(
            acc=acc,
            acc_stderr=_metric(row, "acc_stderr"),
            acc_norm=_metric(row, "acc_norm"),
            acc_norm_stderr=_metric(row, "acc_norm_stderr"),
            n=len(correct),
        )
        samples[task.name] = correct
        if leaves[task.name] != [task.name]:
            subtasks[task.name] = leaves[task.name]
    return EvalResult(
        metrics=metrics,
        samples=samples,
        metric=spec.metric,
        subtasks=subtasks,
        num_fewshot={leaf: fewshot[leaf] for names in leaves.values() for leaf in names},
    )

"""Typed `results.json` of one spec run (written by the runner, read by report, diff and doctor).

Per-question correctness lives beside it in each run dir as `samples.json` ({task: [0|1, ...]} by
doc id) so reports can run paired tests without bloating results.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from unlearnspec.errors import UserError
from unlearnspec.records import Count, InsidePath, Record, TaskMetrics, TokenStats  # noqa: F401 - re-exported
from unlearnspec.safeio import SPEC_NAME_PATTERN, read_json, terminal_control, write_json_atomic

RESULTS_FORMAT = 1
RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.json"


class BatchRecord(Record):
    """How the run's global batch was split over the processes that trained it (spec.batch.BatchLayout)."""

    global_batch: int = Field(gt=0)
    """Rows per optimizer step (`training.batch_size`)."""
    world_size: int = Field(gt=0)
    """Processes (ranks) that trained."""
    micro_batch_size: int = Field(gt=0)
    """Rows per forward/backward on one rank."""
    accumulation: int = Field(gt=0)
    """Micro-batches per rank per optimizer step."""


class EvalRecord(Record):
    """One evaluation (baseline or a sweep point)."""

    metrics: dict[str, TaskMetrics] = {}
    """Task name -> metrics."""
    samples_file: Optional[InsidePath] = None
    """Per-question correctness, relative to the results.json folder."""


class AttackResult(EvalRecord):
    """The point's model after k steps of the relearning attack (`attack` in the spec), evaluated on its tasks."""

    steps: int = Field(gt=0)
    """k: optimizer steps of the attack so far (the attack is cumulative over the spec's `attack.steps`)."""
    loss: Optional[float] = None
    """Mean token cross-entropy on the held-out rows at the k-th step (before its update)."""
    train_seconds: Optional[float] = None
    """Wall seconds of attack training since the previous count."""
    eval_seconds: Optional[float] = None
    """Wall seconds of this evaluation."""


class RunRecord(EvalRecord):
    """One sweep point."""

    point: str
    """Point id, e.g. `lr=1e-05` (also the run dir name, made filesystem-safe)."""
    hparams: dict[str, float] = {}
    """The swept hyperparameters of this point (at least `lr`: finite and > 0, as in a spec)."""
    status: Literal["ok", "failed"]
    """ok, or failed with `reason`."""
    reason: Optional[str] = None
    """Why the point failed (e.g. non-finite loss at step 12)."""
    token_stats: Optional[TokenStats] = None
    """Selected-token statistics."""
    run_dir: InsidePath
    """The point's folder, relative to the results.json folder."""
    train_seconds: Optional[float] = None
    """Wall seconds of training."""
    eval_seconds: Optional[float] = None
    """Wall seconds of evaluation."""
    spec_hash: Optional[str] = None
    """Hash of the spec the point ran (sweep and output excluded); resume refuses a different one."""
    model_dir: Optional[InsidePath] = None
    """The saved model or adapter (`output.save_model`), relative to the point's folder."""
    curves: Optional[str] = None
    """Where the training curves went (`training.report_to`): e.g. `tensorboard: curves/tensorboard`."""
    batch: Optional[BatchRecord] = None
    """The global batch and its split over the ranks of the launch that trained the point."""
    attack: Optional[list[AttackResult]] = None
    """The relearning attack on this point's model, one entry per step count (unset: the spec has no `attack`)."""

    @field_validator("hparams")
    @classmethod
    def _lr_as_in_a_spec(cls, value: dict[str, float]) -> dict[str, float]:
        if "lr" in value and not value["lr"] > 0:
            raise ValueError(f"lr must be > 0, as in a spec (got {value['lr']})")
        return value


class BaselineRecord(EvalRecord):
    """The untouched base model."""

    status: Literal["ok", "failed", "skipped"] = "ok"
    """skipped when the spec sets baseline.evaluate: false."""
    reason: Optional[str] = None
    """Why it failed or was skipped."""
    recorded: Optional[dict[str, float]] = None
    """Recorded baseline numbers from the spec (not measured here)."""
    recorded_source: Optional[str] = None
    """Where the recorded numbers come from."""


class SpecInfo(Record):
    """Which spec produced the results."""

    name: str = Field(pattern=SPEC_NAME_PATTERN, max_length=200)
    """Spec name (it names the report files, so it is held to the spec-name pattern when read back)."""
    hash: str
    """sha256 of the resolved spec (after overrides and profile)."""
    path: str
    """Spec path as given."""
    profile: Optional[str] = None
    """Profile the spec was mapped through (e.g. toy)."""
    control: Optional[str] = None
    """Name of the matched control spec, if any."""
    control_path: Optional[str] = None
    """Path of the control spec as written in the spec."""
    role: Optional[Literal["positive_control", "negative_control"]] = None
    """The spec's `role` in its study (unset: an experiment under test); reports find the study's
    positive control (the oracle) and mark both controls in the study plot from it."""
    metric: str = "acc"
    """Headline metric."""
    tasks: list[str] = []
    """Evaluated tasks in spec order."""
    hazard_task: Optional[str] = None
    """The spec's `eval.hazard_task` (reports read selectivity and plot with it; `report --hazard-task` overrides)."""
    general_task: Optional[str] = None
    """The spec's `eval.general_task`."""


class Results(Record):
    """results.json: one spec run."""

    format: int = Field(default=RESULTS_FORMAT)
    """File format version."""
    spec: SpecInfo
    """The spec."""
    baseline: Optional[BaselineRecord] = None
    """Baseline evaluation."""
    runs: list[RunRecord] = []
    """Sweep points, in spec order."""
    provenance: dict[str, str] = {}
    """Versions, git sha, machine, date."""


def save_results(results: Results, folder: Path) -> Path:
    path = folder / RESULTS_FILE
    write_json_atomic(path, results.model_dump(mode="json"))
    return path


M = TypeVar("M", bound=BaseModel)


def read_json_model(path: Path, cls: type[M], what: str, missing: str, fix: str) -> M:
    """Read a JSON file into a Pydantic model; every failure is a UserError naming the file and the fix."""
    raw = read_json(path, what, missing, fix)
    control = terminal_control(raw)
    if control is not None:
        raise UserError.one(
            str(path),
            f"not a valid {what} ({control[0]}: holds the control character {control[1]!r}, "
            f"which printed would rewrite the terminal). {fix}",
        )
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "top level"
        raise UserError.one(str(path), f"not a valid {what} ({loc}: {first['msg']}). {fix}") from None
    except RecursionError:
        raise UserError.one(str(path), f"the {what} is nested too deeply to be one. {fix}") from None


def load_results(path: Path) -> Results:
    """Read results.json (or a folder holding one); a wrong file is a UserError, not a traceback."""
    path = path / RESULTS_FILE if path.is_dir() else path
    return read_json_model(
        path,
        Results,
        "results.json",
        "no results.json here; run the spec first (`unlearnspec run SPEC`).",
        "Rerun the spec to rewrite it.",
    )


def load_samples(results_dir: Path, record: EvalRecord) -> tuple[Optional[dict[str, list[int]]], Optional[str]]:
    """Per-question correctness of a record ({task: [0|1, ...]}), or None when not logged; the
    second value says why a logged file could not be used (reports then say the tests are unpaired)."""
    if record.samples_file is None:
        return None, None
    path = results_dir / record.samples_file
    try:
        raw = read_json(path, "samples file", "missing", "")
    except UserError as exc:
        why = exc.problems[0].message.split(". ")[0]
        return None, f"{record.samples_file}: {why}"
    if not isinstance(raw, dict):
        return None, f"{record.samples_file}: not a mapping of task -> list of 0/1"
    out: dict[str, list[int]] = {}
    for task, values in raw.items():
        if not isinstance(values, list) or not all(type(x) is int and x in (0, 1) for x in values):
            return None, f"{record.samples_file}: task {task!r} is not a list of 0/1"
        out[str(task)] = values
    for task, m in record.metrics.items():
        got = out.get(task)
        if got is not None and len(got) != m.n:
            return None, f"{record.samples_file}: task {task!r} has {len(got)} answers but n={m.n}"
    return out, None

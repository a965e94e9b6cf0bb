"""Doctor rules that read specs (and score sidecars): validity, matched control, score data, score
regime, precision, alignment (rules D0-D5) and unusable score files (D10); D6 lives in step_rules."""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional

from unlearnspec.doctor.context import Entry, Workspace, sidecar_number, sidecar_value
from unlearnspec.doctor.findings import Finding
from unlearnspec.doctor.rescore import rescore_advice, rescore_refusals
from unlearnspec.doctor.step_rules import estimate_fraction, lr_shift  # noqa: F401 - D6 lives in step_rules
from unlearnspec.report.build import format_lr
from unlearnspec.spec import Spec
from unlearnspec.spec.load import find_spec_files, is_profile_path, project_root, resolve_path, world_problem
from unlearnspec.spec.schema import RESULT_NEUTRAL_FIELDS

TRAINER_ALIGNMENT = "target"
"""Column t weights the loss of predicting token t: the trainer's and the recorded files' convention."""

LOW_PRECISION = {"bf16", "bfloat16", "fp16", "float16", "half", "torch.bfloat16", "torch.float16"}

# Fields a control may differ in: identity (incl. `role`), outputs, and the token rule under test.
_NOT_COMPARED = (
    "name",
    "description",
    "control",
    "role",
    "scores",
    "tokens",
    "baseline",
    "magic",
    "training.lr",
    "attack",
    *RESULT_NEUTRAL_FIELDS,
)
"""What D1 does not compare: the token rule and its scores, names and the sweep, the relearning attack (it runs
after the point is trained and evaluated, so it never changes the point), plus every field that never changes a
run's numbers."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return format_lr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "unset" if value is None else str(value)


def _d1_normalizer(spec: Spec) -> str:
    # `selected` equals `valid` on an all-tokens run; what it does to a masked run (a larger
    # per-token step) is measured and bounded by D6 (--lr-factor), so D1 does not count it twice.
    return "valid" if spec.loss.normalizer == "selected" else spec.loss.normalizer


def _comparable(spec: Spec) -> dict[str, Any]:
    flat = _flatten(spec.model_dump(mode="json"))
    flat["loss.normalizer"] = _d1_normalizer(spec)
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in _NOT_COMPARED)}


def _lrs_text(lrs: list[float]) -> str:
    return ", ".join(format_lr(x) for x in sorted(lrs))


def _missing_lrs(mine: tuple[float, ...], theirs: tuple[float, ...]) -> list[float]:
    return [x for x in mine if not any(math.isclose(x, y, rel_tol=1e-9) for y in theirs)]


# --------------------------------------------------------------------------- D0 / D4 validity
def invalid_spec(entry: Entry) -> Iterator[Finding]:
    if entry.error is None:
        return
    for problem in entry.error.problems:
        if problem.loc in ("model.dtype", "training.precision") and "MAGIC" in problem.message:
            yield Finding(
                "D4",
                "error",
                entry.shown,
                "MAGIC scores requested in low precision: the spec fails validation",
                (f"{problem.loc}: {problem.message}",),
                "Set `model.dtype: float32` and `training.precision: fp32` in the MAGIC spec.",
            )
        else:
            where = f"{problem.loc}: " if problem.loc else ""
            yield Finding(
                "D0",
                "error",
                entry.shown,
                "the spec does not validate",
                (f"{where}{problem.message}",),
                f"Run `unlearnspec validate {entry.shown}` and fix it.",
            )


# --------------------------------------------------------------------------- D1 matched control
def matched_controls(entry: Entry, ws: Workspace) -> list[tuple[str, list[float]]]:
    """All-tokens specs (of this project's specs/ folder, read as the doctor reads this spec) identical to
    `entry` except the token rule: (path as `control:` takes it, this spec's LRs the candidate does not sweep),
    the ones sweeping every LR first. The declared control itself is left out."""
    spec = entry.spec
    assert spec is not None
    root = project_root(entry.path)
    declared = resolve_path(entry.path, spec.control).resolve() if spec.control else None
    mine = _comparable(spec)
    found = []
    for path in find_spec_files([root / "specs"])[0] if (root / "specs").is_dir() else []:
        if is_profile_path(path) or path.resolve() in (entry.path.resolve(), declared):
            continue
        other = ws.spec(path).spec
        if other is None or other.magic is not None or other.tokens.mode != "all" or _comparable(other) != mine:
            continue
        shown = (
            path.resolve().relative_to(root.resolve()).as_posix()
            if path.resolve().is_relative_to(root.resolve())
            else str(path)
        )
        found.append((shown, _missing_lrs(spec.training.lrs, other.training.lrs)))
    return sorted(found, key=lambda c: (len(c[1]), c[0]))


def _control_fix(entry: Entry, ws: Workspace, generic: str, control: Optional[Spec] = None) -> str:
    """D1's fix: check a toy-only spec with its real control through --toy; else point at an existing matched
    control when there is one; else `generic`."""
    spec = entry.spec
    assert spec is not None
    if control is not None and spec.model.toy is not None and control.model.toy is None:
        return (
            f"This spec is toy-only (`model.toy: {spec.model.toy}`) and its control {spec.control} a real-model spec: "
            "check them as they run, with `doctor --toy` (the toy profile maps the control onto the toy world)."
        )
    found = matched_controls(entry, ws)
    if not found:
        return generic
    path, missing = found[0]
    more = f" (it does not sweep {_lrs_text(missing)}: add those LRs to it)" if missing else ""
    others = f"; also matched: {', '.join(p for p, _ in found[1:4])}" if len(found) > 1 else ""
    return f"Set `control: {path}`: it is identical to this spec except the token rule{more}{others}."


def unmatched_control(entry: Entry, ws: Workspace) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None or spec.magic is not None:
        return
    if spec.control is None:
        if spec.tokens.mode != "all":
            yield Finding(
                "D1",
                "warning",
                entry.shown,
                "no matched control: effects can only be read against the untouched baseline",
                (f"tokens.mode: {spec.tokens.mode}; control: unset",),
                _control_fix(
                    entry,
                    ws,
                    "Add an all-tokens spec identical except `tokens` (see specs/fixed/) and set `control:` to it; "
                    "the seed's exp7 showed training alone moves WMDP and MMLU.",
                ),
            )
        return
    control = ws.control(entry)
    if control is None or control.spec is None:
        yield Finding(
            "D1",
            "error",
            entry.shown,
            "the declared control cannot be read",
            (f"control: {spec.control}",),
            "Fix the path or the control spec (`unlearnspec validate`).",
        )
        return
    mine, theirs = _comparable(spec), _comparable(control.spec)
    evidence = [
        f"{k}: {_fmt(mine.get(k))} ({spec.name}) vs {_fmt(theirs.get(k))} ({control.spec.name})"
        for k in sorted(set(mine) | set(theirs))
        if mine.get(k) != theirs.get(k)
    ]
    lrs, ctrl_lrs = spec.training.lrs, control.spec.training.lrs
    missing = _missing_lrs(lrs, ctrl_lrs)
    if missing:
        evidence.append(
            f"training.lr: {spec.name} sweeps {_lrs_text(missing)} where the control has no run (control sweeps {_lrs_text(list(ctrl_lrs))})"
        )
    if control.spec.tokens.mode != "all":
        evidence.append(
            f"tokens.mode: the control {control.spec.name} is not an all-tokens run ({control.spec.tokens.mode})"
        )
    if evidence:
        yield Finding(
            "D1",
            "error",
            entry.shown,
            f"control {control.spec.name} differs in more than the token rule",
            tuple(evidence),
            _control_fix(
                entry,
                ws,
                f"Make {spec.name} and {control.spec.name} identical except `tokens` (and `scores`): same optimizer, "
                "LR grid, schedule, batch, steps, data and normalizer.",
                control.spec,
            ),
        )


# --------------------------------------------------------------------------- D2 score data
def _data_of(spec: Spec) -> dict[str, Any]:
    d = spec.data
    return {
        "corpus": d.hub.model_dump(mode="json")
        if d.hub
        else (d.files.model_dump(mode="json") if d.files else d.toy.model_dump(mode="json") if d.toy else None),
        "data.text_field": d.text_field if d.chat is None else None,
        "data.chat": d.chat.model_dump(mode="json") if d.chat else None,
        "N (data.select.count)": d.select.count,
        "data.select (filter, order, offset)": d.select.model_dump(mode="json", exclude={"count"}),
        "data.append_eos": d.append_eos,
        "model": spec.model.name_or_path or f"toy:{spec.model.toy}",
        "model.revision": spec.model.revision,
        "model.tokenizer": spec.model.tokenizer,
    }


def _fmt_corpus(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return _fmt(value)


def score_data_mismatch(entry: Entry, ws: Workspace) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None or spec.magic is not None:
        return
    for name, src in sorted(spec.scores.items()):
        if src.built_in:
            continue  # built for this spec's own grid at run time: same data by construction
        sidecar = ws.sidecar(entry, src)
        producer = ws.producer(entry, src)
        evidence: list[str] = []
        if producer is not None and producer.spec is not None:
            mine, theirs = _data_of(spec), _data_of(producer.spec)
            for key in mine:
                if mine[key] != theirs[key]:
                    evidence.append(
                        f"{key}: {_fmt_corpus(theirs[key])} (scores, {producer.spec.name}) vs {_fmt_corpus(mine[key])} (training)"
                    )
            cols, msl = producer.spec.data.max_seq_len, spec.data.max_seq_len
            if cols != msl:
                prefix = (
                    f"; the experiment uses the first {msl} of {cols} score columns (truncate_columns: true)"
                    if msl < cols and src.truncate_columns
                    else ""
                )
                evidence.append(f"data.max_seq_len: {cols} (scores) vs {msl} (training){prefix}")
        n_side = sidecar_number(sidecar, "N", "n", "rows", "num_rows")
        s_side = sidecar_number(sidecar, "S", "columns", "max_seq_len", "seq_len")
        if n_side is not None and int(n_side) != spec.data.select.count:
            evidence.append(f"N: {n_side} rows in the score file (scores.json) vs {spec.data.select.count} trained")
        if (
            s_side is not None
            and int(s_side) != spec.data.max_seq_len
            and not any(e.startswith("data.max_seq_len") for e in evidence)
        ):
            evidence.append(f"columns: {s_side} in the score file (scores.json) vs max_seq_len {spec.data.max_seq_len}")
        side_model = sidecar_value(sidecar, "model", "model_name", "model.name_or_path")
        if isinstance(side_model, str) and spec.model.name_or_path and side_model != spec.model.name_or_path:
            evidence.append(f"model: {side_model} (score file) vs {spec.model.name_or_path} (training)")
        if evidence:
            fix = "Score the exact token grid you train on: same corpus, rows (N, filter, order, offset), tokenizer/model and max_seq_len (see specs/fixed/)."
            other_world = (
                world_problem(spec, producer.spec, src.produced_by or "")
                if producer is not None and producer.spec is not None
                else None
            )
            if other_world is not None:  # a toy-only spec read without --toy: the grid fix would be the wrong one
                fix = other_world
            yield Finding(
                "D2",
                "error",
                entry.shown,
                f"score source `{name}` was computed on other data than {spec.name} trains on",
                tuple(evidence),
                fix,
            )
        elif producer is None and sidecar is None and ws.score_file_problem(entry, src, name) is None:
            yield Finding(
                "D2",
                "warning",
                entry.shown,
                f"score source `{name}` has unknown provenance",
                (f"scores.{name}.path: {src.path}; no producing spec and no scores.json sidecar",),
                "Point `produced_by` at the MAGIC spec that made the scores, or keep its scores.json beside the file.",
            )


# --------------------------------------------------------------------------- D10 score files
def score_file_unusable(entry: Entry, ws: Workspace) -> Iterator[Finding]:
    """A `path:` score source the run would refuse: checked with the run's own loader."""
    spec = entry.spec
    if spec is None:
        return
    for name, src in sorted(spec.scores.items()):
        problem = ws.score_file_problem(entry, src, name)
        if problem is not None:
            yield Finding(
                "D10",
                "error",
                entry.shown,
                f"score source `{name}` cannot be used",
                (f"scores.{name}.path: {src.path}: {problem}",),
                "Fix the path, or rescore and save a plain float tensor [N, max_seq_len] (torch.save or safetensors).",
            )


# --------------------------------------------------------------------------- D3 score regime
def _total_steps(spec: Spec) -> Optional[int]:
    t = spec.training
    if t.max_steps is not None:
        return t.max_steps
    per_epoch = math.ceil(spec.data.select.count / t.batch_size)
    return math.ceil(per_epoch * (t.epochs or 0))


def _regime(spec: Spec) -> dict[str, Any]:
    """What D3 compares (the global batch has its own findings: doctor/batch_rules.py)."""
    t, opt = spec.training, spec.training.optimizer
    out: dict[str, Any] = {
        "optimizer": opt.name,
        "momentum": opt.momentum,
        "weight_decay": opt.weight_decay,
        "schedule": t.schedule,
        "warmup": t.warmup_steps if t.warmup_steps is not None else (t.warmup_ratio or 0.0),
        "steps": _total_steps(spec),
        "data order": "shuffled" if t.shuffle else "grid order",
        "max_grad_norm (clipping)": t.max_grad_norm,
        "model.dtype": spec.model.dtype,
        "training.precision": t.precision,
        "lora": spec.lora is not None,
    }
    if opt.name != "sgd":
        out["betas"] = list(opt.betas)
        out["eps"] = opt.eps
    if t.shuffle:
        out["seed (data order)"] = t.seed
    return out


def _sidecar_regime(sidecar: Optional[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    opt = sidecar_value(sidecar, "optimizer.name", "optimizer")
    if isinstance(opt, str):
        out["optimizer"] = opt.lower()
    steps = sidecar_number(sidecar, "steps", "max_steps")
    if steps is not None:
        out["steps"] = int(steps)
    return out


def score_regime_mismatch(entry: Entry, ws: Workspace) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None or spec.magic is not None:
        return
    for name, src in sorted(spec.scores.items()):
        producer = ws.producer(entry, src)
        sidecar = ws.sidecar(entry, src)
        theirs: dict[str, Any] = _regime(producer.spec) if producer is not None and producer.spec is not None else {}
        theirs.update(_sidecar_regime(sidecar))
        lr: Optional[float] = sidecar_number(sidecar, "lr", "optimizer.lr")
        if lr is None and producer is not None and producer.spec is not None:
            lr = producer.spec.training.lrs[0]
        if not theirs and lr is None:
            continue
        mine = _regime(spec)
        evidence = [
            f"{k}: {_fmt(theirs[k])} (scores) vs {_fmt(mine.get(k))} (steered run)"
            for k in theirs
            if k in mine and theirs[k] != mine[k]
        ]
        if lr is not None:
            other = _missing_lrs(spec.training.lrs, (float(lr),))
            if other:
                evidence.append(f"lr: {format_lr(float(lr))} (scores) vs {_lrs_text(other)} (steered run)")
        if evidence:
            who = producer.spec.name if producer is not None and producer.spec is not None else "the score file"
            magic = (
                producer.spec.magic.model_dump(mode="json", exclude_none=True)
                if producer is not None and producer.spec is not None and producer.spec.magic
                else None
            )
            refusals = rescore_refusals(spec, magic)
            steer = "Steer the same regime the scores were computed in (the producer's optimizer, lr, schedule, warmup, batch, steps, order, clipping)"
            yield Finding(
                "D3",
                "warning",
                entry.shown,
                f"score source `{name}` ({who}) was computed in another training regime than the run it steers; "
                "metagradients are local to the trajectory they were computed on",
                tuple(evidence),
                f"{steer}. {rescore_advice(refusals)}"
                if refusals
                else f"{steer}, or rescore in the steered regime (MAGIC replays SGD, Adam and AdamW; see specs/fixed_adamw/).",
            )


# --------------------------------------------------------------------------- D4 precision (sidecars)
def sidecar_precision(entry: Entry, ws: Workspace) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None:
        return
    for name, src in sorted(spec.scores.items()):
        dtype = sidecar_value(ws.sidecar(entry, src), "dtype", "param_dtype", "precision")
        if isinstance(dtype, str) and dtype.lower() in LOW_PRECISION:
            yield Finding(
                "D4",
                "error",
                entry.shown,
                f"score source `{name}` was produced in {dtype}",
                (
                    f"scores.json dtype: {dtype}: with bf16/fp16 parameters most SGD updates round away, so the scores are gradient similarity plus rounding noise",
                ),
                "Recompute the scores with float32 parameters (`model.dtype: float32`, `training.precision: fp32`).",
            )


# --------------------------------------------------------------------------- D5 alignment
def alignment_ambiguity(entry: Entry, ws: Workspace) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None:
        return
    for name, src in sorted(spec.scores.items()):
        if src.built_in:
            continue  # `random` / `toy:truth` are built in target alignment (the schema refuses `input`)
        side = sidecar_value(ws.sidecar(entry, src), "alignment")
        declared = src.alignment
        if declared is None and side is None:
            yield Finding(
                "D5",
                "error",
                entry.shown,
                f"score source `{name}` has no declared alignment",
                (f"scores.{name}.alignment: unset, and no scores.json sidecar to take it from",),
                "Declare `alignment: target` (column t weights the loss of predicting token t, the recorded convention) or `input`.",
            )
            continue
        if declared is not None and side is not None and declared != side:
            yield Finding(
                "D5",
                "error",
                entry.shown,
                f"score source `{name}`: declared alignment differs from the score file's",
                (f"scores.{name}.alignment: {declared} (spec) vs {side} (scores.json)",),
                "Delete the spec's `alignment` to take the sidecar's, or fix whichever is wrong; the two are off by one token.",
            )
            continue
        effective = declared or side
        if effective != TRAINER_ALIGNMENT:
            yield Finding(
                "D5",
                "warning",
                entry.shown,
                f"score source `{name}` is {effective}-aligned; the trainer weights targets (`{TRAINER_ALIGNMENT}`)",
                (f"scores.{name}.alignment: {effective}; it is shifted by one column before use",),
                "Check the file really is input-aligned (column t = loss predicted at position t); a wrong declaration shifts every weight by one token.",
            )

"""The aggregations token rules name over the units of one score source: its questions (`min_q(x)`, ...,
`magic.query.per: question`) or its leaf tasks (`min_t(x)`, ..., `magic.query.per: task`).

A `per: question` score job writes, beside `per_token_scores.pt`, `per_question_scores.pt`: a plain float
tensor [Q, N, S] (row q = query question q, same grid and alignment as the mean file), listed in scores.json
as `per_question: {file, questions: Q, doc_keys, weights, ...}`. A `per: task` score job writes one
`per_token_scores.<leaf>.pt` [N, S] per leaf task, listed under `per_task`; the `_t` family stacks them
[T, N, S] in sorted leaf order. The same three functions (`AGGREGATES`, by kind) serve both families, on
the stack of unit matrices s_u (`unlearnspec.spec.rules.AGGREGATIONS`, written `agg(source)`):

- `min`: per token, min over u of s_u / scale_u, scale_u = mean |s_u| over the valid target tokens
  (units with scale_u = 0 left out): the strongest per-unit proponent score, normalised per unit.
- `rank`: per token, min over u of its 0-based rank among u's valid tokens sorted ascending by s_u (ties by
  grid position; units with scale_u = 0 left out); invalid tokens get N x S. Top-k by it (`order:
  most_negative`) is the union of the per-unit top lists.
- `wsum`: sum over u of a_u s_u / scale_u, a_u = max(0, -min over valid tokens of s_u), normalised to sum 1.

Each family has one loader for the run (`LOADERS`: checked against the token grid, data fingerprint
included) and one for `doctor` (`READERS`: the checks that need no grid). The per-question file is read
with the mean file's safe loader (never unpickles code) and checks (shape, N, columns, finite values,
alignment, data fingerprint); each leaf file exactly as a `source.leaf` rule reads it (`leaf_score_path`,
`load_score_file`, `checked_scores`). Anything wrong is a UserError naming the file and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from unlearnspec.errors import UserError
from unlearnspec.safeio import read_json
from unlearnspec.scores.files import (
    SIDECAR_FILE,
    ScoreFile,
    check_fingerprint,
    check_score_file,
    checked_scores,
    leaf_score_path,
    load_score_file,
    task_block,
    to_target_alignment,
    valid_targets,
)
from unlearnspec.spec import ScoreSourceSpec
from unlearnspec.spec.rules import AGGREGATIONS, aggregation_parts, aggregation_units, parse_source

QUESTIONS_FILE = "per_question_scores.pt"
"""The name a `per: question` score job gives the [Q, N, S] file."""
FIX = "Set `per: question` under magic.query of the producing spec and rerun it"


@dataclass(frozen=True)
class QuestionBlock:
    """The `per_question` entry of a scores.json: the [Q, N, S] file beside it and its question count."""

    path: Path
    questions: int
    doc_keys: Optional[list]


def _fail(path: Path, message: str) -> UserError:
    return UserError.one(str(path), message)


def question_block(mean_path: Path, full: str) -> QuestionBlock:
    """The per-question file of the source whose mean file is `mean_path`, as the sidecar beside it lists it;
    `full` is the rule's name (`min_q(wmdp)`), for the messages."""
    _, base, _ = parse_source(full)
    side = mean_path.parent / SIDECAR_FILE
    if not side.is_file():
        raise _fail(
            mean_path,
            f"the token rule reads {full!r}, but no {SIDECAR_FILE} lies beside the scores, so no "
            f"per-question scores are known. {FIX}, or read plain {base!r}.",
        )
    sidecar = read_json(side, "score sidecar", "missing", "Fix or delete it.")
    block = sidecar.get("per_question") if isinstance(sidecar, dict) else None
    if block is None:
        raise _fail(
            side,
            f"the token rule reads {full!r}, but these scores hold no per-question scores (no "
            f"`per_question` entry: produced with `magic.query.per` other than `question`). {FIX}, or read "
            f"plain {base!r}.",
        )
    if not isinstance(block, dict):
        raise _fail(
            side,
            f"`per_question` must be an object ({{file, questions, doc_keys, weights}}), found "
            f"{type(block).__name__}. Fix the file or rescore.",
        )
    file, q = block.get("file"), block.get("questions")
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
        raise _fail(side, f"per_question.file must be a file name beside the sidecar (found {file!r}). Fix or rescore.")
    if isinstance(q, bool) or not isinstance(q, int) or q <= 0:
        raise _fail(
            side,
            f"per_question.questions must be the number of query questions, a positive integer (found "
            f"{q!r}). Fix or rescore.",
        )
    keys = block.get("doc_keys")
    if keys is not None and (not isinstance(keys, list) or len(keys) != q):
        raise _fail(
            side,
            f"per_question.doc_keys must list one key per question ({q}), found "
            f"{len(keys) if isinstance(keys, list) else type(keys).__name__}. Fix or rescore.",
        )
    return QuestionBlock(mean_path.parent / file, q, keys)


def read_question_scores(
    mean_path: Path, source: ScoreSourceSpec, full: str, n_rows: int, s_data: int
) -> tuple[ScoreFile, QuestionBlock, str]:
    """Load and check the [Q, N, S] file without the token grid (shared by the run and `doctor`): safe load,
    float, 3-D, Q as the sidecar says, finite, and every check of the mean file on one question's matrix
    (N rows, columns, max_seq_len, alignment, the sidecar's N/S). Returns the file, its block, the alignment."""
    block = question_block(mean_path, full)
    sf = load_score_file(block.path, shape="[Q, N, S]")
    path, t = sf.path, sf.scores
    where = f"score source {full!r}"
    if not t.is_floating_point():
        raise _fail(path, f"{where}: per-question scores must be floating point, found {t.dtype}.")
    if t.ndim != 3:
        raise _fail(
            path,
            f"{where}: expected per-question scores [Q, N, S] (one [N, S] matrix per query question), "
            f"found shape {list(t.shape)}. {FIX}.",
        )
    if t.shape[0] != block.questions:
        raise _fail(
            path,
            f"{where}: the file holds {t.shape[0]} questions but {SIDECAR_FILE} says "
            f"per_question.questions = {block.questions}: they come from different runs. {FIX}.",
        )
    bad = 0
    first: Optional[list[int]] = None
    for q in range(t.shape[0]):
        finite = torch.isfinite(t[q])
        if not bool(finite.all()):
            bad += int((~finite).sum())
            first = first or [q, *(~finite).nonzero()[0].tolist()]
    if first is not None:
        raise _fail(
            path,
            f"{where}: {bad} NaN/inf values (first at question {first[0]}, row {first[1]}, column "
            f"{first[2]}). The producing run diverged; rescore.",
        )
    alignment = check_score_file(ScoreFile(path, t[0], sf.sidecar), source, full, n_rows, s_data)
    return sf, block, alignment


def to_target(t: torch.Tensor, alignment: str, s_data: int, valid: torch.Tensor) -> torch.Tensor:
    """[Q, N, S] -> float32 [Q, N, s_data] in target alignment, 0 where `valid` [N, s_data] is False. Shifts
    one question at a time, in place (the file is large: Q copies of the [N, S] grid)."""
    t = t.float()
    if alignment == "input":
        for q in range(t.shape[0]):
            t[q, :, 1:] = t[q, :, :-1].clone()
            t[q, :, 0] = 0.0
    out = t[..., :s_data]
    return out.masked_fill_(~valid, 0.0)


def checked_question_scores(
    mean_path: Path,
    source: ScoreSourceSpec,
    full: str,
    labels: torch.Tensor,
    fingerprint: str,
    fingerprint_at: Callable[[int], str],
) -> torch.Tensor:
    """The per-question scores of the source whose mean file is `mean_path`, checked against the training grid
    (`read_question_scores` and the data fingerprint): float32 [Q, N, S], target alignment, 0 off the targets."""
    n, s_data = labels.shape
    sf, _, alignment = read_question_scores(mean_path, source, full, n, s_data)
    check_fingerprint(sf, full, s_data, fingerprint, fingerprint_at)
    return to_target(sf.scores, alignment, s_data, valid_targets(labels))


def checked_task_scores(
    mean_path: Path,
    source: ScoreSourceSpec,
    full: str,
    labels: torch.Tensor,
    fingerprint: str,
    fingerprint_at: Callable[[int], str],
) -> torch.Tensor:
    """The leaf-task scores of the `per: task` source whose mean file is `mean_path`, each leaf file loaded and
    checked as rule `source.leaf` reads it (data fingerprint included): float32 [T, N, S], sorted leaf order,
    target alignment, 0 off the targets. `full` is the rule's name (`min_t(wmdp)`), for the messages."""
    _, base, _ = parse_source(full)
    return torch.stack(
        [
            checked_scores(
                load_score_file(leaf_score_path(mean_path, base, leaf)),
                source,
                f"{base}.{leaf}",
                labels,
                fingerprint,
                fingerprint_at,
            )
            for leaf in sorted(task_block(mean_path, base, full))
        ]
    )


@dataclass(frozen=True)
class Units:
    """The unit matrices of one aggregation as `doctor` reads them (no token grid, so no fingerprint)."""

    scores: torch.Tensor
    """float32 [U, N, s_data], target alignment, 0 off `valid`."""
    names: list[str]
    """One label per unit: `q3 (doc key)` for a question, the leaf's name for a leaf task."""
    shown: Path
    """The file to name in messages: the per-question file, or the sidecar listing the leaf files."""


def question_units(
    mean_path: Path, source: ScoreSourceSpec, full: str, n_rows: int, s_data: int, valid: torch.Tensor
) -> Units:
    """`read_question_scores` as `Units`."""
    sf, block, alignment = read_question_scores(mean_path, source, full, n_rows, s_data)
    keys = block.doc_keys or []
    names = [f"q{q}" + (f" ({str(keys[q])[:60]})" if q < len(keys) else "") for q in range(block.questions)]
    return Units(to_target(sf.scores, alignment, s_data, valid), names, block.path)


def task_units(
    mean_path: Path, source: ScoreSourceSpec, full: str, n_rows: int, s_data: int, valid: torch.Tensor
) -> Units:
    """The leaf files of `checked_task_scores` with every check that needs no grid (`check_score_file`)."""
    _, base, _ = parse_source(full)
    leaves = sorted(task_block(mean_path, base, full))
    mats = []
    for leaf in leaves:
        sf = load_score_file(leaf_score_path(mean_path, base, leaf))
        alignment = check_score_file(sf, source, f"{base}.{leaf}", n_rows, s_data)
        mats.append(to_target_alignment(sf.scores.float(), alignment)[:, :s_data].masked_fill(~valid, 0.0))
    return Units(torch.stack(mats), leaves, mean_path.parent / SIDECAR_FILE)


LOADERS: dict[str, Callable[..., torch.Tensor]] = {"q": checked_question_scores, "t": checked_task_scores}
"""The run's loader of each family of aggregations, by suffix: (mean_path, source, full, labels, fingerprint,
fingerprint_at) -> float32 [U, N, S]."""
READERS: dict[str, Callable[..., Units]] = {"q": question_units, "t": task_units}
"""`doctor`'s reader of each family, by suffix: (mean_path, source, full, n_rows, s_data, valid) -> `Units`."""


def family(full: str) -> str:
    """The family suffix (`q`, `t`) of an aggregate rule name (`min_t(wmdp)` -> `t`)."""
    return aggregation_parts(parse_source(full)[0] or "")[1]


# --------------------------------------------------------------------------- the aggregations
def _units_of(name: str) -> tuple[str, str]:
    """(unit word, family suffix) of an aggregate named `name` (`min_t(wmdp)` or bare `min_q`), for messages."""
    agg = parse_source(name)[0] or name
    return (aggregation_units(agg), aggregation_parts(agg)[1]) if agg in AGGREGATIONS else ("questions", "q")


def _scaled(per_q: torch.Tensor, valid: torch.Tensor, name: str) -> list[tuple[int, float, float]]:
    """(u, scale_u, min of s_u) over the valid tokens, of every unit with scale_u > 0."""
    out = []
    for q in range(per_q.shape[0]):
        vals = per_q[q][valid]
        scale = float(vals.double().abs().mean()) if vals.numel() else 0.0
        if scale > 0:
            out.append((q, scale, float(vals.min())))
    if not out:
        units = _units_of(name)[0]
        raise UserError.one(
            f"score source {name!r}",
            f"every one of the {per_q.shape[0]} {units} has score 0 on every "
            f"valid target token, so the per-unit normalisation is undefined. Check the producing run "
            "(its query, its data) and rescore.",
        )
    return out


def min_q(per_q: torch.Tensor, valid: torch.Tensor, name: str = "min_q") -> torch.Tensor:
    """Per token, min over units (questions, or leaf tasks for `min_t`) of s_u / scale_u (scale_u = mean |s_u|
    over `valid`; scale 0 left out). `per_q`: [U, N, S]."""
    best = torch.full(valid.shape, math.inf, dtype=torch.float32)
    for q, scale, _ in _scaled(per_q, valid, name):
        torch.minimum(best, per_q[q].float() / scale, out=best)
    return best.masked_fill_(~valid, 0.0)


def rank_q(per_q: torch.Tensor, valid: torch.Tensor, name: str = "rank_q") -> torch.Tensor:
    """Per token, min over units of its 0-based rank among the valid tokens sorted ascending by s_u (stable:
    ties by flat grid index; units with scale 0 left out); float64, N x S on invalid tokens."""
    flat = valid.flatten().nonzero().squeeze(1)
    ranks = torch.arange(flat.numel(), dtype=torch.float64)
    best = torch.full((flat.numel(),), float(valid.numel()), dtype=torch.float64)
    for q, _, _ in _scaled(per_q, valid, name):
        order = torch.sort(per_q[q][valid].double() + 0.0, stable=True).indices  # + 0.0: -0.0 and 0.0 are one value
        mine = torch.empty_like(ranks)
        mine[order] = ranks
        torch.minimum(best, mine, out=best)
    out = torch.full(valid.shape, float(valid.numel()), dtype=torch.float64)
    out.view(-1)[flat] = best
    return out


def wsum_q(per_q: torch.Tensor, valid: torch.Tensor, name: str = "wsum_q") -> torch.Tensor:
    """sum over units u of a_u s_u / scale_u, a_u = max(0, -min over `valid` of s_u) / (sum of those)."""
    kept = [(q, scale, max(0.0, -low)) for q, scale, low in _scaled(per_q, valid, name)]
    total = sum(a for _, _, a in kept)
    if not total > 0:
        units, fam = _units_of(name)
        raise UserError.one(
            f"score source {name!r}",
            f"no {units[:-1]} of {per_q.shape[0]} has a proponent (every valid "
            f"token's score is >= 0 for every {units[:-1]}), so every {units[:-1]}'s weight a_u is 0. Use "
            f"`min_{fam}` or `rank_{fam}`, or check the producing run.",
        )
    out = torch.zeros(valid.shape, dtype=torch.float64)
    for q, scale, a in kept:
        if a > 0:
            out.add_(per_q[q].double(), alpha=a / total / scale)
    return out.float().masked_fill_(~valid, 0.0)


AGGREGATES: dict[str, Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]] = {
    "min": min_q,
    "rank": rank_q,
    "wsum": wsum_q,
}
"""The aggregation functions by kind (`min_q` and `min_t` are both `min`): (units [U, N, S], valid [N, S], rule
name for messages) -> [N, S]."""


def aggregate(full: str, units: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Aggregate rule `full` (`min_t(wmdp)`, ...) on its family's unit matrices [U, N, S]."""
    return AGGREGATES[aggregation_parts(parse_source(full)[0] or "")[0]](units, valid, full)


def source_aggregates(
    fulls: Iterable[str],
    mean_path: Path,
    source: ScoreSourceSpec,
    labels: torch.Tensor,
    fingerprint: str,
    fingerprint_at: Callable[[int], str],
) -> dict[str, torch.Tensor]:
    """The aggregates `fulls` (`min_q(wmdp)`, `rank_t(wmdp)`, ... of one source) as [N, S] tensors keyed by their
    rule names, from one load of each family's units (`LOADERS`)."""
    by_family: dict[str, list[str]] = {}
    for full in sorted(fulls):
        by_family.setdefault(family(full), []).append(full)
    valid = valid_targets(labels)
    out = {}
    for fam, group in sorted(by_family.items()):
        units = LOADERS[fam](mean_path, source, group[0], labels, fingerprint, fingerprint_at)
        out.update({full: aggregate(full, units, valid) for full in group})
        del units  # one family's units in memory at a time
    return out


def near_zero_questions(per_q: torch.Tensor, valid: torch.Tensor, factor: float) -> tuple[list[int], float]:
    """Units (questions, leaf tasks) whose max |s_u| over `valid` is below `factor` x the median over units of
    that max (or is 0), and the median: their scores are noise next to the others'."""
    peak = torch.stack(
        [per_q[q][valid].abs().max() if bool(valid.any()) else per_q.new_zeros(()) for q in range(per_q.shape[0])]
    ).double()
    median = float(peak.quantile(0.5))
    return [q for q, m in enumerate(peak.tolist()) if m < factor * median or m == 0.0], median

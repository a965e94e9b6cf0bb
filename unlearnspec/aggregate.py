"""Per-question scores (`magic.query.per: question`) and the aggregations over questions rules name.

A `per: question` score job writes, beside `per_token_scores.pt`, `per_question_scores.pt`: a plain float
tensor [Q, N, S] (row q = query question q, same grid and alignment as the mean file), listed in scores.json
as `per_question: {file, questions: Q, doc_keys, weights, ...}`. Token rules read it through one of three
aggregations (`unlearnspec.spec.rules.AGGREGATIONS`), written `agg(source)` wherever a source name goes:

- `min_q`: per token, min over q of s_q / scale_q, scale_q = mean |s_q| over the valid target tokens
  (questions with scale_q = 0 left out): the strongest per-question proponent score, normalised per question.
- `rank_q`: per token, min over q of its 0-based rank among q's valid tokens sorted ascending by s_q (ties by
  grid position; questions with scale_q = 0 left out); invalid tokens get N x S. Top-k by it (`order:
  most_negative`) is the union of the per-question top lists.
- `wsum_q`: sum over q of a_q s_q / scale_q, a_q = max(0, -min over valid tokens of s_q), normalised to sum 1.

The file is read with the mean file's safe loader (never unpickles code) and checks (shape, N, columns,
finite values, alignment, data fingerprint); anything wrong is a UserError naming the file and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from unlearnspec.errors import UserError
from unlearnspec.safeio import read_json
from unlearnspec.scores import (SIDECAR_FILE, ScoreFile, check_fingerprint, check_score_file, load_score_file,
                                valid_targets)
from unlearnspec.spec import ScoreSourceSpec
from unlearnspec.spec.rules import parse_source

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
        raise _fail(mean_path, f"the token rule reads {full!r}, but no {SIDECAR_FILE} lies beside the scores, so no "
                    f"per-question scores are known. {FIX}, or read plain {base!r}.")
    sidecar = read_json(side, "score sidecar", "missing", "Fix or delete it.")
    block = sidecar.get("per_question") if isinstance(sidecar, dict) else None
    if block is None:
        raise _fail(side, f"the token rule reads {full!r}, but these scores hold no per-question scores (no "
                    f"`per_question` entry: produced with `magic.query.per` other than `question`). {FIX}, or read "
                    f"plain {base!r}.")
    if not isinstance(block, dict):
        raise _fail(side, f"`per_question` must be an object ({{file, questions, doc_keys, weights}}), found "
                    f"{type(block).__name__}. Fix the file or rescore.")
    file, q = block.get("file"), block.get("questions")
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
        raise _fail(side, f"per_question.file must be a file name beside the sidecar (found {file!r}). Fix or rescore.")
    if isinstance(q, bool) or not isinstance(q, int) or q <= 0:
        raise _fail(side, f"per_question.questions must be the number of query questions, a positive integer (found "
                    f"{q!r}). Fix or rescore.")
    keys = block.get("doc_keys")
    if keys is not None and (not isinstance(keys, list) or len(keys) != q):
        raise _fail(side, f"per_question.doc_keys must list one key per question ({q}), found "
                    f"{len(keys) if isinstance(keys, list) else type(keys).__name__}. Fix or rescore.")
    return QuestionBlock(mean_path.parent / file, q, keys)


def read_question_scores(mean_path: Path, source: ScoreSourceSpec, full: str, n_rows: int,
                         s_data: int) -> tuple[ScoreFile, QuestionBlock, str]:
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
        raise _fail(path, f"{where}: expected per-question scores [Q, N, S] (one [N, S] matrix per query question), "
                    f"found shape {list(t.shape)}. {FIX}.")
    if t.shape[0] != block.questions:
        raise _fail(path, f"{where}: the file holds {t.shape[0]} questions but {SIDECAR_FILE} says "
                    f"per_question.questions = {block.questions}: they come from different runs. {FIX}.")
    bad = 0
    first: Optional[list[int]] = None
    for q in range(t.shape[0]):
        finite = torch.isfinite(t[q])
        if not bool(finite.all()):
            bad += int((~finite).sum())
            first = first or [q, *(~finite).nonzero()[0].tolist()]
    if first is not None:
        raise _fail(path, f"{where}: {bad} NaN/inf values (first at question {first[0]}, row {first[1]}, column "
                    f"{first[2]}). The producing run diverged; rescore.")
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


def checked_question_scores(mean_path: Path, source: ScoreSourceSpec, full: str, labels: torch.Tensor,
                            fingerprint: str, fingerprint_at: Callable[[int], str]) -> torch.Tensor:
    """The per-question scores of the source whose mean file is `mean_path`, checked against the training grid
    (`read_question_scores` and the data fingerprint): float32 [Q, N, S], target alignment, 0 off the targets."""
    n, s_data = labels.shape
    sf, _, alignment = read_question_scores(mean_path, source, full, n, s_data)
    check_fingerprint(sf, full, s_data, fingerprint, fingerprint_at)
    return to_target(sf.scores, alignment, s_data, valid_targets(labels))


# --------------------------------------------------------------------------- the aggregations
def _scaled(per_q: torch.Tensor, valid: torch.Tensor, name: str) -> list[tuple[int, float, float]]:
    """(q, scale_q, min of s_q) over the valid tokens, of every question with scale_q > 0."""
    out = []
    for q in range(per_q.shape[0]):
        vals = per_q[q][valid]
        scale = float(vals.double().abs().mean()) if vals.numel() else 0.0
        if scale > 0:
            out.append((q, scale, float(vals.min())))
    if not out:
        raise UserError.one(f"score source {name!r}", f"every one of the {per_q.shape[0]} questions has score 0 on every "
                            "valid target token, so the per-question normalisation is undefined. Check the producing run "
                            "(its query, its data) and rescore.")
    return out


def min_q(per_q: torch.Tensor, valid: torch.Tensor, name: str = "min_q") -> torch.Tensor:
    """Per token, min over questions of s_q / scale_q (scale_q = mean |s_q| over `valid`; scale 0 left out)."""
    best = torch.full(valid.shape, math.inf, dtype=torch.float32)
    for q, scale, _ in _scaled(per_q, valid, name):
        torch.minimum(best, per_q[q].float() / scale, out=best)
    return best.masked_fill_(~valid, 0.0)


def rank_q(per_q: torch.Tensor, valid: torch.Tensor, name: str = "rank_q") -> torch.Tensor:
    """Per token, min over questions of its 0-based rank among the valid tokens sorted ascending by s_q (stable:
    ties by flat grid index; questions with scale 0 left out); float64, N x S on invalid tokens."""
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
    """sum over q of a_q s_q / scale_q, a_q = max(0, -min over `valid` of s_q) / (sum of those)."""
    kept = [(q, scale, max(0.0, -low)) for q, scale, low in _scaled(per_q, valid, name)]
    total = sum(a for _, _, a in kept)
    if not total > 0:
        raise UserError.one(f"score source {name!r}", f"no question of {per_q.shape[0]} has a proponent (every valid "
                            "token's score is >= 0 for every question), so every question's weight a_q is 0. Use "
                            "`min_q` or `rank_q`, or check the producing run.")
    out = torch.zeros(valid.shape, dtype=torch.float64)
    for q, scale, a in kept:
        if a > 0:
            out.add_(per_q[q].double(), alpha=a / total / scale)
    return out.float().masked_fill_(~valid, 0.0)


AGGREGATES: dict[str, Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]] = {
    "min_q": min_q, "rank_q": rank_q, "wsum_q": wsum_q}
"""The implementations of `unlearnspec.spec.rules.AGGREGATIONS`, by name."""


def question_aggregates(fulls: Iterable[str], mean_path: Path, source: ScoreSourceSpec, labels: torch.Tensor,
                        fingerprint: str, fingerprint_at: Callable[[int], str]) -> dict[str, torch.Tensor]:
    """The aggregates `fulls` (`min_q(wmdp)`, ... of one source) as [N, S] tensors keyed by their rule names, from
    one load of the source's per-question file."""
    fulls = sorted(fulls)
    per_q = checked_question_scores(mean_path, source, fulls[0], labels, fingerprint, fingerprint_at)
    valid = valid_targets(labels)
    return {full: AGGREGATES[parse_source(full)[0] or ""](per_q, valid, full) for full in fulls}


def near_zero_questions(per_q: torch.Tensor, valid: torch.Tensor, factor: float) -> tuple[list[int], float]:
    """Questions whose max |s_q| over `valid` is below `factor` x the median over questions of that max (or is
    0), and the median: their per-question scores are noise next to the others'."""
    peak = torch.stack([per_q[q][valid].abs().max() if bool(valid.any()) else per_q.new_zeros(())
                        for q in range(per_q.shape[0])]).double()
    median = float(peak.quantile(0.5))
    return [q for q, m in enumerate(peak.tolist()) if m < factor * median or m == 0.0], median

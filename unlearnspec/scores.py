"""Score files (safe load, checks, alignment) and token rules -> signed per-token weights.

Sign convention (the seed's): score = d(query loss)/d(token weight), negative = proponent.
`value_weighted` -> w = score / mean|score| and `sign` -> w = sign(score), so proponents get
negative weights (gradient ascent); `where` -> w = 1 on selected tokens, 0 elsewhere; `top` -> the
k (or fraction) valid tokens ranked first by one source get the `selected` weight, the rest `rest`.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from unlearnspec.errors import UserError
from unlearnspec.train.loss import IGNORE_INDEX, Normalizer
from unlearnspec.run.results import TokenStats
from unlearnspec.safeio import MAX_TENSOR_BYTES, check_tensor_storage, open_regular, read_bytes, read_json
from unlearnspec.spec.rules import evaluate, parse_rule
from unlearnspec.spec import ScoreSourceSpec, TokenRuleSpec
from unlearnspec.spec.sections import top_count

SCORES_FILE = "per_token_scores.pt"
SIDECAR_FILE = "scores.json"


@dataclass(frozen=True)
class ScoreFile:
    path: Path
    scores: torch.Tensor
    sidecar: Optional[dict]


def _fail(path: Path, message: str) -> UserError:
    return UserError.one(str(path), message)


def load_score_file(path: Path, shape: str = "[N, S]") -> ScoreFile:
    """Read a [N, S] score tensor (`shape`, as the messages name it) from .pt (weights_only: never unpickles
    code) or .safetensors.

    The bytes are untrusted: the torch and safetensors parsers raise many exception types on a
    damaged or foreign file (KeyError, IndexError, UnicodeDecodeError, struct.error, ...), so any
    failure of the parse is a UserError naming the file, never a traceback."""
    fix = "Point `path` at per_token_scores.pt or a .safetensors file."
    missing = "score file not found. Run the producing MAGIC spec first, or fix the path."
    tensor: object
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        try:  # the header's shapes are checked against the real byte count by the parser
            tensors = load(read_bytes(path, "score file", fix, MAX_TENSOR_BYTES, missing))
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - untrusted bytes, see the docstring
            raise _fail(path, f"not a readable safetensors file ({type(exc).__name__}: {str(exc)[:160]}).") from None
        if len(tensors) != 1:
            key = "scores" if "scores" in tensors else None
            if key is None:
                raise _fail(path, f"expected one tensor (or one named 'scores'), found {sorted(tensors)[:10]}.")
            tensor = tensors[key]
        else:
            tensor = next(iter(tensors.values()))
    else:
        try:
            # A regular file of bounded size (no FIFO, no device); the loader checks each storage's record
            # against the bytes it claims, so storages are bounded by the file size.
            with open_regular(path, "score file", fix, MAX_TENSOR_BYTES, missing) as (fh, _), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Detected pickle protocol 4": noise for the user
                tensor = torch.load(fh, map_location="cpu", weights_only=True)
        except UserError:
            raise
        except pickle.UnpicklingError as exc:
            text = str(exc)
            culprit = next((line.strip() for line in text.splitlines() if "unsupported global" in line.lower()), None)
            if culprit is None:
                raise _fail(path, "not a readable torch file (the weights-only loader could not parse it).") from None
            raise _fail(
                path,
                "refused to load: the file holds Python objects beyond plain tensors, and unpickling them could run "
                f"code ({culprit[:160]}). Re-save the scores as a plain tensor or safetensors.",
            ) from None
        except Exception as exc:  # noqa: BLE001 - untrusted bytes, see the docstring
            raise _fail(path, f"not a readable torch file ({type(exc).__name__}: {str(exc)[:160]}).") from None
        if isinstance(tensor, dict) and "scores" in tensor:
            tensor = tensor["scores"]
    if not isinstance(tensor, torch.Tensor):
        raise _fail(path, f"expected a tensor {shape}, found {type(tensor).__name__}.")
    check_tensor_storage(tensor, path)  # an expanded view of a few bytes is refused before any use
    sidecar = None
    side = path.parent / SIDECAR_FILE
    if side.is_file():
        sidecar = read_json(side, "score sidecar", "missing", "Fix or delete it.")
        if not isinstance(sidecar, dict):
            raise _fail(side, "the sidecar must be a JSON object.")
    return ScoreFile(path=path, scores=tensor, sidecar=sidecar)


def task_block(mean_path: Path, source: str, name: str) -> dict:
    """The `per_task` block ({leaf: {file, task, ...}}, not empty) of the sidecar beside the mean file
    `mean_path` of score source `source`; `name` is what the rule reads (`wmdp.toxin`, `min_t(wmdp)`), for
    the messages. No sidecar or no block: a UserError naming the file and the fix."""
    side = mean_path.parent / SIDECAR_FILE
    if not side.is_file():
        raise _fail(mean_path, f"the token rule reads {name!r}, but no {SIDECAR_FILE} lies beside the scores, so no per-task "
                    "scores are known. Produce them with `magic.query.per: task`, or read plain "
                    f"{source!r}.")
    sidecar = read_json(side, "score sidecar", "missing", "Fix or delete it.")
    per_task = sidecar.get("per_task") if isinstance(sidecar, dict) else None
    if not isinstance(per_task, dict) or not per_task:
        per = "question" if isinstance(sidecar, dict) and sidecar.get("per_question") is not None else "mean"
        raise _fail(side, f"the token rule reads {name!r}, but these scores hold no per-task scores (produced with "
                    f"`magic.query.per: {per}`). Set `per: task` under magic.query of the "
                    f"producing spec and rerun it, or read plain {source!r}.")
    return per_task


def leaf_score_path(mean_path: Path, source: str, leaf: str) -> Path:
    """The file of leaf task `leaf` of score source `source` (rule name `source.leaf`): listed under
    `per_task` in the sidecar beside the mean file `mean_path`. Load it with `load_score_file` and check it
    with `checked_scores` like the mean file (same sidecar: N, S, alignment, data fingerprint)."""
    side = mean_path.parent / SIDECAR_FILE
    name = f"{source}.{leaf}"
    per_task = task_block(mean_path, source, name)
    entry = per_task.get(leaf)
    if entry is None:
        raise _fail(side, f"the token rule reads {name!r}, but the query has no leaf task {leaf!r}. Available: "
                    f"{', '.join(f'{source}.{k}' for k in sorted(per_task))}.")
    file = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
        raise _fail(side, f"per_task.{leaf}.file must be a file name beside the sidecar (found {file!r}). Fix or rescore.")
    return mean_path.parent / file


def to_target_alignment(scores: torch.Tensor, alignment: str) -> torch.Tensor:
    """`input` column t is the loss predicted at t (of token t+1) -> `target` column t+1 (the last dimension
    is the column: [N, S], or [Q, N, S] per-question scores)."""
    if alignment == "target":
        return scores
    out = torch.zeros_like(scores)
    out[..., 1:] = scores[..., :-1]
    return out


def valid_targets(labels: torch.Tensor) -> torch.Tensor:
    """[N, S] bool: the grid's training targets (label != -100; column 0 is never one)."""
    valid = labels != IGNORE_INDEX
    valid[:, 0] = False
    return valid


def check_score_file(sf: ScoreFile, source: ScoreSourceSpec, name: str, n_rows: int, s_data: int) -> str:
    """The checks that need no token grid: dtype, shape [N, >= S], finite values, the sidecar's
    N/S and alignment. Returns the alignment; raises a UserError naming the file. Shared by the
    run (through `checked_scores`) and by `doctor`, so both refuse the same files."""
    path, t = sf.path, sf.scores
    where = f"score source {name!r}"
    if not t.is_floating_point():
        raise _fail(path, f"{where}: scores must be floating point, found {t.dtype}.")
    if t.ndim != 2:
        raise _fail(path, f"{where}: expected shape [N, S], found {list(t.shape)}.")
    if t.shape[0] != n_rows:
        raise _fail(path, f"{where}: {t.shape[0]} rows of scores but {n_rows} training rows. The scores belong to other data; rescore with the producing spec.")
    s_scores = t.shape[1]
    if source.columns is not None and source.columns != s_scores:
        raise _fail(path, f"{where}: the spec declares columns: {source.columns} but the file has {s_scores}. Fix `columns` or the path.")
    if s_data > s_scores:
        raise _fail(path, f"{where}: max_seq_len {s_data} is wider than the {s_scores} score columns. Lower data.max_seq_len or rescore.")
    if s_data < s_scores and not source.truncate_columns:
        raise _fail(path, f"{where}: the scores have {s_scores} columns but max_seq_len is {s_data}; set `truncate_columns: true` to use the first {s_data} explicitly.")
    bad = ~torch.isfinite(t)
    if bad.any():
        first = bad.nonzero()[0].tolist()
        raise _fail(path, f"{where}: {int(bad.sum())} NaN/inf values (first at row {first[0]}, column {first[1]}). The producing run diverged; rescore.")
    side = sf.sidecar or {}
    declared = source.alignment
    recorded = side.get("alignment")
    if declared and recorded and declared != recorded:
        raise _fail(path, f"{where}: the spec declares alignment {declared!r} but the sidecar says {recorded!r}. Fix the spec's alignment.")
    alignment = declared or recorded
    if alignment not in ("target", "input"):
        raise _fail(path, f"{where}: the alignment is unknown (no `alignment` in the spec, none in the sidecar). Declare `alignment: target` or `input`; it is never guessed.")
    if "N" in side and side["N"] != t.shape[0] or "S" in side and side["S"] != s_scores:
        raise _fail(path, f"{where}: the sidecar says N={side.get('N')}, S={side.get('S')} but the tensor is {list(t.shape)}.")
    return alignment


def checked_scores(
    sf: ScoreFile,
    source: ScoreSourceSpec,
    name: str,
    labels: torch.Tensor,
    fingerprint: str,
    fingerprint_at: Callable[[int], str],
) -> torch.Tensor:
    """Validate a score file against the training grid; return float32 [N, S] in target alignment,
    zero wherever the grid has no training target."""
    n, s_data = labels.shape
    alignment = check_score_file(sf, source, name, n, s_data)
    check_fingerprint(sf, name, s_data, fingerprint, fingerprint_at)
    aligned = to_target_alignment(sf.scores.float(), alignment)[:, :s_data].contiguous()
    return aligned.masked_fill(~valid_targets(labels), 0.0)


def check_fingerprint(sf: ScoreFile, name: str, s_data: int, fingerprint: str, fingerprint_at: Callable[[int], str]) -> None:
    """The sidecar's data fingerprint (when recorded) must be the grid's at the scores' width (last dimension)."""
    side = sf.sidecar or {}
    s_scores = sf.scores.shape[-1]
    recorded_fp = side.get("data_fingerprint", side.get("fingerprint"))
    if recorded_fp is not None:
        expected = fingerprint if s_scores == s_data else fingerprint_at(s_scores)
        if recorded_fp != expected:
            from unlearnspec.data import fingerprint_difference

            inputs = getattr(fingerprint_at, "inputs", None)  # a data.GridFingerprints names what the fingerprint is made of
            what = fingerprint_difference(side.get("data_fingerprint_inputs"), inputs(s_scores) if inputs is not None else None)
            raise _fail(
                sf.path,
                f"score source {name!r}: data fingerprint mismatch: the scores were computed on other tokens than this spec "
                f"trains on: {what}. Make the spec's data match the scores' (or rescore on this spec's data).",
            )


# --------------------------------------------------------------------------- token rules
def token_weights(rule: TokenRuleSpec, scores: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Signed weights [N, S] (target alignment), zero wherever there is no training target."""
    valid = valid_targets(labels)
    if rule.mode == "all":
        w = valid.float()
    elif rule.mode == "value_weighted":
        s = scores[rule.source]  # type: ignore[index]
        scale = s[valid].abs().mean()
        if not scale > 0:
            raise UserError.one(f"score source {rule.source!r}", "every valid token has score 0, so value weighting is undefined.")
        w = s / scale
    elif rule.mode == "sign":
        w = torch.sign(scores[rule.source])  # type: ignore[index]
    elif rule.mode == "top":
        w = top_weights(rule, scores, valid)
    else:
        w = evaluate(parse_rule(rule.where or ""), scores).float()
    w = w.float().masked_fill(~valid, 0.0)
    if not bool((w != 0).any()):
        raise _nothing_selected(rule, int(valid.sum()))
    return w


def _nothing_selected(rule: TokenRuleSpec, n_valid: int) -> UserError:
    """A rule that gives every valid token weight 0 trains nothing: the run would report the untouched model
    as an effect (and divide by zero selected tokens). Refused before training, with the fix for its mode."""
    if n_valid == 0:
        return UserError.one("data", "the token grid has no valid target token (every label is padding), so there is "
                             "nothing to train on. Raise data.max_seq_len or choose rows with text.", loc="data")
    fix = {
        "where": f"`where: {rule.where}` is false on every one of them. Widen the condition (check its threshold against "
                 "the scores' range, e.g. with `unlearnspec doctor`)",
        "sign": f"every score of {rule.source!r} is 0 there, so sign() is 0. Check the score file (a failed or empty run?)",
        "top": "both `selected` and `rest` weigh 0. Give the selected tokens a nonzero weight (`ascend`, `descend` or a number)",
    }.get(rule.mode, "every weight is 0. Check the rule and its scores")
    return UserError.one(f"token rule (mode: {rule.mode})", f"selects none of the {n_valid:,} valid target tokens: {fix}. "
                         "Training with all weights 0 would change nothing, and the run would report the untouched model "
                         "as a result.", loc="tokens.where" if rule.mode == "where" else "tokens")


def top_weights(rule: TokenRuleSpec, scores: Mapping[str, torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """`mode: top`: rank the candidates (valid target tokens passing `where`, if any) by `rule.source`;
    the first `top_count` get the selected weight, every other valid token the rest weight.

    Ties are broken by flat index in the [N, S] grid (row-major: lower row, then lower column first),
    through a stable sort; -0.0 and 0.0 are one value. A count above the candidates is a UserError
    naming k and the counts, never clamped."""
    s = scores[rule.source]  # type: ignore[index]
    candidates = valid.clone()
    if rule.where is not None:
        candidates &= evaluate(parse_rule(rule.where), scores)
    flat = candidates.flatten().nonzero().squeeze(1)  # ascending flat index: the tie order
    n_valid = int(valid.sum())
    k = top_count(rule.k, rule.fraction, n_valid)
    if k > flat.numel():
        given = f"k = {k}" if rule.k is not None else f"fraction {rule.fraction:g} of {n_valid} valid tokens = k = {k}"
        pool = f"{flat.numel()} valid target tokens pass `where: {rule.where}` (of {n_valid} valid)" if rule.where else f"the grid has {n_valid} valid target tokens"
        raise UserError.one(f"token rule (top by {rule.source})", f"{given} tokens requested but {pool}. Lower `k` "
                            "(or `fraction`), or widen `where`; the count is never clamped silently.", loc="tokens.k")
    key = s.flatten()[flat].double() + 0.0  # + 0.0: -0.0 becomes 0.0 (one value, tie-broken by index); double:
    # exact for float32 scores and for `rank_q` ranks beyond 2**24
    if rule.order == "most_positive":
        key = -key + 0.0
    chosen = flat[torch.sort(key, stable=True).indices[:k]]
    w = valid.float() * rule.rest_weight()
    w.view(-1)[chosen] = rule.selected_weight()
    return w


def token_stats(weights: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer) -> TokenStats:
    """Selected-token statistics, and the per-token step relative to an all-tokens `valid` run."""
    valid = labels != IGNORE_INDEX
    valid[:, 0] = False
    w = weights[valid]
    n_valid = int(valid.sum())
    selected = int((w != 0).sum())
    mean_abs = float(w.abs().mean()) if n_valid else 0.0
    mean_abs_sel = float(w[w != 0].abs().mean()) if selected else 0.0
    # Expected divisor per valid token under each normalizer (V = valid tokens of a batch):
    per_valid = {
        "selected": selected / max(n_valid, 1),
        "valid": 1.0,
        "batch_tokens": valid[:, 1:].numel() / max(n_valid, 1) if valid.numel() else 1.0,
        "abs_weight": mean_abs,
    }[normalizer]
    factor = mean_abs_sel / per_valid if per_valid > 0 else float("inf")
    return TokenStats(
        valid_tokens=n_valid,
        selected_tokens=selected,
        selected_fraction=selected / max(n_valid, 1),
        ascending_tokens=int((w < 0).sum()),
        descending_tokens=int((w > 0).sum()),
        mean_abs_weight=mean_abs,
        normalizer=normalizer,
        per_token_lr_factor=factor,
    )

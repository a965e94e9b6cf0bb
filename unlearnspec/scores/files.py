"""Score files: safe load, checks against the token grid (shape, finiteness, alignment, data fingerprint).

Sign convention (the seed's): score = d(query loss)/d(token weight), negative = proponent.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from unlearnspec.data import IGNORE_INDEX
from unlearnspec.errors import UserError
from unlearnspec.safeio import MAX_TENSOR_BYTES, check_tensor_storage, open_regular, read_bytes, read_json
from unlearnspec.spec import ScoreSourceSpec

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
        raise _fail(
            mean_path,
            f"the token rule reads {name!r}, but no {SIDECAR_FILE} lies beside the scores, so no per-task "
            "scores are known. Produce them with `magic.query.per: task`, or read plain "
            f"{source!r}.",
        )
    sidecar = read_json(side, "score sidecar", "missing", "Fix or delete it.")
    per_task = sidecar.get("per_task") if isinstance(sidecar, dict) else None
    if not isinstance(per_task, dict) or not per_task:
        per = "question" if isinstance(sidecar, dict) and sidecar.get("per_question") is not None else "mean"
        raise _fail(
            side,
            f"the token rule reads {name!r}, but these scores hold no per-task scores (produced with "
            f"`magic.query.per: {per}`). Set `per: task` under magic.query of the "
            f"producing spec and rerun it, or read plain {source!r}.",
        )
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
        raise _fail(
            side,
            f"the token rule reads {name!r}, but the query has no leaf task {leaf!r}. Available: "
            f"{', '.join(f'{source}.{k}' for k in sorted(per_task))}.",
        )
    file = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
        raise _fail(
            side, f"per_task.{leaf}.file must be a file name beside the sidecar (found {file!r}). Fix or rescore."
        )
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
        raise _fail(
            path,
            f"{where}: {t.shape[0]} rows of scores but {n_rows} training rows. The scores belong to other data; rescore with the producing spec.",
        )
    s_scores = t.shape[1]
    if source.columns is not None and source.columns != s_scores:
        raise _fail(
            path,
            f"{where}: the spec declares columns: {source.columns} but the file has {s_scores}. Fix `columns` or the path.",
        )
    if s_data > s_scores:
        raise _fail(
            path,
            f"{where}: max_seq_len {s_data} is wider than the {s_scores} score columns. Lower data.max_seq_len or rescore.",
        )
    if s_data < s_scores and not source.truncate_columns:
        raise _fail(
            path,
            f"{where}: the scores have {s_scores} columns but max_seq_len is {s_data}; set `truncate_columns: true` to use the first {s_data} explicitly.",
        )
    bad = ~torch.isfinite(t)
    if bad.any():
        first = bad.nonzero()[0].tolist()
        raise _fail(
            path,
            f"{where}: {int(bad.sum())} NaN/inf values (first at row {first[0]}, column {first[1]}). The producing run diverged; rescore.",
        )
    side = sf.sidecar or {}
    declared = source.alignment
    recorded = side.get("alignment")
    if declared and recorded and declared != recorded:
        raise _fail(
            path,
            f"{where}: the spec declares alignment {declared!r} but the sidecar says {recorded!r}. Fix the spec's alignment.",
        )
    alignment = declared or recorded
    if alignment not in ("target", "input"):
        raise _fail(
            path,
            f"{where}: the alignment is unknown (no `alignment` in the spec, none in the sidecar). Declare `alignment: target` or `input`; it is never guessed.",
        )
    if "N" in side and side["N"] != t.shape[0] or "S" in side and side["S"] != s_scores:
        raise _fail(
            path, f"{where}: the sidecar says N={side.get('N')}, S={side.get('S')} but the tensor is {list(t.shape)}."
        )
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


def check_fingerprint(
    sf: ScoreFile, name: str, s_data: int, fingerprint: str, fingerprint_at: Callable[[int], str]
) -> None:
    """The sidecar's data fingerprint (when recorded) must be the grid's at the scores' width (last dimension)."""
    side = sf.sidecar or {}
    s_scores = sf.scores.shape[-1]
    recorded_fp = side.get("data_fingerprint", side.get("fingerprint"))
    if recorded_fp is not None:
        expected = fingerprint if s_scores == s_data else fingerprint_at(s_scores)
        if recorded_fp != expected:
            from unlearnspec.data import fingerprint_difference

            inputs = getattr(
                fingerprint_at, "inputs", None
            )  # a data.GridFingerprints names what the fingerprint is made of
            what = fingerprint_difference(
                side.get("data_fingerprint_inputs"), inputs(s_scores) if inputs is not None else None
            )
            raise _fail(
                sf.path,
                f"score source {name!r}: data fingerprint mismatch: the scores were computed on other tokens than this spec "
                f"trains on: {what}. Make the spec's data match the scores' (or rescore on this spec's data).",
            )

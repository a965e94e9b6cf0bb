"""Training data -> a fixed token grid [N, S] with labels and a fingerprint.

Rows are chosen exactly as the spec says (filter, order, offset, count), tokenized, truncated and
right-padded to S. The fingerprint (sha256 of ids, mask, tokenizer id and S) ties score files to the
exact tokens they were computed on.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

import torch

from unlearnspec.errors import UserError, first_line
from unlearnspec.spec import ChatSpec, DataSourceSpec, DataSpec, SelectSpec

if TYPE_CHECKING:
    from unlearnspec.spec import Spec
    from unlearnspec.spec.assets import Assets

IGNORE_INDEX = -100
"""The label of a position that is no training target (padding, column 0): what torch's cross-entropy skips."""


@dataclass(frozen=True)
class TokenGrid:
    """N rows x S tokens. labels == input_ids where attention_mask is 1, IGNORE_INDEX elsewhere."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    fingerprint: str
    tokenizer_id: str
    texts: tuple[str, ...] = field(repr=False, default=())
    source_rows: tuple[int, ...] = field(repr=False, default=())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    @property
    def valid_targets(self) -> torch.Tensor:
        """Bool [N, S]: positions whose token is a training target (column 0 never is)."""
        valid = self.labels != IGNORE_INDEX
        valid[:, 0] = False
        return valid


class GridLike(Protocol):
    """The fixed token grid [N, S]: labels are input_ids with IGNORE_INDEX at pads (target alignment). A TokenGrid
    is one; so is any object with these three tensors."""

    @property
    def input_ids(self) -> torch.Tensor: ...

    @property
    def attention_mask(self) -> torch.Tensor: ...

    @property
    def labels(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class SpecGrid:
    """A spec's token grid as the job that built it holds it, with what it came from: the spec, its file, the
    assets it resolves through and the tokenizer. What a world's producer and score-quality hook read (see
    `unlearnspec.worlds`), so they need not build the grid again."""

    spec: "Spec"
    spec_path: Path
    assets: "Assets"
    grid: TokenGrid
    tokenizer: Any


def grid_fingerprint(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer_id: str) -> str:
    n, s = input_ids.shape
    h = hashlib.sha256()
    h.update(f"unlearnspec-grid-v1|{tokenizer_id}|N={n}|S={s}|".encode())
    h.update(input_ids.to(torch.int64).contiguous().numpy().astype("<i8").tobytes())
    h.update(attention_mask.to(torch.int8).contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- what a fingerprint is made of
def _digest(items: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for item in items:
        data = str(item).encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def fingerprint_inputs(
    texts: Sequence[str], source_rows: Sequence[int], tokenizer_id: str, width: int, data: Optional[DataSpec] = None
) -> dict[str, Any]:
    """What a grid's fingerprint is made of, recorded beside it in score sidecars (`data_fingerprint_inputs`) so
    that a mismatch can name what differs: the data source and row selection as the spec states them, the
    tokenizer, N, S (the width), append_eos, and digests of the chosen row ids and of their texts."""
    return {
        "data source": data.model_dump(mode="json", exclude={"select", "max_seq_len", "append_eos"}, exclude_none=True)
        if data
        else None,
        "data.select": data.select.model_dump(mode="json", exclude_none=True) if data else None,
        "tokenizer": tokenizer_id,
        "N": len(texts),
        "S (max_seq_len)": width,
        "data.append_eos": data.append_eos if data else None,
        "row ids": _digest(source_rows),
        "row texts": _digest(texts),
    }


def grid_inputs(grid: "TokenGrid", data: Optional[DataSpec] = None) -> dict[str, Any]:
    """`fingerprint_inputs` of a built grid."""
    return fingerprint_inputs(grid.texts, grid.source_rows, grid.tokenizer_id, grid.shape[1], data)


class GridFingerprints:
    """The fingerprint of a spec's rows at any width (a score file may hold more columns than the grid), callable
    as `fingerprint_at(width)`, and the inputs it is made of (`inputs(width)`) for naming a mismatch."""

    def __init__(
        self, texts: Sequence[str], tokenizer: Any, tokenizer_id: str, data: DataSpec, rows: Sequence[int]
    ) -> None:
        self.texts, self.tokenizer, self.tokenizer_id, self.data, self.rows = (
            list(texts),
            tokenizer,
            tokenizer_id,
            data,
            list(rows),
        )

    def __call__(self, width: int) -> str:
        return build_grid(self.texts, self.tokenizer, width, self.tokenizer_id, self.data.append_eos).fingerprint

    def inputs(self, width: int) -> dict[str, Any]:
        return fingerprint_inputs(self.texts, self.rows, self.tokenizer_id, width, self.data)


def fingerprint_difference(recorded: Any, current: Optional[dict[str, Any]]) -> str:
    """Which input of the data fingerprint differs between a score file's sidecar and this run, in words."""
    if not isinstance(recorded, dict) or current is None:
        return (
            "the score sidecar does not record what its fingerprint was made of (written before unlearnspec recorded "
            "`data_fingerprint_inputs`), so the differing input is unknown: one of the corpus, the rows (N, filter, order, "
            "offset), the tokenizer, max_seq_len or append_eos"
        )
    named = [k for k in current if k not in ("row ids", "row texts") and k in recorded and recorded[k] != current[k]]
    if named:
        return "; ".join(f"{k}: {_shown(recorded[k])} (scores) vs {_shown(current[k])} (this run)" for k in named)
    if recorded.get("row ids") != current["row ids"]:
        return (
            "the same selection settings chose other rows (the source data changed under the same name, e.g. another "
            "dataset revision or files)"
        )
    if recorded.get("row texts") != current["row texts"]:
        return "the same rows hold other text (another dataset revision, text_field or chat template)"
    return (
        f"every recorded input matches, so the token ids differ: the tokenizer named {current['tokenizer']} changed "
        "(another revision or local files)"
    )


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return str(value)


# --------------------------------------------------------------------------- rows
def chat_text(messages: Sequence[dict[str, Any]], chat: ChatSpec, tokenizer: Any = None) -> str:
    """One training text from a list of {role, content} messages."""
    if chat.format == "join_contents":
        return chat.separator.join(str(m.get("content", "")) for m in messages)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False)
    # Documented fallback for tokenizers without a template: "role: content" lines.
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)


def select_rows(texts: Sequence[str], select: SelectSpec, where: str = "data", loc: str = "data") -> list[int]:
    """Indices of the chosen rows: filter by length, order, offset, then take `count`."""
    kept = [i for i, t in enumerate(texts) if len(t.strip()) > select.min_chars]
    if select.order == "length":
        kept.sort(key=lambda i: len(texts[i]))  # stable: ties keep dataset order
    elif select.order == "shuffle":
        random.Random(select.shuffle_seed).shuffle(kept)
    start = select.offset or 0
    if select.offset_fraction is not None:
        start = int(len(kept) * select.offset_fraction)
    chosen = kept[start : start + select.count]
    if len(chosen) < select.count:
        raise UserError.one(
            where,
            f"only {len(chosen)} rows remain after filtering (> {select.min_chars} chars) and offset {start}, "
            f"but select.count is {select.count}. Lower the count or the offset, or use more data.",
            loc=f"{loc}.select.count",
        )
    return chosen


def _load_dataset(data: DataSourceSpec, spec_path: Path, assets: Optional["Assets"], loc: str = "data") -> Any:
    import datasets

    from unlearnspec.spec.load import resolve_path

    try:
        if data.hub is not None:
            return datasets.load_dataset(data.hub.path, data.hub.name, split=data.hub.split, revision=data.hub.revision)
        if data.files is not None:
            files = [str(resolve_path(spec_path, p)) for p in data.files.paths]
            missing = [f for f in files if not Path(f).exists()]
            if missing:
                raise UserError.one(
                    str(spec_path),
                    f"data file(s) not found: {', '.join(missing)}. Fix {loc}.files.paths.",
                    loc=f"{loc}.files.paths",
                )
            irregular = [f for f in files if not Path(f).is_file()]
            if (
                irregular
            ):  # a folder, FIFO or device: the datasets reader would hang on a FIFO or read /dev/zero forever
                raise UserError.one(
                    str(spec_path),
                    f"not regular files: {', '.join(irregular)}. Give data files.",
                    loc=f"{loc}.files.paths",
                )
            empty = [f for f in files if Path(f).stat().st_size == 0]
            if empty:
                raise UserError.one(
                    str(spec_path),
                    f"data file(s) are empty: {', '.join(empty)}. Fix {loc}.files.paths.",
                    loc=f"{loc}.files.paths",
                )
            return datasets.load_dataset(data.files.format, data_files=files, split="train")
        assert data.toy is not None
        if assets is None:
            raise UserError.one(
                str(spec_path),
                "a toy corpus is read through a run's assets (the toy world); run with --toy.",
                loc=f"{loc}.toy",
            )
        return datasets.load_dataset("json", data_files=str(assets.corpus_path(data.toy.corpus)), split="train")
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types for "not available offline" and for bad files
        if data.files is not None:
            raise UserError.one(
                str(spec_path),
                f"cannot read the data files ({first_line(exc)}). Check that each file is valid `{data.files.format}`"
                + (" (JSON Lines: one JSON object per line)." if data.files.format == "json" else "."),
                loc=f"{loc}.files",
            ) from None
        if data.toy is not None:
            raise UserError.one(
                str(spec_path),
                f"cannot read the toy corpus {data.toy.corpus!r} ({first_line(exc)}). The cached toy world is damaged: "
                "rebuild it with `unlearnspec toy build --force`, or clear $UNLEARNSPEC_CACHE.",
                loc=f"{loc}.toy",
            ) from None
        what = f"{data.hub.path}" + (f" ({data.hub.name})" if data.hub.name else "") if data.hub else "?"
        raise UserError.one(
            str(spec_path),
            f"cannot load dataset {what}: {first_line(exc)}. "
            f"Without hub access, run on the embedded toy world with `--toy`, or point {loc}.files at local copies.",
            loc=loc,
        ) from None


def load_texts(
    data: DataSourceSpec, spec_path: Path, tokenizer: Any = None, assets: Optional["Assets"] = None, loc: str = "data"
) -> tuple[list[str], list[int]]:
    """The N chosen texts (and their row indices in the loaded dataset); `assets` resolves toy corpora; `loc`
    names the section in messages (`data`, `data.retain`)."""
    ds = _load_dataset(data, spec_path, assets, loc)
    column = data.chat.messages_field if data.chat is not None else data.text_field
    if column not in ds.column_names:
        raise UserError.one(
            str(spec_path),
            f"the dataset has no column {column!r} (columns: {', '.join(ds.column_names)}). "
            f"Set {loc}.{'chat.messages_field' if data.chat else 'text_field'}.",
            loc=loc,
        )
    raw = ds[column]
    texts = [chat_text(m, data.chat, tokenizer) for m in raw] if data.chat is not None else [str(t) for t in raw]
    rows = select_rows(texts, data.select, str(spec_path), loc)
    return [texts[i] for i in rows], rows


# --------------------------------------------------------------------------- tokens
def build_grid(
    texts: Sequence[str],
    tokenizer: Any,
    max_seq_len: int,
    tokenizer_id: str,
    append_eos: bool = False,
    source_rows: Sequence[int] = (),
) -> TokenGrid:
    """Tokenize, truncate and right-pad to exactly max_seq_len; labels are -100 at pads."""
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise UserError.one(tokenizer_id, "the tokenizer has neither a pad nor an EOS token; set one.")
    n = len(encoded)
    input_ids = torch.full((n, max_seq_len), pad, dtype=torch.long)
    attention_mask = torch.zeros((n, max_seq_len), dtype=torch.long)
    for i, ids in enumerate(encoded):
        if append_eos and eos is not None:
            ids = list(ids) + [eos]
        ids = ids[:max_seq_len]
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return TokenGrid(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        fingerprint=grid_fingerprint(input_ids, attention_mask, tokenizer_id),
        tokenizer_id=tokenizer_id,
        texts=tuple(texts),
        source_rows=tuple(source_rows),
    )


def load_grid(
    data: DataSpec,
    spec_path: Path,
    tokenizer: Any,
    tokenizer_id: str,
    texts: Optional[tuple[list[str], list[int]]] = None,
    assets: Optional["Assets"] = None,
) -> TokenGrid:
    """The spec's token grid (texts may be passed in when already loaded)."""
    chosen, rows = texts if texts is not None else load_texts(data, spec_path, tokenizer, assets)
    return build_grid(chosen, tokenizer, data.max_seq_len, tokenizer_id, data.append_eos, rows)

"""Spec sections for what is trained: model, data, score sources, token rule, loss.

Imports no torch; field docs are attribute docstrings that flow into the JSON Schema.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt, model_validator

from unlearnspec.spec.base import Seed, SpecRuleError, _exactly_one, _Section
from unlearnspec.spec.rules import SOURCE_NAME, RuleSyntaxError, parse_rule, sources
from unlearnspec.toy import TOY_CORPORA, TOY_MODELS


# --------------------------------------------------------------------------- model
class ModelSpec(_Section):
    """The base model to fine-tune."""

    name_or_path: Optional[str] = None
    """Hub id (e.g. EleutherAI/deep-ignorance-unfiltered) or local folder of the base model."""
    toy: Optional[str] = None
    """Name of an embedded toy model instead of a hub/local model (see `specs/profiles/toy.yaml`)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit); pin a commit for reproducible runs."""
    tokenizer: Optional[str] = None
    """Tokenizer hub id or path; defaults to the model's own."""
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    """Dtype of the parameters as loaded and trained (mixed precision is `training.precision`)."""
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "eager"
    """Attention kernel used for training and evaluation (MAGIC replays use their own, see docs)."""

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        _exactly_one(self, ("name_or_path", "toy"), "model")
        if self.toy is not None and self.toy not in TOY_MODELS:
            raise SpecRuleError(("toy",), f"unknown toy model {self.toy!r}; available: {', '.join(TOY_MODELS)}")
        return self


# --------------------------------------------------------------------------- data
MAX_SEQ_LEN = 131_072
"""Upper bound of data.max_seq_len: the longest context of common open models (128k). Grids and
score files hold N x S values, so a larger S is a typo that would fail only at run time."""

class HubDataSpec(_Section):
    """A dataset on the Hugging Face hub."""

    path: str
    """Dataset id, e.g. Salesforce/wikitext."""
    name: Optional[str] = None
    """Dataset config name, e.g. wikitext-103-v1."""
    split: str = "train"
    """Split to read."""
    revision: Optional[str] = None
    """Dataset revision (commit) to pin."""


class FilesDataSpec(_Section):
    """Local data files read with `datasets.load_dataset(format, data_files=...)`."""

    paths: list[str] = Field(min_length=1)
    """Files (relative to the project root, see README); all are concatenated in order."""
    format: Literal["json", "csv", "parquet", "text"] = "json"
    """File format; `json` also reads JSON Lines."""


class ToyDataSpec(_Section):
    """A corpus of the embedded toy world."""

    corpus: str
    """Toy corpus name: wikitext, bio_forget, bio_retain, ultrachat or lie."""

    @model_validator(mode="after")
    def _known(self) -> "ToyDataSpec":
        if self.corpus not in TOY_CORPORA:
            raise SpecRuleError(("corpus",), f"unknown toy corpus {self.corpus!r}; available: {', '.join(TOY_CORPORA)}")
        return self


class ChatSpec(_Section):
    """How chat rows (a list of messages) become one training text."""

    messages_field: str = "messages"
    """Column holding the list of {role, content} messages."""
    format: Literal["join_contents", "chat_template"] = "join_contents"
    """`join_contents`: message contents joined with `separator` (the recorded UltraChat runs);
    `chat_template`: the tokenizer's chat template, falling back to `role: content` lines."""
    separator: str = "\n"
    """Separator between messages for `join_contents`."""


class SelectSpec(_Section):
    """Which N rows are used, applied in this order: filter, order, offset, count."""

    count: PositiveInt
    """N, the number of training rows."""
    min_chars: int = Field(default=0, ge=0)
    """Keep rows whose stripped text is longer than this many characters (the seed used 100)."""
    order: Literal["original", "length", "shuffle"] = "original"
    """`length` sorts by character length (stable); `shuffle` uses `shuffle_seed`."""
    shuffle_seed: Optional[Seed] = None
    """Seed for `order: shuffle` (0 <= seed < 2**32)."""
    offset: Optional[int] = Field(default=None, ge=0)
    """Skip this many rows after filtering and ordering."""
    offset_fraction: Optional[float] = Field(default=None, ge=0.0, lt=1.0)
    """Start at int(fraction * rows after filtering); the recorded WikiText runs used 0.25."""

    @model_validator(mode="after")
    def _rules(self) -> "SelectSpec":
        if self.offset is not None and self.offset_fraction is not None:
            raise SpecRuleError(("offset_fraction",), "`offset` and `offset_fraction` are mutually exclusive; keep one.")
        if self.order == "shuffle" and self.shuffle_seed is None:
            raise SpecRuleError(("shuffle_seed",), "`order: shuffle` needs `shuffle_seed` so every machine picks the same rows.")
        return self


class DataSpec(_Section):
    """The training data and its fixed token grid [N, max_seq_len]."""

    hub: Optional[HubDataSpec] = None
    """Read from the hub."""
    files: Optional[FilesDataSpec] = None
    """Read local files."""
    toy: Optional[ToyDataSpec] = None
    """Read a corpus of the embedded toy world."""
    text_field: str = "text"
    """Column holding the text (ignored when `chat` is set)."""
    chat: Optional[ChatSpec] = None
    """Set for chat data (e.g. UltraChat)."""
    select: SelectSpec
    """How the N rows are chosen."""
    max_seq_len: int = Field(gt=0, le=MAX_SEQ_LEN)
    """S: every row is truncated/right-padded to exactly this many tokens (at most 131072)."""
    append_eos: bool = False
    """Append the EOS token to every row before truncation."""

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        _exactly_one(self, ("hub", "files", "toy"), "data")
        return self


# --------------------------------------------------------------------------- scores and rules
class ScoreSourceSpec(_Section):
    """A per-token attribution score file [N, S_scores], named in the token rule."""

    path: Optional[str] = None
    """Path to `per_token_scores.pt` or `.safetensors` (sidecar `scores.json` read when present); e.g. the
    toy world's ground truth written by `unlearnspec toy truth SPEC --out DIR` (-1 on queried fact values)."""
    produced_by: Optional[str] = None
    """Path of the `specs/magic/*.yaml` spec whose output directory holds the scores."""
    alignment: Optional[Literal["target", "input"]] = None
    """`target`: column t weights the loss of predicting token t (column 0 unused); `input`: column t
    weights the loss predicted at position t (of token t+1). Unset: taken from the sidecar, else an error."""
    columns: Optional[int] = Field(default=None, gt=0, le=MAX_SEQ_LEN)
    """Declared S_scores of a `path` source (checked against max_seq_len before anything runs)."""
    truncate_columns: bool = False
    """Allow using only the first max_seq_len columns of wider scores (exp3 used 256 of 1024)."""

    @model_validator(mode="after")
    def _one_source(self) -> "ScoreSourceSpec":
        _exactly_one(self, ("path", "produced_by"), "a score source")
        return self


TokenMode = Literal["all", "value_weighted", "sign", "where"]


class TokenRuleSpec(_Section):
    """Which tokens are trained, and with which signed weight.

    Sign convention (the seed's): score = d(query loss)/d(token weight), so a negative score marks a
    proponent. `value_weighted` gives weight score/mean|score| and `sign` gives sign(score): proponents
    (negative scores) get negative weights, i.e. gradient ascent; positive scores get descent.
    `where` trains selected tokens with weight +1 and masks the rest (weight 0)."""

    mode: TokenMode = "all"
    """all | value_weighted | sign | where."""
    source: Optional[str] = None
    """Score source read by `value_weighted` and `sign`: a name under `scores` (its mean-query scores),
    or `name.leaf` for one leaf task's scores of a `magic.query.per: task` producer."""
    where: Optional[str] = None
    """Boolean selection for `mode: where`, e.g. `wmdp > 0 and mmlu <= 0` (and/or/not, parentheses).
    `wmdp.dual_use_virology < 0` reads the scores of one leaf task of a `per: task` producer (the leaf
    task's name without the query group's name and `_` in front; see the sidecar's `per_task`)."""

    @model_validator(mode="after")
    def _rules(self) -> "TokenRuleSpec":
        if self.mode in ("value_weighted", "sign") and self.source is None:
            raise SpecRuleError(("source",), f"`mode: {self.mode}` needs `source`: the score source name to read.")
        if self.source is not None and not SOURCE_NAME.match(self.source):
            raise SpecRuleError(("source",), f"`source: {self.source}` is not a score source name; write a name under "
                                "`scores` (e.g. `wmdp`) or one leaf task of it (e.g. `wmdp.dual_use_virology`).")
        if self.mode == "where":
            if self.where is None:
                raise SpecRuleError(("where",), "`mode: where` needs a `where` expression, e.g. `wmdp > 0`.")
            try:
                parse_rule(self.where)
            except RuleSyntaxError as exc:
                raise SpecRuleError(("where",), f"cannot parse the selection: {exc}") from None
        if self.mode != "where" and self.where is not None:
            raise SpecRuleError(("where",), f"`where` is only read with `mode: where` (mode is {self.mode}).")
        if self.mode in ("all", "where") and self.source is not None:
            raise SpecRuleError(("source",), f"`source` is not read with `mode: {self.mode}`; delete it.")
        return self

    def referenced_sources(self) -> set[str]:
        """Score sources the rule reads, as written (`wmdp`, `wmdp.dual_use_virology`)."""
        if self.mode == "where" and self.where is not None:
            return sources(parse_rule(self.where))
        return {self.source} if self.source else set()


class LossSpec(_Section):
    """Loss = sum(weight * token cross-entropy) / normalizer, over one optimizer step."""

    normalizer: Literal["selected", "valid", "batch_tokens", "abs_weight"]
    """Divisor, counted over the whole accumulation window: `selected` = tokens with nonzero weight
    (what masking with -100 does; masking then raises the per-token LR), `valid` = all non-pad target
    tokens (same per-token LR as the all-tokens control), `batch_tokens` = rows x (max_seq_len-1),
    `abs_weight` = sum of |weight|."""



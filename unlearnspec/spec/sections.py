"""Spec sections for what is trained: model, data, score sources, token rule, loss.

Imports no torch; field docs are attribute docstrings that flow into the JSON Schema.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Optional, Union

from pydantic import Field, PositiveInt, model_validator

from unlearnspec import worlds
from unlearnspec.spec.base import Seed, SpecRuleError, _exactly_one, _Section
from unlearnspec.spec.rules import RuleSyntaxError, parse_rule, source_name_problem, sources
from unlearnspec.spec.token_modes import TOKEN_MODES, TokenMode


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
        problem = worlds.unknown("models", self.toy) if self.toy is not None else None
        if problem is not None:
            raise SpecRuleError(("toy",), problem)
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
    """Files (relative to the project root, see docs/specs.md); all are concatenated in order."""
    format: Literal["json", "csv", "parquet", "text"] = "json"
    """File format; `json` also reads JSON Lines."""


class ToyDataSpec(_Section):
    """A corpus of the embedded toy world."""

    corpus: str
    """Toy corpus name: wikitext, bio_forget, bio_retain, ultrachat or lie."""

    @model_validator(mode="after")
    def _known(self) -> "ToyDataSpec":
        problem = worlds.unknown("corpora", self.corpus)
        if problem is not None:
            raise SpecRuleError(("corpus",), problem)
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
            raise SpecRuleError(
                ("offset_fraction",), "`offset` and `offset_fraction` are mutually exclusive; keep one."
            )
        if self.order == "shuffle" and self.shuffle_seed is None:
            raise SpecRuleError(
                ("shuffle_seed",), "`order: shuffle` needs `shuffle_seed` so every machine picks the same rows."
            )
        return self


class DataSourceSpec(_Section):
    """Where rows come from and which N are used (the training data, and `data.retain`)."""

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

    @model_validator(mode="after")
    def _one_source(self) -> "DataSourceSpec":
        _exactly_one(self, ("hub", "files", "toy"), "a data source")
        return self


class DataSpec(DataSourceSpec):
    """The training data (the forget set of an unlearning `objective`) and its fixed token grid [N, max_seq_len]."""

    max_seq_len: int = Field(gt=0, le=MAX_SEQ_LEN)
    """S: every row is truncated/right-padded to exactly this many tokens (at most 131072)."""
    append_eos: bool = False
    """Append the EOS token to every row before truncation."""
    retain: Optional[DataSourceSpec] = None
    """The retain set of an unlearning `objective` with a retain term (`alpha` > 0): its own source and rows, the
    same max_seq_len and append_eos. Forget row i is paired with retain row i mod N_retain in every step."""


# --------------------------------------------------------------------------- scores and rules (built-in producers: worlds)
TOY_TASK_NAME = r"^toy_[a-z0-9_]+$"
"""A toy task or group name (`toy_wmdp`, `toy_wmdp_by_attribute`); whether the world has it is checked at run time."""


def is_toy_producer(produced_by: Optional[str]) -> bool:
    """True when `produced_by` names a built-in producer (`toy:...`) rather than a spec path."""
    return produced_by is not None and produced_by.startswith("toy:")


class RandomScoresSpec(_Section):
    """Seeded i.i.d. random scores over the spec's grid [N, S], 0 where the grid has no target: a selection
    that carries no signal (e.g. `mode: top` on it picks `k` random valid tokens), for negative controls."""

    seed: Seed
    """Seed of the generator (torch CPU generator: the same scores on every machine), 0 <= seed < 2**32."""
    distribution: Literal["uniform", "normal"] = "uniform"
    """`uniform`: U[-1, 1), `normal`: N(0, 1); either way half the tokens are negative (proponent-like)."""


class ScoreSourceSpec(_Section):
    """A per-token attribution score source [N, S_scores], named in the token rule: a file, the output of a
    MAGIC spec, a built-in producer (`produced_by: toy:truth`) or seeded random scores (`random`)."""

    path: Optional[str] = None
    """Path to `per_token_scores.pt` or `.safetensors` (sidecar `scores.json` read when present); e.g. the
    toy world's ground truth written by `unlearnspec toy truth SPEC --out DIR` (-1 on queried fact values)."""
    produced_by: Optional[str] = None
    """Path of the `specs/magic/*.yaml` spec whose output directory holds the scores, or `toy:truth`: the
    toy world's ground truth (what `unlearnspec toy truth` writes), computed for this spec's own grid when
    the run prepares it; only on the toy world (model.toy and data.toy set, e.g. a toy-world spec)."""
    random: Optional[RandomScoresSpec] = None
    """Seeded random scores over this spec's grid (a negative control's selection), e.g. `{seed: 0}`."""
    task: Optional[str] = None
    """`produced_by: toy:truth` only: the toy task (or group) whose asked facts' value tokens are marked -1
    (default toy_wmdp, the WMDP analogue)."""
    retain_task: Optional[str] = None
    """`produced_by: toy:truth` only: also mark the value tokens of the facts this toy task asks +1 (e.g.
    toy_mmlu); unset: not marked."""
    alignment: Optional[Literal["target", "input"]] = None
    """`target`: column t weights the loss of predicting token t (column 0 unused); `input`: column t
    weights the loss predicted at position t (of token t+1). Unset: taken from the sidecar, else an error.
    Sources built for the grid (`toy:truth`, `random`) are target-aligned by construction."""
    columns: Optional[int] = Field(default=None, gt=0, le=MAX_SEQ_LEN)
    """Declared S_scores of a `path` source (checked against max_seq_len before anything runs)."""
    truncate_columns: bool = False
    """Allow using only the first max_seq_len columns of wider scores (exp3 used 256 of 1024)."""

    @model_validator(mode="after")
    def _one_source(self) -> "ScoreSourceSpec":
        _exactly_one(self, ("path", "produced_by", "random"), "a score source")
        built = self.random is not None or is_toy_producer(self.produced_by)
        known = {name: p.description for name, p in worlds.producers().items()}
        if is_toy_producer(self.produced_by) and self.produced_by not in known:
            names = (
                f"{', '.join(known)} ({'; '.join(known.values())})" if known else "none (no toy world is registered)"
            )
            raise SpecRuleError(
                ("produced_by",),
                f"unknown built-in producer {self.produced_by!r}; available: {names}. "
                "A spec path cannot start with `toy:`.",
            )
        if self.produced_by != "toy:truth":
            for name in ("task", "retain_task"):
                if getattr(self, name) is not None:
                    raise SpecRuleError(
                        (name,),
                        f"`{name}` is only read with `produced_by: toy:truth` (the toy task "
                        "whose facts the ground truth marks); delete it.",
                    )
        for name in ("task", "retain_task"):
            value = getattr(self, name)
            if value is not None and not re.match(TOY_TASK_NAME, value):
                raise SpecRuleError(
                    (name,),
                    f"`{name}: {value[:60]}` is not a toy task name; write a task or group "
                    "of the toy world, e.g. `toy_wmdp` or `toy_mmlu`.",
                )
        if built:
            what = "`random`" if self.random is not None else f"`produced_by: {self.produced_by}`"
            if self.alignment == "input":
                raise SpecRuleError(
                    ("alignment",),
                    f"{what} is built for the grid in target alignment; delete `alignment: input` (or write `target`).",
                )
            if self.columns is not None or self.truncate_columns:
                field = "columns" if self.columns is not None else "truncate_columns"
                raise SpecRuleError(
                    (field,),
                    f"`{field}` describes a score file; {what} is built for exactly "
                    "data.max_seq_len columns. Delete it.",
                )
        return self

    @property
    def built_in(self) -> bool:
        """True for a source computed in-process for the grid (`random`, `produced_by: toy:...`), not a file."""
        return self.random is not None or is_toy_producer(self.produced_by)


TopOrder = Literal["most_negative", "most_positive"]
TopSelected = Union[Literal["ascend", "descend"], float]
TopRest = Literal["mask", "descend"]
_TOP_WEIGHTS = {"ascend": -1.0, "descend": 1.0, "mask": 0.0}
"""Weights the words of `selected` / `rest` stand for (sign convention: negative = gradient ascent)."""
_TOP_ONLY = ("k", "fraction", "order", "selected", "rest")


def top_count(k: Optional[int], fraction: Optional[float], valid: int) -> int:
    """Tokens a `mode: top` rule selects out of `valid` valid target tokens: `k` as written, or
    `fraction` of the valid tokens rounded to the nearest integer (halves up), at least 1.
    Never clamped: a count above the candidates is refused at run time (`scores.token_weights`)."""
    if k is not None:
        return k
    assert fraction is not None
    return max(1, math.floor(fraction * valid + 0.5))


class TokenRuleSpec(_Section):
    """Which tokens are trained, and with which signed weight.

    Sign convention (the seed's): score = d(query loss)/d(token weight), so a negative score marks a proponent.
    `value_weighted` gives weight score/mean|score| and `sign` gives sign(score): proponents (negative scores) get
    negative weights, i.e. gradient ascent; positive scores get descent. `where` trains selected tokens with weight +1
    and masks the rest (weight 0). `top` ranks the valid target tokens by one score source and gives the `k` (or
    `fraction`) strongest the `selected` weight and every other valid token the `rest` weight; an optional `where`
    restricts the candidates before ranking. A source may be an aggregation of a `per: question` producer's per-question
    scores: `min_q(wmdp)`, `rank_q(wmdp)` or `wsum_q(wmdp)` (see `unlearnspec.spec.rules`); top-k by `rank_q` with
    `order: most_negative` is the union of every question's top-j tokens (ties at the last j by grid position).
    `min_t(wmdp)`, `rank_t(wmdp)`, `wsum_t(wmdp)` do the same over the leaf tasks of a `per: task` producer."""

    mode: TokenMode = "all"
    """all | value_weighted | sign | where | top."""
    source: Optional[str] = None
    """Score source read by `value_weighted` and `sign`, and ranked by `top`: a name under `scores` (its
    mean-query scores), `name.leaf` for one leaf task's scores of a `magic.query.per: task` producer, or
    `min_q(name)`, `rank_q(name)`, `wsum_q(name)`: an aggregation over the questions of a `per: question` one,
    or `min_t(name)`, `rank_t(name)`, `wsum_t(name)`: over the leaf tasks of a `per: task` one."""
    where: Optional[str] = None
    """Boolean selection for `mode: where`, e.g. `wmdp > 0 and mmlu <= 0` (and/or/not, parentheses).
    `wmdp.dual_use_virology < 0` reads the scores of one leaf task of a `per: task` producer (the leaf
    task's name without the query group's name and `_` in front; see the sidecar's `per_task`).
    `min_q(wmdp) < 0` reads an aggregation of a `per: question` producer's per-question scores, `min_t(wmdp)
    < 0` one over the leaf tasks of a `per: task` producer.
    With `mode: top` (optional): the candidates, filtered BEFORE ranking, so `k` counts tokens that pass
    it; e.g. `mmlu >= 0` with `source: wmdp` ranks only tokens that are not MMLU proponents."""
    k: Optional[int] = None
    """`mode: top`: how many tokens to select, a positive integer (or give `fraction`). A count, not a
    share: a spec's k is not scaled by `--toy`. More than the candidate tokens is an error at run time,
    never clamped (the message names k and the count)."""
    fraction: Optional[float] = None
    """`mode: top`, instead of `k`: share of ALL valid target tokens to select, in (0, 1]; k =
    round(fraction x valid tokens), halves up, at least 1. Relative to the valid tokens even with `where`,
    so the selected share is `fraction` whatever the filter keeps (more than the candidates is an error)."""
    order: Optional[TopOrder] = None
    """`mode: top`, required: which end of the ranking is selected. `most_negative`: the strongest
    proponents (score = d(query loss)/d(token weight) < 0: training on them lowers the query loss);
    `most_positive`: the strongest opponents. Ties are broken by position in the grid (lower row, then
    lower column first), so the selection is deterministic."""
    selected: Optional[TopSelected] = None
    """`mode: top`, required: weight of the selected tokens. `ascend` = -1 (gradient ascent), `descend`
    = +1, or a nonzero number used as the weight itself (e.g. -0.5 = half-strength ascent)."""
    rest: Optional[TopRest] = None
    """`mode: top`, required: weight of every other valid target token (not selected, or not passing
    `where`): `mask` = 0 (not trained) or `descend` = +1 (ordinary training)."""

    @model_validator(mode="before")
    @classmethod
    def _selected_word(cls, data: Any) -> Any:
        word = data.get("selected") if isinstance(data, dict) else None
        if isinstance(word, str) and word not in ("ascend", "descend"):
            raise SpecRuleError(
                ("selected",),
                f"`selected: {word[:40]}` is not a weight; write `ascend` (-1, gradient "
                "ascent), `descend` (+1) or a nonzero number used as the weight (e.g. -0.5).",
            )
        return data

    @model_validator(mode="after")
    def _rules(self) -> "TokenRuleSpec":
        traits = TOKEN_MODES[self.mode]
        if traits.reads_source and self.source is None:
            what = "the score source name to rank by" if self.mode == "top" else "the score source name to read"
            raise SpecRuleError(("source",), f"`mode: {self.mode}` needs `source`: {what}.")
        if self.source is not None and (problem := source_name_problem(self.source)) is not None:
            raise SpecRuleError(
                ("source",),
                f"`source: {self.source[:80]}` is not a score source name: {problem}. Write a "
                "name under `scores` (e.g. `wmdp`), one leaf task of it (e.g. `wmdp.dual_use_virology`) "
                "or an aggregation over its questions or leaf tasks (e.g. `min_q(wmdp)`, `min_t(wmdp)`).",
            )
        if traits.where == "required" and self.where is None:
            raise SpecRuleError(("where",), "`mode: where` needs a `where` expression, e.g. `wmdp > 0`.")
        if self.where is not None:
            try:
                parse_rule(self.where)
            except RuleSyntaxError as exc:
                raise SpecRuleError(("where",), f"cannot parse the selection: {exc}") from None
        if traits.where == "no" and self.where is not None:
            raise SpecRuleError(
                ("where",), f"`where` is only read with `mode: where` or `mode: top` (mode is {self.mode})."
            )
        if not traits.reads_source and self.source is not None:
            raise SpecRuleError(("source",), f"`source` is not read with `mode: {self.mode}`; delete it.")
        if self.mode == "top":
            self._top_rules()
        else:
            for name in _TOP_ONLY:
                if getattr(self, name) is not None:
                    raise SpecRuleError(
                        (name,), f"`{name}` is only read with `mode: top` (mode is {self.mode}); delete it."
                    )
        return self

    def _top_rules(self) -> None:
        if self.k is not None and self.fraction is not None:
            raise SpecRuleError(
                ("fraction",),
                "`k` and `fraction` are mutually exclusive: give the number of tokens "
                "to select (`k: 60`) or their share of the valid tokens (`fraction: 0.01`), not both.",
            )
        if self.k is None and self.fraction is None:
            raise SpecRuleError(
                ("k",),
                "`mode: top` needs `k` (how many tokens to select, e.g. `k: 60`) or "
                "`fraction` (their share of the valid target tokens, e.g. `fraction: 0.01`).",
            )
        if self.k is not None and self.k <= 0:
            raise SpecRuleError(
                ("k",),
                f"`k: {self.k}` selects no token; k is how many of the top-ranked tokens to "
                "select, a positive integer (e.g. `k: 60`).",
            )
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise SpecRuleError(
                ("fraction",),
                f"`fraction: {self.fraction:g}` is outside (0, 1]; it is the share of the "
                "valid target tokens to select, e.g. `fraction: 0.01` for 1%.",
            )
        for name, example in (
            ("order", "most_negative (the strongest proponents) or most_positive"),
            ("selected", "ascend, descend or a nonzero weight"),
            ("rest", "mask or descend"),
        ):
            if getattr(self, name) is None:
                raise SpecRuleError(
                    (name,),
                    f"`mode: top` needs `{name}`: {example}. It has no default, so the "
                    "direction and the weights are always written in the spec.",
                )
        if self.selected_weight() == 0.0:
            raise SpecRuleError(
                ("selected",),
                "`selected: 0` masks the selected tokens too; use `ascend`, `descend` or a nonzero weight (e.g. -0.5).",
            )
        if self.selected_weight() == self.rest_weight():
            raise SpecRuleError(
                ("selected",),
                f"`selected` and `rest` give every token the same weight "
                f"({self.rest_weight():g}), so the ranking changes nothing; that is `mode: all`. Set "
                "`selected: ascend` (or another weight) or `rest: mask`.",
            )

    def selected_weight(self) -> float:
        """Weight of the selected tokens of a `top` rule (`ascend` -> -1, `descend` -> +1, else the number)."""
        s = self.selected
        return _TOP_WEIGHTS[s] if isinstance(s, str) else float(s if s is not None else 0.0)

    def rest_weight(self) -> float:
        """Weight of the valid tokens a `top` rule does not select (`mask` -> 0, `descend` -> +1)."""
        return _TOP_WEIGHTS[self.rest or "mask"]

    def referenced_sources(self) -> set[str]:
        """Score sources the rule reads, as written (`wmdp`, `wmdp.dual_use_virology`, `min_q(wmdp)`)."""
        found = {self.source} if self.source else set()
        if self.mode in ("where", "top") and self.where is not None:
            found |= sources(parse_rule(self.where))
        return found


Normalizer = Literal["selected", "valid", "batch_tokens", "abs_weight"]


class LossSpec(_Section):
    """Loss = sum(weight * token cross-entropy) / normalizer, over one optimizer step."""

    normalizer: Normalizer
    """Divisor, counted over the whole accumulation window: `selected` = tokens with nonzero weight (what masking
    with -100 does; masking then raises the per-token LR), `valid` = all non-pad target tokens (same per-token LR
    as the all-tokens control), `batch_tokens` = rows x (max_seq_len-1), `abs_weight` = sum of |weight|."""

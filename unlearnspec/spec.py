"""The experiment spec: Pydantic models for one YAML file, and its cross-field rules.

Imports no torch/transformers/trl/peft/lm_eval, so `validate`, `schema` and `show` start fast.
Field docs are attribute docstrings; they flow into the JSON Schema (`unlearnspec schema`).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from unlearnspec.rules import RuleSyntaxError, parse_rule, sources
from unlearnspec.toy import TOY_CORPORA, TOY_MODELS

SPEC_SCHEMA_VERSION = 1


class SpecRuleError(ValueError):
    """A cross-field rule failed. `loc` is relative to the model that raised it."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _exactly_one(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) != 1:
        listed = ", ".join(f"`{n}`" for n in names)
        found = ", ".join(f"`{n}`" for n in given) or "none"
        raise SpecRuleError(
            (given[1],) if len(given) > 1 else (),
            f"{what} needs exactly one of {listed} (found: {found}). Keep one and delete the others.",
        )


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
    shuffle_seed: Optional[int] = None
    """Seed for `order: shuffle`."""
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
    max_seq_len: PositiveInt
    """S: every row is truncated/right-padded to exactly this many tokens."""
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
    """Path to `per_token_scores.pt` or `.safetensors` (sidecar `scores.json` read when present)."""
    produced_by: Optional[str] = None
    """Path of the `specs/magic/*.yaml` spec whose output directory holds the scores."""
    alignment: Optional[Literal["target", "input"]] = None
    """`target`: column t weights the loss of predicting token t (column 0 unused); `input`: column t
    weights the loss predicted at position t (of token t+1). Unset: taken from the sidecar, else an error."""
    columns: Optional[PositiveInt] = None
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
    """Score source read by `value_weighted` and `sign`."""
    where: Optional[str] = None
    """Boolean selection for `mode: where`, e.g. `wmdp > 0 and mmlu <= 0` (and/or/not, parentheses)."""

    @model_validator(mode="after")
    def _rules(self) -> "TokenRuleSpec":
        if self.mode in ("value_weighted", "sign") and self.source is None:
            raise SpecRuleError(("source",), f"`mode: {self.mode}` needs `source`: the score source name to read.")
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


# --------------------------------------------------------------------------- training
class OptimizerSpec(_Section):
    """Optimizer and its hyperparameters."""

    name: Literal["sgd", "adam", "adamw"]
    """sgd | adam (L2 in the gradient) | adamw (decoupled weight decay)."""
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    """SGD momentum."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    """Weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = Field(default=1e-8, gt=0.0)
    """Adam epsilon."""

    @model_validator(mode="after")
    def _rules(self) -> "OptimizerSpec":
        if self.name != "sgd" and self.momentum:
            raise SpecRuleError(("momentum",), f"`momentum` applies to sgd only (optimizer is {self.name}); use `betas`.")
        return self


class TrainingSpec(_Section):
    """Optimisation settings. `lr` may be a list: one run per value (a sweep)."""

    optimizer: OptimizerSpec
    """Optimizer."""
    lr: Union[float, list[float]]
    """Learning rate, or a list of learning rates to sweep."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """LR schedule after warmup."""
    warmup_ratio: Optional[float] = Field(default=None, ge=0.0, lt=1.0)
    """Warmup as a fraction of the total steps (exclusive with warmup_steps)."""
    warmup_steps: Optional[int] = Field(default=None, ge=0)
    """Warmup steps (exclusive with warmup_ratio)."""
    batch_size: PositiveInt
    """Rows per device micro-batch."""
    grad_accum: PositiveInt = 1
    """Micro-batches per optimizer step."""
    max_steps: Optional[PositiveInt] = None
    """Optimizer steps (exclusive with epochs)."""
    epochs: Optional[float] = Field(default=None, gt=0.0)
    """Epochs over the N rows (exclusive with max_steps)."""
    seed: int = 42
    """Seed for model init of adapters, data order and dropout."""
    shuffle: bool = True
    """Shuffle rows each epoch (with `seed`); off replays rows in grid order."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Mixed-precision autocast for the forward pass (parameter dtype is `model.dtype`)."""
    max_grad_norm: Optional[float] = Field(default=None, gt=0.0)
    """Gradient clipping norm; unset means no clipping (the HF default of 1.0 is not applied)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout in attention/hidden layers during training (MAGIC requires 0)."""

    @model_validator(mode="after")
    def _rules(self) -> "TrainingSpec":
        if isinstance(self.lr, list):
            if not self.lr:
                raise SpecRuleError(("lr",), "the LR sweep is empty; give one learning rate or a non-empty list, e.g. `lr: [1.0e-5, 5.0e-5]`.")
            if len(set(self.lr)) != len(self.lr):
                raise SpecRuleError(("lr",), "the LR sweep repeats a value; each sweep point must be distinct.")
        for i, lr in enumerate(self.lrs):
            if not lr > 0:
                raise SpecRuleError(("lr",) + ((i,) if isinstance(self.lr, list) else ()), f"learning rate must be > 0 (got {lr}).")
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise SpecRuleError(("warmup_steps",), "`warmup_ratio` and `warmup_steps` are mutually exclusive; keep one.")
        if (self.max_steps is None) == (self.epochs is None):
            raise SpecRuleError(("max_steps",), "give exactly one of `max_steps` and `epochs`.")
        return self

    @property
    def lrs(self) -> tuple[float, ...]:
        """The sweep as a tuple (a single value is a sweep of one), in the order written."""
        return tuple(self.lr) if isinstance(self.lr, list) else (self.lr,)


class LoraSpec(_Section):
    """LoRA adapters via peft; only adapter weights train."""

    rank: PositiveInt = 8
    """Adapter rank r."""
    alpha: float = 16.0
    """Scaling alpha."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Adapter dropout."""
    target_modules: list[str] = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    """Module names to adapt (GPT-NeoX defaults)."""
    merge_for_eval: bool = True
    """Merge adapters into the base weights before evaluation."""


# --------------------------------------------------------------------------- MAGIC
class QuerySpec(_Section):
    """The query whose loss the scores differentiate."""

    task: str
    """lm-eval task (or group) whose documents and prompt format define the questions."""
    loss: Literal["answer_continuation", "answer_letter"] = "answer_continuation"
    """`answer_continuation`: mean over questions of the summed token cross-entropy of the correct
    choice's continuation given the task prompt. `answer_letter`: mean over questions of the
    cross-entropy of the single token " L" (L = A..D) after an MCQ prompt listing the choices."""
    num_fewshot: int = Field(default=0, ge=0)
    """Few-shot examples in the query prompt."""
    limit: Optional[int] = Field(default=None, gt=0)
    """Use only the first `limit` questions of each leaf task (as lm-eval's --limit)."""
    batch_size: PositiveInt = 8
    """Questions per forward pass in the query gradient."""


class MagicSpec(_Section):
    """Compute exact per-token metagradient scores over this spec's training run."""

    query: QuerySpec
    """The query."""
    checkpoints: Literal["all", "sqrt", "log"] = "sqrt"
    """Which parameter states the forward pass keeps for the reverse pass (others are recomputed)."""
    storage: Literal["ram", "disk"] = "ram"
    """Where kept states live (disk: safetensors in the output dir)."""


# --------------------------------------------------------------------------- eval, baseline, output
class EvalTaskSpec(_Section):
    """One lm-eval task."""

    name: str
    """Task or group name (built-in, or from plugins/)."""
    num_fewshot: Optional[int] = Field(default=None, ge=0)
    """Few-shot count; required (lm-eval task defaults differ)."""
    limit: Optional[int] = Field(default=None, gt=0)
    """Evaluate only the first `limit` documents of this task."""


class EvalSpec(_Section):
    """In-process lm-evaluation-harness."""

    tasks: list[EvalTaskSpec] = Field(min_length=1)
    """Tasks to evaluate."""
    batch_size: PositiveInt = 8
    """lm-eval batch size."""
    metric: Literal["acc", "acc_norm"] = "acc"
    """Headline metric of the reports."""
    bootstrap_iters: PositiveInt = 1000
    """Bootstrap iterations for stderrs of non-mean metrics (must be > 0 to keep stderrs)."""

    @model_validator(mode="after")
    def _rules(self) -> "EvalSpec":
        for i, task in enumerate(self.tasks):
            if task.num_fewshot is None:
                raise SpecRuleError(
                    ("tasks", i, "num_fewshot"),
                    f"`num_fewshot` is missing for task {task.name!r}; pin it (the seed's numbers are 0-shot: `num_fewshot: 0`).",
                )
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise SpecRuleError(("tasks",), "a task is listed twice.")
        return self


class RecordedBaseline(_Section):
    """Numbers recorded elsewhere (not reproduced by this tool)."""

    metrics: dict[str, float]
    """Task name -> accuracy."""
    source: str
    """Where the numbers come from."""


class BaselineSpec(_Section):
    """What each run is compared against."""

    evaluate: bool = True
    """Evaluate the untouched base model (cached by model and eval settings)."""
    recorded: Optional[RecordedBaseline] = None
    """Recorded baseline numbers shown beside the measured ones."""


class OutputSpec(_Section):
    """Where results go."""

    dir: str
    """Output folder (relative to the project root); one subfolder per sweep point."""


# --------------------------------------------------------------------------- the spec
class Spec(_Section):
    """One experiment (or one MAGIC score run) of attribution-guided unlearning."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Short name; names the report files."""
    description: str = ""
    """One line on what the spec does."""
    control: Optional[str] = None
    """Path of the matched all-tokens control spec (compared at the same LR)."""
    model: ModelSpec
    """Base model."""
    data: DataSpec
    """Training data."""
    scores: dict[str, ScoreSourceSpec] = {}
    """Named attribution score sources read by the token rule."""
    tokens: TokenRuleSpec = TokenRuleSpec()
    """Token rule: signed per-token weights."""
    loss: LossSpec
    """Loss normalizer."""
    training: TrainingSpec
    """Optimisation."""
    lora: Optional[LoraSpec] = None
    """LoRA adapters (full fine-tuning when unset)."""
    magic: Optional[MagicSpec] = None
    """Set for a score-producing spec (specs/magic/)."""
    eval: Optional[EvalSpec] = None
    """Evaluation after training."""
    baseline: BaselineSpec = BaselineSpec()
    """Baseline comparison."""
    output: OutputSpec
    """Output location."""

    @model_validator(mode="after")
    def _rules(self) -> "Spec":
        for name in sorted(self.tokens.referenced_sources()):
            if name not in self.scores:
                declared = ", ".join(sorted(self.scores)) or "none"
                raise SpecRuleError(
                    ("tokens",),
                    f"the token rule reads score source {name!r}, which is not declared under `scores` "
                    f"(declared: {declared}). Add `scores: {{{name}: {{produced_by: ...}}}}` or fix the name.",
                )
        for name, src in self.scores.items():
            if src.columns is not None and self.data.max_seq_len > src.columns:
                raise SpecRuleError(
                    ("data", "max_seq_len"),
                    f"data.max_seq_len={self.data.max_seq_len} is larger than the {src.columns} columns of score "
                    f"source {name!r}; tokens past column {src.columns} would have no score. Lower max_seq_len.",
                )
            if src.columns is not None and self.data.max_seq_len < src.columns and not src.truncate_columns:
                raise SpecRuleError(
                    ("scores", name, "truncate_columns"),
                    f"score source {name!r} has {src.columns} columns but data.max_seq_len={self.data.max_seq_len}; "
                    "using a prefix of the columns must be explicit: set `truncate_columns: true` or match max_seq_len.",
                )
        if self.magic is not None:
            self._magic_rules()
        elif self.eval is None:
            raise SpecRuleError(("eval",), "an experiment spec needs `eval` (only MAGIC score specs may omit it).")
        return self

    def _magic_rules(self) -> None:
        opt = self.training.optimizer
        if opt.name != "sgd":
            raise SpecRuleError(
                ("training", "optimizer", "name"),
                f"MAGIC scores need plain SGD (got {opt.name}): the exact reverse pass is implemented for SGD only. Use `name: sgd`.",
            )
        if opt.momentum:
            raise SpecRuleError(("training", "optimizer", "momentum"), "MAGIC supports SGD without momentum; set `momentum: 0`.")
        if self.model.dtype in ("bfloat16", "float16") or self.training.precision != "fp32":
            raise SpecRuleError(
                ("model", "dtype"),
                "MAGIC needs float32 (or float64) parameters and `training.precision: fp32`: with bf16/fp16 most SGD "
                "updates round away and the scores become gradient similarity plus rounding noise.",
            )
        if len(self.training.lrs) != 1:
            raise SpecRuleError(("training", "lr"), "a MAGIC spec produces one score file: give a single learning rate.")
        if self.training.max_grad_norm is not None:
            raise SpecRuleError(("training", "max_grad_norm"), "MAGIC cannot differentiate through gradient clipping; unset `max_grad_norm`.")
        if self.training.dropout:
            raise SpecRuleError(("training", "dropout"), "MAGIC needs a deterministic replay; set `dropout: 0`.")
        if self.lora is not None:
            raise SpecRuleError(("lora",), "MAGIC scores are computed for full fine-tuning; remove `lora`.")
        if self.tokens.mode != "all":
            raise SpecRuleError(("tokens", "mode"), "a MAGIC spec scores the all-tokens run; set `tokens.mode: all`.")
        if self.loss.normalizer != "valid":
            raise SpecRuleError(
                ("loss", "normalizer"),
                f"MAGIC differentiates w * CE / D with D independent of the weights; `{self.loss.normalizer}` depends on "
                "them. Use `normalizer: valid`.",
            )

    @property
    def produces_scores(self) -> bool:
        return self.magic is not None


def json_schema() -> dict[str, Any]:
    """JSON Schema of a spec file (for editors via yaml-language-server)."""
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "unlearnspec spec"
    return schema


__all__ = [
    "SPEC_SCHEMA_VERSION",
    "Spec",
    "SpecRuleError",
    "ModelSpec",
    "DataSpec",
    "ScoreSourceSpec",
    "TokenRuleSpec",
    "LossSpec",
    "TrainingSpec",
    "OptimizerSpec",
    "LoraSpec",
    "MagicSpec",
    "QuerySpec",
    "EvalSpec",
    "EvalTaskSpec",
    "BaselineSpec",
    "OutputSpec",
    "json_schema",
]

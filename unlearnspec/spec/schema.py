"""The experiment spec: one YAML file as a frozen Pydantic model, with its cross-section rules.

Imports no torch/transformers/trl/peft/lm_eval, so `validate`, `schema` and `show` start fast.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from unlearnspec.spec.attack import AttackSpec
from unlearnspec.spec.base import SpecRuleError, _Section
from unlearnspec.spec.objectives import ObjectiveSpec, WeightedObjective, is_unlearning, objective_alpha
from unlearnspec.spec.parallel import ParallelSpec
from unlearnspec.spec.rules import AGGREGATION_PER, aggregation_parts, parse_source
from unlearnspec.spec.sections import DataSpec, LossSpec, ModelSpec, ScoreSourceSpec, TokenRuleSpec
from unlearnspec.spec.token_modes import TOKEN_MODES
from unlearnspec.spec.training import BaselineSpec, EvalSpec, LoraSpec, MagicSpec, OutputSpec, TrainingSpec

# --------------------------------------------------------------------------- the spec
RESULT_NEUTRAL_FIELDS = (
    "training.report_to",  # where curves go
    "training.micro_batch_size",  # rows per forward pass: the same optimizer steps
    "attack.micro_batch_size",  # the same for the relearning attack
    "magic.memory",  # memory knobs and the process layout
    "magic.lds",  # the validation reads the scores; it never changes them
    "eval.hazard_task",  # which task the report calls the hazard
    "eval.general_task",
    "parallel",  # beyond float summation order
    "output",  # where results go
)
"""Dotted spec fields that never change a run's numbers: out of the spec hash (the resume key) and out of
the doctor's matched-control comparison (D1)."""


def drop_fields(payload: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """`payload` (a spec dump) without the dotted `fields`; missing ones are ignored. Changes it in place."""
    for dotted in fields:
        *parents, leaf = dotted.split(".")
        node: Any = payload
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return payload


class Spec(_Section):
    """One experiment (or one MAGIC score run) of attribution-guided unlearning."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Short name; names the report files."""
    description: str = ""
    """One line on what the spec does."""
    control: Optional[str] = None
    """Path of the matched all-tokens control spec (compared at the same LR)."""
    role: Optional[Literal["positive_control", "negative_control"]] = None
    """What this experiment is in its study: `positive_control` (a selection known to work, e.g. the toy
    world's ground-truth tokens: shows the study could find an effect), `negative_control` (a selection
    known to carry no signal, e.g. random tokens of the same count); unset: an experiment under test."""
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
    objective: ObjectiveSpec = Field(default=WeightedObjective(), exclude_if=lambda v: isinstance(v, WeightedObjective))
    """The loss a point minimises: `weighted` (default: the token rule's signed weights), or an established
    unlearning method on `data` as the forget set: `grad_diff`, `npo`, `simnpo`, `rmu` (docs/objectives/).
    Left out of the spec's dump and hash when `weighted`, so a spec without it keeps its hash."""
    training: TrainingSpec
    """Optimisation."""
    lora: Optional[LoraSpec] = None
    """LoRA adapters (full fine-tuning when unset)."""
    magic: Optional[MagicSpec] = None
    """Set for a score-producing spec (specs/magic/)."""
    eval: Optional[EvalSpec] = None
    """Evaluation after training."""
    attack: Optional[AttackSpec] = None
    """A relearning attack on each point's unlearned model, evaluated on the `eval` tasks after each step count
    (docs/objectives/attack.md); unset: none. It changes the recorded results, so it is part of the spec hash."""
    baseline: BaselineSpec = BaselineSpec()
    """Baseline comparison."""
    output: OutputSpec
    """Output location."""
    parallel: Optional[ParallelSpec] = None
    """Device and multi-process settings (unset: every default of `ParallelSpec`: auto device, DDP)."""

    @model_validator(mode="after")
    def _rules(self) -> "Spec":
        for full in sorted(self.tokens.referenced_sources()):
            agg, name, leaf = parse_source(full)
            if name not in self.scores:
                declared = ", ".join(sorted(self.scores)) or "none"
                what = f"score source {name!r}" if leaf is None else f"leaf task {leaf!r} of score source {name!r}"
                what += f" (through {agg}(...))" if agg else ""
                field = "source" if full == self.tokens.source else "where"
                raise SpecRuleError(
                    ("tokens",),
                    f"the token rule (`tokens.{field}`) reads {what}, which is not declared under `scores` "
                    f"(declared: {declared}). Add `scores: {{{name}: {{produced_by: ...}}}}` or fix the name.",
                )
            if leaf is not None and self.scores[name].built_in:
                raise SpecRuleError(
                    ("tokens",),
                    f"the token rule reads {full!r}, but score source {name!r} is built for "
                    "the grid (`random` or `toy:truth`) and has no leaf tasks. Read plain "
                    f"{name!r} (for one toy task's truth, set `task:` on the source).",
                )
            if agg is not None and self.scores[name].built_in:
                per = AGGREGATION_PER[aggregation_parts(agg)[1]]
                raise SpecRuleError(
                    ("tokens",),
                    f"the token rule reads {full!r}, but score source {name!r} is built for "
                    f"the grid (`random` or `toy:truth`) and has no per-{per} scores. Read plain "
                    f"{name!r}, or score a `magic.query.per: {per}` producer.",
                )
        for name, src in self.scores.items():
            if src.produced_by == "toy:truth" and (self.model.toy is None or self.data.toy is None):
                raise SpecRuleError(
                    ("scores", name, "produced_by"),
                    f"score source {name!r} is the toy world's ground truth (`produced_by: toy:truth`), but this spec "
                    "does not run on the toy world (model.toy and data.toy must both be set), so no fact spans exist "
                    "for its tokens. Write the spec for the toy world (see specs/controls/oracle.yaml), or use "
                    "another score source.",
                )
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
        if self.output.save_model == "adapter" and self.lora is None:
            raise SpecRuleError(
                ("output", "save_model"),
                "`save_model: adapter` needs a `lora` section (there is no adapter "
                "without LoRA); use `final` or `none`.",
            )
        self._objective_rules()
        if self.magic is not None:
            self._magic_rules()
        elif self.eval is None:
            raise SpecRuleError(("eval",), "an experiment spec needs `eval` (only MAGIC score specs may omit it).")
        return self

    def _objective_rules(self) -> None:
        obj, name = self.objective, self.objective.name
        alpha = objective_alpha(obj)
        if self.data.retain is not None and alpha == 0:
            why = (
                "`objective: weighted` has no retain term"
                if not is_unlearning(obj)
                else f"objective.alpha is 0 ({name})"
            )
            raise SpecRuleError(
                ("data", "retain"),
                f"`data.retain` is read only by an unlearning objective with a retain "
                f"term, and {why}. Delete `data.retain`, or set `objective.alpha` > 0.",
            )
        if not is_unlearning(obj):
            return
        if alpha > 0 and self.data.retain is None:
            raise SpecRuleError(
                ("data", "retain"),
                f"objective `{name}` with alpha={alpha:g} weights a retain term, but "
                "`data.retain` is not set. Add the retain set under `data.retain` (its own hub/files/toy "
                "and select; e.g. `retain: {hub: {path: cais/wmdp-corpora, name: bio-retain-corpus}, "
                "select: {count: 1000}}`), or set `objective.alpha: 0`.",
            )
        mode = self.tokens.mode
        if TOKEN_MODES[mode].signed:
            raise SpecRuleError(
                ("tokens", "mode"),
                f"objective `{name}` reads the token rule as a selection of forget "
                f"tokens (|weight| of each; the objective sets the direction), but `mode: {mode}` gives "
                "weights of both signs whose sign would be dropped. Use `mode: all`, `where`, or `top` "
                "with `rest: mask`; or `objective: weighted` for signed weights.",
            )
        if mode == "top" and self.tokens.rest == "descend":
            raise SpecRuleError(
                ("tokens", "rest"),
                f"objective `{name}` reads the token rule as a selection of forget "
                "tokens, so `rest: descend` (ordinary training on the other tokens) would unlearn them "
                "too. Set `rest: mask`, and put what must be kept into `data.retain` with `alpha` > 0.",
            )
        if name in ("npo", "simnpo") and self.loss.normalizer != "valid":
            raise SpecRuleError(
                ("loss", "normalizer"),
                f"objective `{name}` averages its forget term over sequences "
                f"(and its retain term over valid retain tokens), so `normalizer: {self.loss.normalizer}` "
                "would not be read. Write `normalizer: valid`.",
            )
        if name == "rmu" and self.lora is not None:
            raise SpecRuleError(
                ("lora",),
                "objective `rmu` trains chosen parameters of the base model itself "
                "(objective.train_layers / train_params); delete `lora`.",
            )
        if name == "rmu" and self.parallel is not None and self.parallel.strategy == "fsdp":
            raise SpecRuleError(
                ("parallel", "strategy"),
                "objective `rmu` trains some parameters of a layer and keeps "
                "a frozen copy of the model for its retain term, which this tool runs only unsharded. "
                "Use `strategy: ddp`.",
            )

    def _magic_rules(self) -> None:
        opt = self.training.optimizer
        if self.attack is not None:
            raise SpecRuleError(
                ("attack",),
                "a MAGIC spec produces scores and evaluates nothing, so there is no "
                "unlearned model to attack. Delete `attack` here; set it on the experiment specs.",
            )
        if is_unlearning(self.objective):
            raise SpecRuleError(
                ("objective",),
                f"a MAGIC spec scores the `weighted` loss (its reverse pass differentiates "
                f"sum(w * CE) / D), not `{self.objective.name}`. Delete `objective` here; set it on the "
                "experiment specs that read these scores.",
            )
        if opt.momentum:
            raise SpecRuleError(
                ("training", "optimizer", "momentum"), "MAGIC supports SGD without momentum; set `momentum: 0`."
            )
        if self.model.dtype in ("bfloat16", "float16") or self.training.precision != "fp32":
            raise SpecRuleError(
                ("model", "dtype"),
                "MAGIC needs float32 (or float64) parameters and `training.precision: fp32`: with bf16/fp16 most SGD "
                "updates round away and the scores become gradient similarity plus rounding noise.",
            )
        if len(self.training.lrs) != 1:
            raise SpecRuleError(
                ("training", "lr"), "a MAGIC spec produces one score file: give a single learning rate."
            )
        if self.training.dropout:
            raise SpecRuleError(("training", "dropout"), "MAGIC needs a deterministic replay; set `dropout: 0`.")
        if self.lora is not None and self.lora.dropout:
            raise SpecRuleError(
                ("lora", "dropout"),
                "MAGIC needs a deterministic replay; set `lora.dropout: 0` (LoRA "
                "score runs differentiate through the adapters only, exactly).",
            )
        if self.tokens.mode != "all":
            raise SpecRuleError(("tokens", "mode"), "a MAGIC spec scores the all-tokens run; set `tokens.mode: all`.")
        if self.loss.normalizer != "valid":
            raise SpecRuleError(
                ("loss", "normalizer"),
                f"MAGIC differentiates w * CE / D with D independent of the weights; `{self.loss.normalizer}` depends on "
                "them. Use `normalizer: valid`.",
            )

    @property
    def parallel_or_default(self) -> ParallelSpec:
        """The `parallel` section with its defaults filled in."""
        return self.parallel if self.parallel is not None else ParallelSpec()

    @property
    def produces_scores(self) -> bool:
        return self.magic is not None


def json_schema() -> dict[str, Any]:
    """JSON Schema of a spec file (for editors via yaml-language-server)."""
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "unlearnspec spec"
    return schema

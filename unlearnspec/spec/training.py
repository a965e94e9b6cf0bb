"""Spec sections for how it is trained and judged: optimizer, training, LoRA, MAGIC, eval, baseline, output."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, PositiveInt, field_validator, model_validator

from unlearnspec.spec.base import Seed, SpecRuleError, _Section

# --------------------------------------------------------------------------- training
OptimizerName = Literal["sgd", "adam", "adamw"]
"""The optimizers a spec may name: train/trainer.py builds each, magic/optimizers.py OPTIMIZERS replays each."""


class OptimizerSpec(_Section):
    """Optimizer and its hyperparameters."""

    name: OptimizerName
    """sgd | adam (L2 in the gradient) | adamw (decoupled weight decay)."""
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    """SGD momentum."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    """Weight decay of weight matrices and embeddings; biases and LayerNorm weights are exempt, as in the
    HF Trainer (adam: L2 added to the gradient; adamw: decoupled, theta *= 1 - lr * weight_decay)."""
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    """Adam betas, each in [0, 1)."""
    eps: float = Field(default=1e-8, gt=0.0)
    """Adam epsilon."""

    @field_validator("betas", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        # YAML has lists, not tuples; strict mode would refuse a list for a tuple field.
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _rules(self) -> "OptimizerSpec":
        if self.name != "sgd" and self.momentum:
            raise SpecRuleError(
                ("momentum",), f"`momentum` applies to sgd only (optimizer is {self.name}); use `betas`."
            )
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
    """The global batch: rows per optimizer step, whatever the number of processes (the seed's batch).
    Under W ranks each rank trains batch_size / W rows of every step; W must divide it."""
    # Left out of dumps when unset and out of the spec hash (run.plan.spec_hash): a memory knob.
    micro_batch_size: Optional[PositiveInt] = None
    """Rows per forward/backward on one rank (a memory knob: the rows of each optimizer step and the
    step itself stay the same). Each rank accumulates batch_size / (W x micro_batch_size) micro-batches
    per step, so it must divide each rank's share batch_size / W. Unset: the whole share at once (no
    accumulation). `unlearnspec show SPEC --nproc W` prints the split."""
    max_steps: Optional[PositiveInt] = None
    """Optimizer steps (exclusive with epochs)."""
    epochs: Optional[float] = Field(default=None, gt=0.0)
    """Epochs over the N rows (exclusive with max_steps)."""
    seed: Seed = 42
    """Seed for model init of adapters, data order and dropout (0 <= seed < 2**32)."""
    shuffle: bool = True
    """Shuffle rows each epoch (with `seed`); off replays rows in grid order."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Mixed-precision autocast for the forward pass (parameter dtype is `model.dtype`)."""
    max_grad_norm: Optional[float] = Field(default=None, gt=0.0)
    """Gradient clipping norm; unset means no clipping (the HF default of 1.0 is not applied)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout in attention/hidden layers during training (MAGIC requires 0)."""
    report_to: Optional[Literal["none", "tensorboard", "wandb"]] = None
    """Where the trainer sends its training curves (HF `report_to`); unset or `none`: nowhere.
    `tensorboard`: event files in the point folder's `curves/` (needs `tensorboardX` or `tensorboard`
    installed). `wandb`: a Weights & Biases run named `spec/point`, its local files in `curves/`;
    configure it with WANDB_* variables (e.g. WANDB_PROJECT, WANDB_MODE=offline); wandb is not a
    dependency. Curves never change the results."""

    @model_validator(mode="before")
    @classmethod
    def _removed_grad_accum(cls, data: Any) -> Any:
        if isinstance(data, dict) and "grad_accum" in data:
            accum, batch = data.get("grad_accum"), data.get("batch_size")
            known = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (accum, batch))
            if known and accum == 1:
                write = f"delete `grad_accum` and keep `batch_size: {batch}`"
            elif known and isinstance(batch, int) and isinstance(accum, int):
                write = f"write `batch_size: {batch * accum}` and `micro_batch_size: {batch}`"
            else:
                write = "write `batch_size: B x A` (rows per optimizer step) and `micro_batch_size: B`"
            raise SpecRuleError(
                ("grad_accum",),
                "`grad_accum` was removed: `batch_size` is now the global batch (rows "
                "per optimizer step at any number of processes) and `micro_batch_size` the rows per "
                f"forward pass. Instead of `batch_size: {batch}` with `grad_accum: {accum}`, {write} "
                "(a run made under W processes had W times that global batch).",
            )
        return data

    @model_validator(mode="after")
    def _rules(self) -> "TrainingSpec":
        if isinstance(self.lr, list):
            if not self.lr:
                raise SpecRuleError(
                    ("lr",),
                    "the LR sweep is empty; give one learning rate or a non-empty list, e.g. `lr: [1.0e-5, 5.0e-5]`.",
                )
            if len(set(self.lr)) != len(self.lr):
                raise SpecRuleError(("lr",), "the LR sweep repeats a value; each sweep point must be distinct.")
        for i, lr in enumerate(self.lrs):
            if not lr > 0:
                raise SpecRuleError(
                    ("lr",) + ((i,) if isinstance(self.lr, list) else ()), f"learning rate must be > 0 (got {lr})."
                )
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise SpecRuleError(
                ("warmup_steps",), "`warmup_ratio` and `warmup_steps` are mutually exclusive; keep one."
            )
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
    # Left out of dumps when `mean`, so the hash (and the resume key) of every spec written before the
    # field existed stays the same; `spec.magic.query.per` still reads "mean".
    per: Literal["mean", "task", "question"] = Field(default="mean", exclude_if=lambda v: v == "mean")
    """`mean`: one score matrix, of Q = mean over all questions. `task` (for a group such as
    wmdp_bio_robust or mmlu): also one score matrix per leaf task t, of Q_t = mean over t's questions,
    written as `per_token_scores.<leaf>.pt` beside the mean file and listed under `per_task` in
    scores.json; token rules read them as `source.leaf` (e.g. `wmdp.dual_use_virology < 0`), or through an
    aggregation over the leaf tasks, `min_t(wmdp)`, `rank_t(wmdp)`, `wsum_t(wmdp)` (the math of the `_q`
    aggregations below, on the leaf matrices in sorted leaf order: `min_t` is the strongest proponent of
    any one leaf task, normalised per leaf). `<leaf>` is
    the leaf task's name without the group's name and `_` in front. The mean file is unchanged
    (Q = sum_t n_t/n Q_t, so the mean scores are the question-weighted sum of the leaf scores). Cost: one
    more reverse pass per leaf after the mean one (K leaves: (K+1)x the reverse-pass time of `mean`;
    training runs once), same device memory (the passes run one after another), plus K [N, S] float32
    matrices in host memory and on disk. `question`: also the scores of every question q of the query,
    `per_question_scores.pt` [Q, N, S] beside the mean file (listed under `per_question` in scores.json);
    token rules read them through an aggregation over the questions, wherever a source name goes:
    `min_q(wmdp)` (per token, the min over q of s_q / mean|s_q|: the strongest proponent of any question,
    normalised per question), `rank_q(wmdp)` (the best 0-based rank of the token in any question's ranking,
    most negative first: top-k by it is the union of the per-question top lists) and `wsum_q(wmdp)` (sum
    over q of a_q s_q / mean|s_q|, a_q ~ max(0, -min s_q): questions weighted by their strongest proponent).
    See `unlearnspec.spec.rules`."""


class MagicMemorySpec(_Section):
    """Memory knobs of the reverse pass; they change peak memory and time, never the scores (beyond float
    summation order)."""

    replay_batch_size: Optional[PositiveInt] = None
    """Rows per double backward in the reverse pass (and per recomputed SGD step). The cross-entropy double
    backward keeps several vocab-sized tensors per sequence, so this is the main memory knob. Unset: the
    training micro-batches as recorded (`training.micro_batch_size` rows each; unset, batch_size / W rows)."""
    # Left out of dumps at its default, so specs written before the field existed keep their hash.
    question_chunk: PositiveInt = Field(default=16, exclude_if=lambda v: v == 16)
    """With `query.per: question`: questions whose adjoints go through one batched reverse pass (K). Each
    pass keeps K adjoints of the trainable parameters' size (times 1 for SGD, 3 for Adam/AdamW) and K-fold
    double-backward activations per micro-batch; fewer passes are faster (see unlearnspec/magic/batched.py)."""
    offload_adjoint: bool = False
    """Keep the adjoint vector v and the Hessian-vector-product accumulator in CPU memory (saves two
    parameter-sized buffers on the GPU outside each step's double backwards; costs host<->device copies per step)."""
    offload_states: bool = False
    """Keep the parameter states that a `sqrt`/`all` segment recomputes in CPU memory (else up to ceil(sqrt T)
    parameter copies sit on the GPU during a segment; costs one host<->device copy per state)."""


class LdsSpec(_Section):
    """Linear datamodeling score (LDS): do the scores predict what dropping many tokens at once does?

    After the scores are written, the recorded run is retrained once per random subset with that subset's
    weights set to 0 (same rows per step, same order and schedule, the replay's arithmetic), and the query
    loss is evaluated. LDS = Spearman(actual change of the query loss, predicted change -sum of the dropped
    items' score x weight), written with Pearson, a bootstrap 95% interval and |predicted|/|actual| into
    scores.json. Cost: `subsets` + 1 forward retrainings (no reverse pass) plus one query evaluation each;
    every retraining is its own job of the plan (SLURM runs them in parallel)."""

    subsets: int = Field(default=30, ge=5, le=10_000)
    """Random subsets (one retraining each, plus one reference retraining with nothing dropped)."""
    fraction: float = Field(default=0.01, gt=0.0, lt=1.0)
    """Share of the units dropped in each subset (at least one unit)."""
    unit: Literal["row", "token"] = "row"
    """`row`: drop whole training rows; `token`: drop single valid target tokens."""
    seed: int = Field(default=0, ge=0, lt=2**31)
    """Seed of the subsets (subset i draws from seed x 100003 + i)."""


class MagicSpec(_Section):
    """Compute exact per-token metagradient scores over this spec's training run."""

    query: QuerySpec
    """The query."""
    checkpoints: Literal["all", "sqrt", "log"] = "sqrt"
    """Which parameter states the forward pass keeps for the reverse pass (others are recomputed)."""
    storage: Literal["ram", "disk"] = "ram"
    """Where kept states live (disk: safetensors in the output dir)."""
    memory: Optional[MagicMemorySpec] = None
    """Reverse-pass memory knobs (unset: every default of `MagicMemorySpec`)."""
    lds: Optional[LdsSpec] = None
    """Validate the scores by LDS after they are written (unset: no validation; `unlearnspec lds DIR` adds it later)."""


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
    hazard_task: Optional[str] = None
    """Reporting only: the evaluated task (one of `tasks`) whose drop the report's selectivity column rewards and
    the plot's vertical axis shows, e.g. a leaf such as `toy_wmdp_by_attribute_toxin` beside its group. Unset:
    the one task named like `wmdp`. `report --hazard-task` overrides it. Not part of the spec hash: changing it
    reruns nothing. A profile maps it like the task names."""
    general_task: Optional[str] = None
    """Reporting only: the evaluated task whose drop selectivity penalises (the plot's horizontal axis). Unset: the
    one task named like `mmlu`. `report --general-task` overrides it. Not part of the spec hash."""

    @model_validator(mode="after")
    def _rules(self) -> "EvalSpec":
        names = [t.name for t in self.tasks]
        for field, given in (("hazard_task", self.hazard_task), ("general_task", self.general_task)):
            if given is not None and given not in names:
                raise SpecRuleError(
                    (field,), f"{given!r} is not one of the evaluated tasks ({', '.join(names)}); name one of them."
                )
        if self.hazard_task is not None and self.hazard_task == self.general_task:
            raise SpecRuleError(
                ("general_task",),
                f"the hazard and the general task are both {self.hazard_task!r}; selectivity needs two tasks.",
            )
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

    metrics: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]]
    """Task name -> accuracy (in [0, 1])."""
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
    """Output folder (relative to the project root, or absolute); one subfolder per sweep point. The tool
    writes only into folders it created (each holds a `.unlearnspec.json` marker) or empty ones."""
    save_model: Literal["none", "final", "adapter"] = "final"
    """What each sweep point keeps in `<point>/model`: `final` = the trained model and tokenizer
    (safetensors, LoRA merged), loadable with AutoModelForCausalLM.from_pretrained; `adapter` = the peft
    adapter only (LoRA specs); `none` = nothing. A full 6.86B model in bf16 is ~14 GB per point."""

    @model_validator(mode="after")
    def _rules(self) -> "OutputSpec":
        from pathlib import PurePath

        d = self.dir.strip()
        parts = PurePath(d).parts
        if not d or d in (".", "./"):
            raise SpecRuleError(("dir",), "output.dir is empty; name a folder of its own, e.g. `runs/exp7_all_tokens`.")
        if ".." in parts:
            raise SpecRuleError(
                ("dir",),
                f"output.dir {self.dir!r} climbs out with `..`; name a folder inside the project or an absolute path.",
            )
        if PurePath(d).is_absolute() and len(parts) < 3:
            raise SpecRuleError(
                ("dir",),
                f"output.dir {self.dir!r} is a filesystem root or a top-level folder; name a folder of its own, e.g. `/scratch/me/runs/exp7`.",
            )
        if self.dir.startswith("~"):
            raise SpecRuleError(("dir",), "output.dir starting with `~` is not expanded; write the full path.")
        return self

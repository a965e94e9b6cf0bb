"""The `attack` section: a relearning (fine-tuning) attack run on each point's unlearned model, on forget rows
held out from the unlearning data, evaluated after each of its step counts. Imports no torch."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from unlearnspec.spec.base import Seed, SpecRuleError, _Section
from unlearnspec.spec.sections import DataSourceSpec
from unlearnspec.spec.training import LoraSpec, OptimizerSpec


class AttackSpec(_Section):
    """Fine-tune a copy of each point's unlearned model on held-out forget rows (plain cross-entropy on every
    valid token) and evaluate it on the spec's `eval` tasks after each of `steps` optimizer steps, cumulatively:
    train to steps[0], evaluate, continue to steps[1], evaluate, ... See docs/objectives/attack.md."""

    data: DataSourceSpec
    """The held-out forget rows (its own hub/files/toy, text_field/chat and select; `data.max_seq_len` and
    `data.append_eos` apply). They must not be rows of `data` or `data.retain`: the run compares every row's
    token fingerprint and refuses an overlap before training."""
    shared_rows: Literal["refuse", "drop"] = "refuse"
    """A held-out row whose tokens equal a row of `data` or `data.retain` (a corpus that repeats texts): `refuse`
    (default: the run stops before training and names the row) or `drop` (it leaves the held-out rows; the run
    says how many, and attack/attack.json records it). Either way no unlearning row is attacked on."""
    steps: list[PositiveInt] = Field(min_length=1)
    """Step counts after which the attacked model is evaluated, strictly increasing (e.g. `[5, 20, 50]`): one
    cumulative attack, so the 20-step model is the 5-step model trained 15 steps more. Counts, never scaled by
    a profile."""
    lr: PositiveFloat
    """Learning rate of the attack (constant)."""
    optimizer: OptimizerSpec
    """The attack's optimizer, e.g. `{name: adamw, weight_decay: 0.0}`."""
    lora: Optional[LoraSpec] = None
    """Attack through fresh LoRA adapters on the unlearned model; unset: full fine-tuning (every parameter)."""
    batch_size: PositiveInt
    """Held-out rows per optimizer step (one process: the attack always runs on the main rank alone)."""
    micro_batch_size: Optional[PositiveInt] = None
    """Rows per forward/backward (memory only: the step's loss is the same mean over its tokens); unset:
    `batch_size`."""
    seed: Seed
    """Seed of the row order (a seeded permutation per pass over the held-out rows) and of LoRA's init."""

    @model_validator(mode="after")
    def _rules(self) -> "AttackSpec":
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise SpecRuleError(
                ("steps",),
                f"`steps: {self.steps}` must be strictly increasing: the attack is one "
                "cumulative run evaluated after each count (e.g. `[5, 20, 50]`).",
            )
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise SpecRuleError(
                ("micro_batch_size",),
                f"`micro_batch_size: {self.micro_batch_size}` does not divide "
                f"`batch_size: {self.batch_size}`; pick a divisor (or unset it).",
            )
        if self.lora is not None and self.lora.dropout:
            raise SpecRuleError(
                ("lora", "dropout"),
                "the attack is seeded and evaluated between its step counts; set `attack.lora.dropout: 0`.",
            )
        return self

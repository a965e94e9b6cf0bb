"""The toy world's knobs (specs/profiles/toy_world.yaml) as a validated Pydantic model.

Everything that changes the generated world, the tiny model or its pretraining lives here; the
cache key of a built world is a hash of this model plus the generator version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, PositiveInt, ValidationError, model_validator

from unlearnspec.errors import Problem, UserError
from unlearnspec.spec.base import STRICT_CONFIG, Seed
from unlearnspec.toy.names import TOY_CORPORA


class _Section(BaseModel):
    model_config = STRICT_CONFIG


class EntitiesConfig(_Section):
    """How many entities of each kind exist (facts = entities x attributes of the kind)."""

    pathogens: int = Field(default=60, ge=4)
    """Forget domain: fictional pathogens, 5 attributes each (host, transmission, technique, origin, toxin)."""
    people: int = Field(default=40, ge=4)
    """Retain domain: fictional people, 3 attributes each (birthplace, profession, birth year)."""
    places: int = Field(default=40, ge=4)
    """Retain domain: fictional places, 3 attributes each (region, river, trade good)."""
    organisms: int = Field(default=40, ge=4)
    """Retain domain: benign fictional organisms, 3 attributes each (habitat, diet, colour)."""
    values_per_attribute: int = Field(default=24, ge=4)
    """Size of each attribute's value pool (values repeat across entities; distractors come from it)."""


class FrequencyConfig(_Section):
    """How often each fact is stated: weight(rank) = (rank + shift) ** -alpha over a seeded ranking
    of the facts of each domain, so some facts are stated often and some rarely (partial knowledge)."""

    alpha: float = Field(default=1.4, ge=0.0)
    """Zipf exponent; 0 states every fact equally often."""
    shift: float = Field(default=10.0, ge=0.0)
    """Rank offset; larger flattens the head of the distribution."""
    canonical_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    """Probability that a fact sentence uses the exact wording of the evaluation stem."""
    extra_facts: list[float] = [0.45, 0.35, 0.2]
    """Probabilities of stating 0, 1, 2, ... further facts of the same entity in one passage."""
    intro_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    """Probability that a passage opens with a sentence naming the entity without stating a fact."""
    filler_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    """Probability that a passage ends with a sentence stating no fact."""

    @model_validator(mode="after")
    def _probs(self) -> "FrequencyConfig":
        if not self.extra_facts or any(p < 0 for p in self.extra_facts) or sum(self.extra_facts) <= 0:
            raise ValueError(
                "`extra_facts` must be a non-empty list of non-negative probabilities with a positive sum."
            )
        return self


class CorporaConfig(_Section):
    """Rows of each toy corpus and how the mixed corpora split between the domains."""

    rows: dict[str, PositiveInt] = dict.fromkeys(TOY_CORPORA, 4000)
    """Rows generated per corpus (toy specs may take up to 2500 of one corpus)."""
    wikitext_forget_share: float = Field(default=0.15, ge=0.0, le=1.0)
    """Share of `wikitext` passages about the forget domain (the rest: retain domain)."""
    ultrachat_forget_share: float = Field(default=0.1, ge=0.0, le=1.0)
    """Share of `ultrachat` conversations about the forget domain."""
    chat_second_turn_prob: float = Field(default=0.3, ge=0.0, le=1.0)
    """Probability that a chat row has a second user/assistant exchange."""

    @model_validator(mode="after")
    def _names(self) -> "CorporaConfig":
        missing = [n for n in TOY_CORPORA if n not in self.rows]
        unknown = [n for n in self.rows if n not in TOY_CORPORA]
        if missing or unknown:
            raise ValueError(
                f"`rows` must name exactly the toy corpora {', '.join(TOY_CORPORA)} (missing: {missing or 'none'}, unknown: {unknown or 'none'})."
            )
        return self


class TasksConfig(_Section):
    """The two four-choice cloze tasks."""

    questions: PositiveInt = 300
    """Questions per task (capped by the number of facts of its domain)."""


class ModelConfig(_Section):
    """Shape of the tiny GPT-NeoX (Pythia architecture) and its byte-level BPE tokenizer."""

    layers: PositiveInt = 4
    """Transformer layers."""
    hidden: PositiveInt = 128
    """Hidden size d."""
    heads: PositiveInt = 4
    """Attention heads (must divide `hidden`)."""
    intermediate: PositiveInt = 512
    """MLP width."""
    max_seq_len: PositiveInt = 64
    """Context length (max_position_embeddings and tokenizer model_max_length)."""
    rotary_pct: float = Field(default=0.25, gt=0.0, le=1.0)
    """Fraction of each head's dimensions that get rotary embeddings (Pythia: 0.25)."""
    vocab_size: PositiveInt = 2048
    """BPE vocabulary size, special token included."""

    @model_validator(mode="after")
    def _heads(self) -> "ModelConfig":
        if self.hidden % self.heads:
            raise ValueError(f"`hidden` ({self.hidden}) must be a multiple of `heads` ({self.heads}).")
        return self


class PretrainConfig(_Section):
    """Deterministic pretraining of the tiny model on a mix of the toy corpora (plain AdamW loop)."""

    steps: PositiveInt = 600
    """Optimizer steps."""
    batch_size: PositiveInt = 32
    """Rows per step (each row truncated to max_seq_len, right-padded)."""
    lr: float = Field(default=3e-3, gt=0.0)
    """Peak learning rate (linear warmup, cosine decay to `final_lr_fraction`)."""
    warmup_steps: int = Field(default=30, ge=0)
    """Linear warmup steps."""
    final_lr_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    """LR at the last step as a fraction of `lr`."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    """AdamW weight decay."""
    seed: Seed = 0
    """Seed of model init and of the row order (0 <= seed < 2**32)."""
    threads: PositiveInt = 1
    """torch CPU threads while pretraining (fixed so runs repeat; 1 degrades gracefully on a busy
    machine, where 2 threads were measured 10-20x slower per step)."""
    mix: dict[str, float] = {"wikitext": 1.0, "bio_forget": 1.0, "bio_retain": 1.0, "ultrachat": 1.0, "lie": 0.0}
    """Sampling weight of each corpus (`lie` states wrong facts: keep it at 0)."""

    @model_validator(mode="after")
    def _mix(self) -> "PretrainConfig":
        unknown = [n for n in self.mix if n not in TOY_CORPORA]
        if unknown:
            raise ValueError(f"`mix` names unknown corpora {unknown}; available: {', '.join(TOY_CORPORA)}.")
        if any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("`mix` weights must be non-negative with a positive sum.")
        return self


class NumericsConfig(_Section):
    """CPU numerics of everything computed on the toy world: pretraining, training, MAGIC, evaluation.

    The low bits of a CPU run depend on which SIMD code path each library picks for the machine, and
    toy results (selected tokens, accuracies) amplify them. Measured (README, Reproducibility): three
    dispatchers decide, ATen's kernels, MKL's GEMM and oneDNN; pinning all three to their portable
    paths gave bitwise-identical pretraining, training and logits under simulated AVX2/AVX512/SSE
    machines. These portable paths are the default (and what the shipped world uses); `native` everywhere
    is about 2x faster but machine-dependent in the last bits."""

    aten_kernels: Literal["default", "native"] = "default"
    """ATen's vectorised kernels (env ATEN_CPU_CAPABILITY, read at torch's first operation in a
    process): `default` = the build without AVX, the same bits on every x86-64 CPU; `native` = AVX2
    or AVX512 as the CPU allows."""
    mkl_cbwr: Literal["COMPATIBLE", "AVX2", "native"] = "COMPATIBLE"
    """MKL's conditional numerical reproducibility branch (env MKL_CBWR, read at MKL's first call):
    `COMPATIBLE` = one code path on every x86-64 CPU; `AVX2` = about twice as fast (measured on the
    toy model's training steps), the same bits on CPUs with AVX2 (x86-64 since about 2013-2015);
    `native` = MKL's per-CPU choice."""
    onednn: bool = False
    """Use oneDNN kernels (torch.backends.mkldnn); they pick their ISA per machine, so off for identical bits."""
    threads: Optional[int] = Field(default=1, gt=0, le=1024)
    """torch CPU threads of every computation on this world (reductions split by thread; MKL's
    reproducibility holds for a fixed count). Set after the profile's `threads`, so it wins; unset:
    leave the count alone."""


class WorldConfig(_Section):
    """The embedded toy world: generator seed, sizes, fact frequencies, model shape, pretraining."""

    seed: Seed = 1234
    """Seed of the world generator (names, values, facts, corpora, questions)."""
    entities: EntitiesConfig = EntitiesConfig()
    """Entity counts."""
    frequency: FrequencyConfig = FrequencyConfig()
    """How unequally often facts are stated."""
    corpora: CorporaConfig = CorporaConfig()
    """Corpus sizes and mixes."""
    tasks: TasksConfig = TasksConfig()
    """Evaluation tasks."""
    model: ModelConfig = ModelConfig()
    """Tiny model and tokenizer."""
    pretrain: PretrainConfig = PretrainConfig()
    """Pretraining."""
    numerics: NumericsConfig = NumericsConfig()
    """CPU numerics pins of every computation on this world (part of the cache key)."""


def load_world_config(path: str | Path) -> WorldConfig:
    """Read and validate a toy world file; every mistake becomes a `UserError` naming the field."""
    from unlearnspec.spec.yamlio import read_yaml_file  # bounded depth and size, duplicate keys refused

    path = Path(path)
    data: Any
    data, _ = read_yaml_file(path)
    if not isinstance(data, dict):
        raise UserError.one(str(path), "a toy world file must be a YAML mapping (seed, entities, frequency, ...).")
    try:
        return WorldConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key; delete it or fix its spelling"
            problems.append(Problem(str(path), loc, msg[0].lower() + msg[1:] + ("" if msg.endswith(".") else ".")))
        raise UserError(problems) from None

"""The steps a recipe is made of: prepare the token grid and weights, train, evaluate, save the model.

Each step takes the job's spec and the run context; none knows which executor runs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Optional, Protocol, Sequence, runtime_checkable

from unlearnspec.run.context import Prepared, RunContext  # noqa: F401 - Prepared: re-exported
from unlearnspec.run.plan import Job, spec_hash
from unlearnspec.run.results import BatchRecord
from unlearnspec.spec.schema import Spec

if TYPE_CHECKING:
    from torch import nn
    from transformers import (
        PreTrainedTokenizerBase,
        Trainer,
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )

    from unlearnspec.evaluation import EvalResult
    from unlearnspec.train.trainer import WeightedSFTTrainer


@runtime_checkable
class Pretrained(Protocol):
    """What `save_model` writes: a transformers model, or a peft model (its LoRA adapters)."""

    def save_pretrained(self, save_directory: Path, *, safe_serialization: bool) -> object: ...


def prepare(job: Job, ctx: RunContext) -> Prepared:
    """Token grid [N, S] + fingerprint -> score files checked against it (and the built-in sources, `random`
    and `toy:truth`, built for it; leaf tasks `source.leaf`; aggregates over questions `min_q(source)`, ...
    and over leaf tasks `min_t(source)`, ...)
    -> signed per-token weights. Computed once per spec and run (all points of a
    sweep share it)."""
    key = spec_hash(job.spec)
    if key in ctx.prepared:
        return ctx.prepared[key]
    from unlearnspec.data import GridFingerprints, SpecGrid, build_grid, load_texts
    from unlearnspec.scores import checked_scores, leaf_score_path, load_score_file, token_stats, token_weights
    from unlearnspec.spec.rules import parse_source
    from unlearnspec.train.modeling import load_tokenizer
    from unlearnspec.train.trainer import grid_dataset

    spec, assets = job.spec, ctx.assets
    tokenizer = load_tokenizer(spec.model, assets)
    tok_id = assets.tokenizer_id(spec.model)
    texts, rows = load_texts(spec.data, job.spec_path, tokenizer, assets)
    grid = build_grid(texts, tokenizer, spec.data.max_seq_len, tok_id, spec.data.append_eos, rows)

    fingerprint_at = GridFingerprints(texts, tokenizer, tok_id, spec.data, rows)  # names what differs on a mismatch

    scores = {}
    for name, path in job.inputs:
        scores[name] = checked_scores(
            load_score_file(path), spec.scores[name], name, grid.labels, grid.fingerprint, fingerprint_at
        )
    for name, src in spec.scores.items():  # `random` / `toy:truth`: built for this grid, then checked like a file
        if src.built_in:
            from unlearnspec.scores.builtin import builtin_score_file

            built = builtin_score_file(name, src, SpecGrid(spec, job.spec_path, assets, grid, tokenizer))
            scores[name] = checked_scores(built, src, name, grid.labels, grid.fingerprint, fingerprint_at)
    inputs = dict(job.inputs)
    aggregates: dict[str, list[str]] = {}
    for full in sorted(spec.tokens.referenced_sources() - set(scores)):  # `source.leaf`: one leaf task's scores
        agg, name, leaf = parse_source(full)
        if leaf is not None and name in inputs:
            scores[full] = checked_scores(
                load_score_file(leaf_score_path(inputs[name], name, leaf)),
                spec.scores[name],
                full,
                grid.labels,
                grid.fingerprint,
                fingerprint_at,
            )
        elif agg is not None and name in inputs:  # `min_q(source)`, `min_t(source)`, ...: over questions, leaf tasks
            aggregates.setdefault(name, []).append(full)
    for name, fulls in aggregates.items():
        from unlearnspec.scores.aggregate import source_aggregates

        scores.update(
            source_aggregates(fulls, inputs[name], spec.scores[name], grid.labels, grid.fingerprint, fingerprint_at)
        )
    weights = token_weights(spec.tokens, scores, grid.labels)
    stats = token_stats(weights, grid.labels, spec.loss.normalizer)
    if spec.objective.name != "weighted":  # the rule selects forget tokens; the objective sets the direction
        ctx.say(
            f"[tokens] {spec.name}: {stats.selected_tokens:,} of {stats.valid_tokens:,} valid forget tokens selected "
            f"({stats.selected_fraction:.1%}) for objective {spec.objective.name}"
        )
    else:
        ctx.say(
            f"[tokens] {spec.name}: {stats.selected_tokens:,} of {stats.valid_tokens:,} valid tokens selected "
            f"({stats.selected_fraction:.1%}); {stats.ascending_tokens:,} ascend, {stats.descending_tokens:,} descend; "
            f"normalizer {stats.normalizer}, per-token step x{stats.per_token_lr_factor:.2f} vs an all-tokens run"
        )
    from unlearnspec.run.objectives import retain_grid

    retain = retain_grid(spec, job.spec_path, tokenizer, ctx)
    from unlearnspec.run.attack import attack_grid

    held_out = attack_grid(spec, job.spec_path, tokenizer, ctx, grid, retain)  # refuses rows shared with grid/retain
    ctx.prepared[key] = Prepared(tokenizer, grid, weights, stats, grid_dataset(grid, weights), retain, held_out)
    return ctx.prepared[key]


def batch_record(spec: Spec, prep: Prepared, ctx: RunContext) -> BatchRecord:
    """The spec's global batch and its split over this launch's ranks, as the trainer derives it."""
    from unlearnspec.spec.batch import batch_layout

    layout = batch_layout(spec.training, ctx.world_size, launch="this launch", n_rows=prep.grid.input_ids.shape[0])
    return BatchRecord(**layout.as_dict())


def train(
    spec: Spec,
    prep: Prepared,
    workdir: Path,
    ctx: RunContext,
    callbacks: Sequence[TrainerCallback] = (),
    exact_replay: bool = False,
) -> WeightedSFTTrainer:
    """Train one point; returns the finished trainer. `exact_replay` (score runs) trains with the replay
    attention kernel and the full-logits loss, so the recorded run is what the reverse pass differentiates."""
    import torch
    from transformers import TrainerCallback

    from unlearnspec.train.modeling import apply_lora, load_model
    from unlearnspec.train.parallel import Placement
    from unlearnspec.train.trainer import (
        CURVES_DIR,
        LossSetup,
        WeightedSFTTrainer,
        curves_run_name,
        sft_config,
        total_steps,
    )

    lr = spec.training.lrs[0]
    device = ctx.device_for(spec)
    torch.manual_seed(spec.training.seed)
    model = load_model(spec.model, ctx.assets, dropout=spec.training.dropout, device=device)
    if exact_replay:
        from unlearnspec.magic.attention import use_replay_attention

        use_replay_attention(model)
    from unlearnspec.run.objectives import point_objective

    objective = point_objective(spec, prep, ctx, device, fused=not exact_replay)  # None: `weighted`
    if objective is not None:
        objective.prepare_model(model)  # RMU: which parameters train, the frozen copy (before any wrapper)
    if spec.lora is not None:
        model = apply_lora(model, spec.lora)
    n = prep.grid.input_ids.shape[0]
    steps = total_steps(spec.training, n)
    task = ctx.task(f"train {spec.name} lr={lr:g}", total=steps)

    class Progress(TrainerCallback):
        def on_step_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
        ) -> None:
            ctx.advance(task, completed=state.global_step)

    trainer = WeightedSFTTrainer(
        model=model,
        args=sft_config(
            spec.training,
            lr,
            workdir / "trainer",
            n,
            Placement(torch.device(device), spec.parallel),
            run_name=curves_run_name(spec.name, f"lr={lr:g}"),
        ),
        train_dataset=prep.dataset,
        processing_class=prep.tokenizer,
        training=spec.training,  # the trainer builds the spec's optimizer and schedule (FSDP shards first)
        callbacks=[*callbacks, Progress()],
        loss=LossSetup(spec.loss.normalizer, fused_head=not exact_replay, objective=objective),
        curves_dir=workdir / CURVES_DIR,  # inside the point's folder (trainer/ is removed after training)
    )
    if objective is not None:
        objective.attach(trainer)  # NPO: the reference log-probs (cached per forget grid and model)
    for cb in callbacks:
        attach = getattr(cb, "attach", None)
        if attach is not None:
            attach(trainer)
    try:
        trainer.train()
    finally:
        ctx.done(task)
    return trainer


def evaluate(
    spec: Spec, spec_path: Path, model: nn.Module, tokenizer: PreTrainedTokenizerBase, ctx: RunContext
) -> EvalResult:
    """lm-eval on the in-memory model, on the main process only (the others wait for it)."""
    from unlearnspec.evaluation import evaluate_model

    assert spec.eval is not None
    task = ctx.task(f"evaluate {', '.join(t.name for t in spec.eval.tasks)}", total=None)
    try:
        return evaluate_model(model, tokenizer, spec.eval, ctx.include_paths(spec_path))
    finally:
        ctx.done(task)


def save_model(spec: Spec, model: nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path) -> str:
    """Write `folder/model` as safetensors: the whole model with its tokenizer (LoRA merged in) for
    `save_model: final`, the peft adapter for `adapter` (call that before merging for evaluation)."""
    from unlearnspec.train.modeling import merged_for_eval

    target = folder / "model"
    to_save = model if spec.output.save_model == "adapter" else merged_for_eval(model, spec.lora, force=True)
    if not isinstance(to_save, Pretrained):
        raise TypeError(f"a {type(to_save).__name__} has no save_pretrained: not a transformers or peft model")
    to_save.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    from unlearnspec.safeio import follow_umask

    follow_umask(target)  # safetensors writes 0600; results on a shared filesystem follow the umask
    return "model"


def write_spec(job: Job, folder: Path) -> None:
    """The resolved spec of this job: `unlearnspec run <folder>/spec.yaml` reproduces it."""
    from unlearnspec.safeio import write_text
    from unlearnspec.spec.load import dump_spec

    write_text(folder / "spec.yaml", dump_spec(job.spec))


class Timer:
    """Wall seconds of a block, rounded for records."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(
        self, kind: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.seconds = round(time.perf_counter() - self.start, 3)


def gathered_model(trainer: Trainer, spec: Spec, ctx: RunContext) -> Optional[nn.Module]:
    """The trained model as one plain module on rank 0. Under FSDP every rank joins the all-gather of the
    shards (a collective), then rank 0 loads them into a freshly loaded copy of the base model."""
    if ctx.world_size == 1 or spec.parallel is None or spec.parallel.strategy != "fsdp":
        return trainer.model
    from unlearnspec.train.modeling import load_model
    from unlearnspec.train.parallel import full_state_dict

    state = full_state_dict(trainer.accelerator.unwrap_model(trainer.model))
    if not ctx.is_main:
        return None
    plain = load_model(spec.model, ctx.assets, dropout=0.0, device=ctx.device_for(spec))
    plain.load_state_dict(state, strict=False)
    return plain

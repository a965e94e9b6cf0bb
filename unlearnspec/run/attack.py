"""A point's relearning attack: the held-out grid (refused when a row is also unlearning data, by row fingerprint),
and the attack itself on a copy of the unlearned model, evaluated after each step count (attack/k=<k>/)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional

from unlearnspec.errors import UserError
from unlearnspec.records import HeldOut
from unlearnspec.run.context import Prepared, RunContext
from unlearnspec.run.plan import Job
from unlearnspec.run.results import SAMPLES_FILE, AttackResult
from unlearnspec.run.rundirs import write_json
from unlearnspec.spec.schema import Spec
from unlearnspec.spec.training import LoraSpec

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from unlearnspec.data import TokenGrid

ATTACK_DIR = "attack"
"""The attack's folder inside a point's folder: attack.json (the held-out rows) and one k=<k>/ per step count."""


def attack_grid(
    spec: Spec,
    spec_path: Path,
    tokenizer: PreTrainedTokenizerBase,
    ctx: RunContext,
    forget: TokenGrid,
    retain: Optional[TokenGrid],
) -> Optional[HeldOut]:
    """The held-out rows [N_a, max_seq_len] of `attack.data` (None without `attack`), built as the forget grid is;
    a row that is also a row of `data` or `data.retain` (same row fingerprint) is refused before anything trains,
    or dropped with `attack.shared_rows: drop`."""
    if spec.attack is None:
        return None
    from unlearnspec.data import build_grid, load_texts

    texts, rows = load_texts(spec.attack.data, spec_path, tokenizer, ctx.assets, loc="attack.data")
    grid = build_grid(
        texts, tokenizer, spec.data.max_seq_len, ctx.assets.tokenizer_id(spec.model), spec.data.append_eos, rows
    )
    used = {"data": forget, "data.retain": retain}
    shared = held_out_overlap(grid, used)
    dropped = 0
    if shared and spec.attack.shared_rows == "drop":
        keep = [i for i in range(grid.input_ids.shape[0]) if i not in set(shared)]
        if not keep:
            raise UserError.one(
                str(spec_path),
                f"every one of the {len(shared)} held-out rows of `attack.data` is also a row "
                "of the unlearning data, so `shared_rows: drop` leaves none. Select other rows.",
                loc="attack.data",
            )
        grid = build_grid(
            [texts[i] for i in keep],
            tokenizer,
            spec.data.max_seq_len,
            ctx.assets.tokenizer_id(spec.model),
            spec.data.append_eos,
            [rows[i] for i in keep],
        )
        dropped = len(shared)
    elif shared:
        raise _overlap_error(grid, shared, str(spec_path))
    ctx.say(
        f"[data] {spec.name}: attack rows {grid.input_ids.shape[0]} x {spec.data.max_seq_len}, none in the "
        f"unlearning data"
        + (f" ({dropped} shared rows dropped)" if dropped else "")
        + f" (fingerprint {grid.fingerprint[:12]})"
    )
    return HeldOut(grid, dropped)


def held_out_overlap(held: TokenGrid, used: Mapping[str, Optional[TokenGrid]]) -> dict[int, str]:
    """Held-out row index -> the name of the first `used` grid holding a row with its fingerprint."""
    from unlearnspec.train.attack import row_fingerprints, shared_rows

    mine = row_fingerprints(held.input_ids, held.attention_mask, held.tokenizer_id)
    found: dict[int, str] = {}
    for name, grid in used.items():
        if grid is None:
            continue
        for i in shared_rows(mine, row_fingerprints(grid.input_ids, grid.attention_mask, grid.tokenizer_id)):
            found.setdefault(i, name)
    return found


def _overlap_error(held: TokenGrid, shared: dict[int, str], where: str) -> UserError:
    first = min(shared)
    names = " and ".join(f"`{n}`" for n in dict.fromkeys(shared.values()))
    text = held.texts[first][:60] if held.texts else ""
    return UserError.one(
        where,
        f"{len(shared)} of the {held.input_ids.shape[0]} held-out rows of `attack.data` are also rows of {names} (the "
        f"same tokens; the first, held-out row {first}: {text!r}), so the attack would relearn rows the unlearning "
        "trained on. Select rows the unlearning does not use (another split, or an `attack.data.select.offset` past "
        "them); if the rows differ by position but the corpus repeats texts, set `attack.shared_rows: drop` to leave "
        "the repeated ones out of the attack.",
        loc="attack.data",
    )


def unlearned_copy(model: nn.Module, lora: Optional[LoraSpec], fresh: Callable[[], nn.Module]) -> nn.Module:
    """The evaluated model's weights (LoRA merged in, in place: the point is already evaluated and saved) in a freshly
    built model, every parameter trainable. Not a deepcopy: an objective's hooks and state stay behind (RMU's
    activation capture holds non-leaf tensors, which deepcopy refuses, and would keep capturing)."""
    from unlearnspec.train.modeling import merged_for_eval

    plain = merged_for_eval(model, lora, force=True)
    victim = fresh()
    victim.load_state_dict(plain.state_dict())
    return victim.requires_grad_(True)


def run_attack(
    job: Job, model: nn.Module, prep: Prepared, ctx: RunContext, workdir: Path
) -> Optional[list[AttackResult]]:
    """Fine-tune a copy of the evaluated `model` on the held-out rows and evaluate it after each step count
    (None when the spec has no `attack`). Main rank only: the attack is one process whatever trained the point."""
    spec = job.spec
    attack = spec.attack
    if attack is None or not ctx.is_main:
        return None
    held, eval_spec = prep.attack, spec.eval
    assert held is not None and eval_spec is not None, "a spec with `attack` has held-out rows and `eval`"
    import torch

    from unlearnspec.evaluation import evaluate_model
    from unlearnspec.train.attack import relearn
    from unlearnspec.train.modeling import apply_lora, load_model

    device = ctx.device_for(spec)
    victim = unlearned_copy(model, spec.lora, lambda: load_model(spec.model, ctx.assets, dropout=0.0, device=device))
    torch.manual_seed(attack.seed)  # LoRA's initialisation
    if attack.lora is not None:
        victim = apply_lora(victim, attack.lora)
    out = workdir / ATTACK_DIR
    grid = held.grid
    write_json(
        out / "attack.json",
        {
            "attack": attack.model_dump(mode="json", exclude_none=True),
            "rows": int(grid.input_ids.shape[0]),
            "dropped_shared_rows": held.dropped,
            "fingerprint": grid.fingerprint,
        },
    )
    results: list[AttackResult] = []
    task = ctx.task(f"attack {spec.name}", total=attack.steps[-1])
    since = [time.perf_counter()]  # start of the attack training since the previous count

    def after(k: int, trained: nn.Module, losses: list[float]) -> None:
        trained_for = round(time.perf_counter() - since[0], 3)
        folder = out / f"k={k}"
        ctx.say(f"[attack] {spec.name} {job.point}: {k} steps (loss {losses[-1]:.3f}); evaluating")
        start = time.perf_counter()
        result = evaluate_model(
            trained, prep.tokenizer, eval_spec, ctx.include_paths(job.spec_path)
        )  # as the point's own
        evaluated_for = round(time.perf_counter() - start, 3)
        write_json(folder / "eval.json", result.to_json())
        write_json(folder / SAMPLES_FILE, result.samples)
        results.append(
            AttackResult(
                steps=k,
                metrics=dict(result.metrics),
                loss=losses[-1],
                samples_file=f"{job.out.name}/{ATTACK_DIR}/k={k}/{SAMPLES_FILE}",
                train_seconds=trained_for,
                eval_seconds=evaluated_for,
            )
        )
        ctx.advance(task, completed=k)
        since[0] = time.perf_counter()

    try:
        relearn(victim, grid, attack, device, after)
    finally:
        ctx.done(task)
    return results

"""torchrun worker (and in-process helper): train a tiny GPT-NeoX with an unlearning objective, save the parameters.

Usage: torchrun --nproc-per-node W tests/workers/objective_train.py OUT_DIR CASES_JSON
Each case: {"name", "objective": {...the spec section...}, "batch_size" (global), "micro_batch_size" (optional), "normalizer", "lr"}.
Rank 0 writes OUT_DIR/<name>.pt: the final and initial parameters (float64, name order) and the logged losses.
Forget rows: 16 tiny texts with a random selection (two rows select nothing); retain rows: 12 other texts, so the
pairing i -> i mod 12 wraps. The test process imports `run_case` to train the one-process references the same way.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROWS, RETAIN_ROWS, SEQ, STEPS = 16, 12, 24, 2


def grids():
    from tests.tiny import tiny_texts, tiny_tokenizer
    from unlearnspec.data import build_grid

    forget = build_grid(tiny_texts(ROWS, 0), tiny_tokenizer(), SEQ, "tiny")
    retain = build_grid(tiny_texts(RETAIN_ROWS, 11), tiny_tokenizer(), SEQ, "tiny")
    g = torch.Generator().manual_seed(5)
    weights = (torch.rand(forget.input_ids.shape, generator=g) < 0.5).float() * forget.valid_targets
    weights[3] = 0.0  # rows with nothing selected: no NPO/SimNPO term, no forget tokens
    weights[10] = 0.0
    return forget, retain, weights


def flat(named) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float64).cpu() for _, t in sorted(named, key=lambda kv: kv[0])])


def build(case: dict, workdir: Path, model=None):
    """(trainer, objective) for a case, put together as unlearnspec.run.steps.train does."""
    from pydantic import TypeAdapter

    from tests.tiny import tiny_model, tiny_tokenizer
    from unlearnspec.spec import ObjectiveSpec, ParallelSpec, TrainingSpec
    from unlearnspec.train.objectives import OBJECTIVES, ReferenceCache, RetainRows, build_objective
    from unlearnspec.train.parallel import Placement
    from unlearnspec.train.trainer import LossSetup, WeightedSFTTrainer, grid_dataset, sft_config

    forget, retain, weights = grids()
    spec = TypeAdapter(ObjectiveSpec).validate_python(case["objective"])
    lr = case.get("lr", 0.1)
    training = TrainingSpec.model_validate(
        dict(
            optimizer={"name": case.get("optimizer", "sgd")},
            lr=lr,
            batch_size=case["batch_size"],
            micro_batch_size=case.get("micro_batch_size"),
            max_steps=case.get("steps", STEPS),
            seed=0,
            shuffle=case.get("shuffle", False),
        )
    )
    reference = None
    if OBJECTIVES[spec.name].needs_reference:
        reference = ReferenceCache(
            forget.input_ids,
            forget.attention_mask,
            forget.labels,
            forget.fingerprint,
            {"model": "tiny"},
            workdir / "cache",
            4,
            say=lambda _m: None,
        )
    rows = RetainRows(retain.input_ids, retain.attention_mask, retain.labels, retain.fingerprint)
    objective = build_objective(
        spec, case.get("normalizer", "valid"), rows if getattr(spec, "alpha", 0) else None, True, reference
    )
    model = model if model is not None else tiny_model()
    objective.prepare_model(model)
    if case.get("lora"):  # as steps.train: LoRA after the objective's preparation; B perturbed so adapters matter
        from unlearnspec.spec import LoraSpec
        from unlearnspec.train.modeling import apply_lora

        model = apply_lora(model, LoraSpec(rank=4))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    args = sft_config(
        training, lr, workdir / "trainer", ROWS, Placement(device=torch.device("cpu"), parallel=ParallelSpec())
    )
    trainer = WeightedSFTTrainer(
        model=model,
        args=args,
        train_dataset=grid_dataset(forget, weights),
        processing_class=tiny_tokenizer(),
        training=training,
        loss=LossSetup(normalizer=case.get("normalizer", "valid"), objective=objective),
    )
    objective.attach(trainer)
    return trainer, objective


def run_case(case: dict, out: Path) -> dict:
    from accelerate.state import AcceleratorState

    from tests.tiny import tiny_model

    AcceleratorState._reset_state(reset_partial_state=False)
    initial = flat(tiny_model().named_parameters())
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = build(case, Path(tmp))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        model = trainer.accelerator.unwrap_model(trainer.model)
        params = flat(model.named_parameters())
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    result = {"name": case["name"], "params": params, "initial": initial, "losses": losses, "seconds": seconds}
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(result, out / f"{case['name']}.pt")
    return result


def main() -> None:
    out, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
    for case in cases:
        run_case(case, out)


if __name__ == "__main__":
    main()

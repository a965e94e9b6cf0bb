"""torchrun worker for unlearnspec.train.dist: sharing results and failing together on 2 CPU ranks.

Usage: torchrun --nproc-per-node 2 tests/workers/dist_fail.py OUT_DIR MODE
MODE `agreed`: run_on_main success and failure, a rank-1 failure inside fail_together, a
WeightedSFTTrainer run whose loss becomes NaN on rank 1 only, and an lm-eval evaluation of the toy
model on rank 0 only (both ranks get its metrics); each rank writes OUT_DIR/rank<r>.json.
MODE `unagreed`: the same diverging run with the trainer's cross-rank agreement removed (rank 1 raises
alone); the launch must still end (torchrun stops rank 0) and rank 0 records nothing.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

import unlearnspec.toy  # noqa: E402,F401 - registers the embedded toy world, as the `unlearnspec` command does at start
from unlearnspec.train import dist


def diverging_run() -> str:
    """Train 3 steps on 2 ranks; rank 1's loss is NaN at step 1. Returns what happened on this rank."""
    from tests.tiny import tiny_model, tiny_texts, tiny_tokenizer
    from unlearnspec.data import build_grid
    from unlearnspec.spec import TrainingSpec
    from unlearnspec.train.parallel import Placement
    from unlearnspec.train.trainer import TrainingDiverged, WeightedSFTTrainer, grid_dataset, sft_config

    grid = build_grid(tiny_texts(24, 0), tiny_tokenizer(), 16, "tiny")
    training = TrainingSpec.model_validate(
        dict(optimizer={"name": "sgd"}, lr=0.1, batch_size=4, max_steps=3, seed=0, shuffle=False)
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = WeightedSFTTrainer(
            model=tiny_model(),
            args=sft_config(training, 0.1, Path(tmp), 24, Placement(device=torch.device("cpu"))),
            train_dataset=grid_dataset(grid, grid.valid_targets.float()),
            processing_class=tiny_tokenizer(),
            training=training,
        )
        if dist.rank() == 1:
            original = trainer.compute_loss

            def poisoned(model, inputs, *args, **kwargs):
                if trainer.state.global_step == 1:
                    inputs["token_weights"] = inputs["token_weights"] * float("nan")
                return original(model, inputs, *args, **kwargs)

            trainer.compute_loss = poisoned
        try:
            trainer.train()
        except TrainingDiverged as exc:
            return f"diverged at step {exc.step}"
    return "finished"


def evaluate_toy() -> dict[str, float]:
    """lm-eval of the toy model on 24 questions per task, in this process only (what run_on_main wraps)."""
    from unlearnspec.evaluation import evaluate_model
    from unlearnspec.spec import load_spec
    from unlearnspec.spec.assets import Assets
    from unlearnspec.spec.profile import default_toy_profile
    from unlearnspec.train.modeling import load_model, load_tokenizer

    repo = Path(__file__).resolve().parents[2]
    spec = load_spec(repo / "specs" / "exp7_all_tokens.yaml", profile=default_toy_profile())
    assets = Assets()

    assert spec.eval is not None
    eval_spec = spec.eval.model_copy(update={"tasks": [t.model_copy(update={"limit": 24}) for t in spec.eval.tasks]})
    model = load_model(spec.model, assets, device="cpu")
    result = evaluate_model(
        model, load_tokenizer(spec.model, assets), eval_spec, assets.include_paths(repo / "specs" / "x.yaml", toy=True)
    )
    return {task: m.acc for task, m in result.metrics.items()}


def agreed(out: Path) -> None:
    record: dict[str, object] = {"rank": dist.rank(), "world": dist.world_size(), "is_main": dist.is_main()}
    record["shared"] = dist.run_on_main(lambda: {"metric": 0.25, "by": dist.rank()})

    def fails() -> None:
        raise OSError("disk full while writing results.json")

    try:
        dist.run_on_main(fails)
    except dist.RankFailed as exc:
        record["main_failure"] = f"RankFailed({exc.rank}): {exc.reason}"
    except OSError as exc:
        record["main_failure"] = f"own: {exc}"
    try:
        with dist.fail_together():
            if dist.rank() == 1:
                raise ValueError("point lr=0.1 failed on rank 1")
    except dist.RankFailed as exc:
        record["rank1_failure"] = f"RankFailed({exc.rank}): {exc.reason}"
    except ValueError as exc:
        record["rank1_failure"] = f"own: {exc}"
    record["any_rank"] = dist.any_rank(dist.rank() == 1)
    record["gathered"] = dist.gather_objects(dist.rank() * 10)
    record["training"] = diverging_run()
    calls: list[int] = []

    def evaluate_once() -> dict[str, float]:
        calls.append(dist.rank())
        return evaluate_toy()

    record["eval"] = dist.run_on_main(evaluate_once)  # lm-eval on rank 0 while rank 1 waits
    record["eval_calls"] = calls
    dist.barrier()
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(record))


def unagreed(out: Path) -> None:
    from unlearnspec.train.trainer import WeightedSFTTrainer

    WeightedSFTTrainer._diverged = lambda self, loss: not bool(torch.isfinite(loss))  # the mutation: no agreement
    (out / f"rank{dist.rank()}.json").write_text(json.dumps({"training": diverging_run()}))


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    dist.init(timeout_s=120)
    {"agreed": agreed, "unagreed": unagreed}[mode](out)


if __name__ == "__main__":
    main()

"""Per-question scores: K questions through one batched reverse pass vs K separate single-question passes.

On the toy score run of specs/fixed/magic_wmdp.yaml (toy GPT-NeoX, 250 rows x 64 tokens, 62 SGD steps at
toy lr 0.05, `sqrt` checkpoints): train it once with the score job's own steps (MagicCallback), then,
alternating for `--rounds` rounds in one process, (a) `magic_scores` once per question for the first K
toy_wmdp questions and (b) `per_question_scores` with chunk K (one pass). Checks that both give the same
scores, then prints each round's times; the last line is `batched_over_separate=<median (b)/(a)>`.

    python benchmarks/batched_adjoints.py [--k 16] [--rounds 3] [--spec specs/fixed/magic_wmdp.yaml] [--profile]

Cost: about 2 x K + 2 reverse passes of 62 steps per round (~3 minutes per round for K = 16 on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import unlearnspec.toy  # noqa: E402,F401 - registers the embedded toy world, as the `unlearnspec` command does at start

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


def recorded_run(spec_path: Path, workdir: Path):
    """(model, grid, trajectory, query) of the spec's toy score run, as `run/recipes/score.py::run_score` builds them."""
    from unlearnspec.magic.callback import MagicCallback
    from unlearnspec.magic.query import build_query
    from unlearnspec.run.steps import prepare, train
    from unlearnspec.run.study import RunOptions, make_context, make_plan, quiet_libraries
    from unlearnspec.spec.profile import default_toy_profile
    from unlearnspec.train.trainer import total_steps

    quiet_libraries()
    options = RunOptions(profile=default_toy_profile(), out=workdir / "scores")
    ctx = make_context(options, say=lambda m: None)
    plan = make_plan([spec_path], options, ctx)
    job = plan.job(plan.specs[0].points[0])
    spec, magic = job.spec, job.spec.magic
    prep = prepare(job, ctx)
    steps = total_steps(spec.training, prep.grid.input_ids.shape[0])
    callback = MagicCallback(
        steps,
        magic.checkpoints,
        magic.storage,
        workdir / "states",
        precision=spec.training.precision,
        dropout=spec.training.dropout,
    )
    trainer = train(spec, prep, workdir / "train", ctx, callbacks=[callback], exact_replay=True)
    query = build_query(
        magic.query, trainer.model, prep.tokenizer, include_path=[str(p) for p in ctx.include_paths(job.spec_path)]
    )
    return trainer.model, prep.grid, callback.trajectory, query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "fixed" / "magic_wmdp.yaml")
    parser.add_argument("--profile", action="store_true", help="print a torch profile of one batched pass")
    args = parser.parse_args()

    import torch

    from unlearnspec.magic import magic_scores
    from unlearnspec.magic.per_question import QuestionChunks, per_question_scores
    from unlearnspec.magic.query import QueryLoss

    with tempfile.TemporaryDirectory(prefix="batched-adjoints-") as tmp:
        model, grid, trajectory, query = recorded_run(args.spec, Path(tmp))
        rows = list(range(args.k))
        print(
            f"toy score run: {trajectory.total_steps} steps, grid {tuple(grid.labels.shape)}, "
            f"{sum(p.numel() for p in model.parameters())} parameters, K={args.k} questions, "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )

        def separate() -> torch.Tensor:
            return torch.stack(
                [magic_scores(model, grid, trajectory, QueryLoss(model, query.batch.subset([q], "q"), 1)) for q in rows]
            )

        def batched() -> torch.Tensor:
            return per_question_scores(model, grid, trajectory, query, QuestionChunks(args.k, rows)).scores

        ratios = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            a = separate()
            t1 = time.perf_counter()
            b = batched()
            t2 = time.perf_counter()
            err = float((a - b).abs().max() / a.abs().max())
            assert err < 1e-4, f"batched and separate scores differ: max relative error {err:.2e}"
            ratios.append((t2 - t1) / (t1 - t0))
            print(
                f"round {r + 1}: separate {t1 - t0:.1f}s, batched {t2 - t1:.1f}s, ratio {ratios[-1]:.3f} "
                f"(max |diff| / max |score| {err:.1e})",
                flush=True,
            )
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                batched()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    print(f"batched_over_separate={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()

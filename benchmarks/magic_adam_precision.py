"""Float32 vs float64 MAGIC scores through AdamW on the toy world (the regime of specs/fixed_adamw/).

Also printed: the float32 run's `ReplayStats.adjoint_gain` and `rounding_risk` (gain x 2^-24), the
run-time figure `magic_scores` warns on.

For each setting, the same run is trained and scored twice through the real trainer + MagicCallback:
in float32 and in float64 (the toy model cast). Printed per setting: the relative L2 gap of the
per-token scores ("full": float32 run vs float64 run), the gap of float64 scores recomputed on the
float32 run's own trajectory ("reverse only": isolates the reverse pass's arithmetic from the
training run's own rounding), the Spearman correlation of per-token scores, and the share of
valid tokens whose sign flips. The last line is `adam_fp32_gap=<full gap of the first setting>`.

    python benchmarks/magic_adam_precision.py [--eps 1e-8 1e-6] [--lr-scale 1 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings

import torch

import unlearnspec.toy  # noqa: E402,F401 - registers the embedded toy world, as the `unlearnspec` command does at start

warnings.simplefilter("ignore")  # the rounding warning is what this script measures; print figures instead
REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "fixed_adamw" / "magic_wmdp.yaml"


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def score_run(spec, spec_path: Path, dtype: str, ctx, prep):
    """(scores [N,S] float64, trajectory, model, query, stats) of one MAGIC run through the real trainer."""
    from unlearnspec.magic import ReplayStats, magic_scores
    from unlearnspec.magic.callback import MagicCallback
    from unlearnspec.magic.query import build_query
    from unlearnspec.run.steps import train
    from unlearnspec.train.trainer import total_steps

    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"dtype": dtype})})
    steps = total_steps(spec.training, prep.grid.input_ids.shape[0])
    callback = MagicCallback(steps, "all", precision=spec.training.precision)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train(spec, prep, Path(tmp), ctx, callbacks=[callback], exact_replay=True)
    model = trainer.model
    include = [str(p) for p in ctx.include_paths(spec_path)]
    query = build_query(spec.magic.query, model, prep.tokenizer, include_path=include)
    stats = ReplayStats()
    scores = magic_scores(model, prep.grid, callback.trajectory, query, dtype=None, stats=stats)
    return scores.double(), callback.trajectory, model, query, stats


def as_float64(trajectory):
    """The same trajectory with every stored state cast to float64 (RAM)."""
    from dataclasses import replace

    from unlearnspec.magic import RamStore

    store = RamStore()
    for step in trajectory.store.steps():
        store.put(step, {k: v.double() for k, v in trajectory.store.get(step).items()})
    return replace(trajectory, store=store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-8])
    parser.add_argument("--lr-scale", type=float, nargs="+", default=[1.0], help="multiply the spec's (toy) lr")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unlearnspec.magic import magic_scores
    from unlearnspec.run.steps import prepare
    from unlearnspec.run.study import RunOptions, make_context, make_plan
    from unlearnspec.spec.profile import default_toy_profile

    options = RunOptions(profile=default_toy_profile())
    ctx = make_context(options, say=lambda s: None)
    plan = make_plan([SPEC], options, ctx)
    job = plan.job(plan.specs[0].points[0])
    base = job.spec
    prep = prepare(job, ctx)
    valid = prep.grid.labels != -100
    valid[:, 0] = False
    first_gap = None
    for eps in args.eps:
        for scale in args.lr_scale:
            opt = base.training.optimizer.model_copy(update={"eps": eps})
            training = base.training.model_copy(update={"optimizer": opt, "lr": base.training.lrs[0] * scale})
            spec = base.model_copy(update={"training": training})
            s64, _, _, _, _ = score_run(spec, SPEC, "float64", ctx, prep)
            s32, traj32, model32, query32, stats32 = score_run(spec, SPEC, "float32", ctx, prep)
            model32.double()
            s64_on_32 = magic_scores(model32, prep.grid, as_float64(traj32), query32, dtype=None)
            full = float((s32 - s64).norm() / s64.norm())
            reverse = float((s32 - s64_on_32).norm() / s64_on_32.norm())
            rho = _spearman(s32[valid], s64[valid])
            flips = float(((s32[valid] > 0) != (s64[valid] > 0)).double().mean())
            ex = float((s32.sum(1) - s64.sum(1)).norm() / s64.sum(1).norm())
            first_gap = full if first_gap is None else first_gap
            print(
                f"eps={eps:g} lr={training.lrs[0]:g} steps={training.max_steps}: full gap {full:.2e} "
                f"(per-example {ex:.2e}), reverse-only gap {reverse:.2e}, spearman {rho:.5f}, sign flips {flips:.2%}; "
                f"float32 adjoint gain {stats32.adjoint_gain:.3g}, growth {stats32.adjoint_growth:.3g}, "
                f"rounding risk {stats32.rounding_risk:.2g}",
                flush=True,
            )
    print(f"adam_fp32_gap={first_gap:.3e}")


if __name__ == "__main__":
    main()

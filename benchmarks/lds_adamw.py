"""A minimal linear datamodeling score (LDS) of toy AdamW MAGIC scores (regime of specs/fixed_adamw/).

Scores one AdamW run (specs/fixed_adamw/magic_wmdp.yaml through the toy profile, real trainer +
MagicCallback), then for each of `--subsets` random subsets of `--fraction` of the rows retrains the
same run with those rows' token weights set to 0 (same seed, order, schedule; normalizer `valid`, so
the step denominators do not change) and evaluates the query loss Q. Predicted change: minus the sum
of the dropped rows' scores; LDS = Spearman(actual, predicted). Last line: `lds=<value>`.

    python benchmarks/lds_adamw.py [--subsets 30] [--fraction 0.01] [--lr-scale 1.0] [--dtype float32]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from magic_adam_precision import SPEC, _spearman, score_run  # noqa: E402  (same folder)


def query_value(model, query) -> float:
    with torch.no_grad():
        params = {n: p for n, p in model.named_parameters()}
        if hasattr(query, "parts"):
            return float(sum(float(x) for x in query.parts(params)))
        return float(query(params))


def retrain_q(spec, prep, weights, options, world, query_spec, tokenizer_include) -> float:
    from dataclasses import replace

    from unlearnspec.magic.attention import replay_mode
    from unlearnspec.magic.query import build_query
    from unlearnspec.run.runner import train_point
    from unlearnspec.train.trainer import grid_dataset

    prep2 = replace(prep, weights=weights, dataset=grid_dataset(prep.grid, weights))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train_point(spec, prep2, spec.training.lrs[0], Path(tmp), options, world, exact_replay=True)
    model = trainer.model
    query = build_query(query_spec, model, prep.tokenizer, include_path=tokenizer_include)
    with replay_mode(model):
        return query_value(model, query)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subsets", type=int, default=30)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--lr-scale", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unlearnspec.magic.attention import replay_mode
    from unlearnspec.run.runner import RunOptions, prepare, toy_world
    from unlearnspec.spec.load import load_spec, project_root
    from unlearnspec.spec.profile import default_toy_profile

    options = RunOptions(profile=default_toy_profile(), say=lambda s: None)
    base = load_spec(SPEC, profile=options.profile)
    world = toy_world(options)
    prep = prepare(base, SPEC, options, world)
    training = base.training.model_copy(update={"lr": base.training.lrs[0] * args.lr_scale})
    spec = base.model_copy(update={"training": training, "model": base.model.model_copy(update={"dtype": args.dtype})})
    include = [str(project_root(SPEC) / "plugins"), str(world.task_dir)]
    scores, _, model, query, _ = score_run(spec, SPEC, args.dtype, options, world, prep)
    with replay_mode(model):
        q_full = query_value(model, query)
    n = prep.grid.input_ids.shape[0]
    k = max(1, math.ceil(args.fraction * n))
    gen = torch.Generator().manual_seed(args.seed)
    per_row = scores.sum(dim=1)
    actual, predicted = [], []
    for i in range(args.subsets):
        rows = torch.randperm(n, generator=gen)[:k]
        weights = prep.weights.clone()
        weights[rows] = 0
        q = retrain_q(spec, prep, weights, options, world, spec.magic.query, include)
        actual.append(q - q_full)
        predicted.append(-float(per_row[rows].sum()))
        print(f"subset {i}: rows {rows.tolist()} actual {actual[-1]:+.4e} predicted {predicted[-1]:+.4e}", flush=True)
    lds = _spearman(torch.tensor(actual), torch.tensor(predicted))
    print(f"toy AdamW lr={training.lrs[0]:g} steps={training.max_steps} {args.dtype}: {args.subsets} subsets of {k} rows "
          f"({args.fraction:.0%} of {n}); Q(theta_T)={q_full:.5f}")
    print(f"lds={lds:.3f}")


if __name__ == "__main__":
    main()

"""LDS of the toy `magic_wmdp` score run (specs/magic/magic_wmdp.yaml through the toy profile).

Runs the score spec once into a temporary folder with the tool's own plan and executor, then its LDS
retraining jobs (`magic.lds`) for rows and tokens at 1% and 10% dropped, `--subsets` each, and prints
Spearman (bootstrap 95% CI), Pearson and |predicted|/|actual| per setting. The last line is
`lds=<rows 1% Spearman>` (the issue's anchor: bergson reports 0.95-0.98 at 1% of rows on GPT-2).

    python benchmarks/toy_magic_lds.py [--subsets 30] [--spec specs/magic/magic_wmdp.yaml] [--set training.lr=2.5e-5]

Cost: one score run plus 4 x (subsets + 1) retrainings of 62 steps (~5 minutes on one 2-core CPU thread).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import unlearnspec.toy  # noqa: E402,F401 - registers the embedded toy world, as the `unlearnspec` command does at start

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [("row", 0.01), ("row", 0.10), ("token", 0.01), ("token", 0.10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subsets", type=int, default=30)
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "magic" / "magic_wmdp.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="spec override, as `run --set`")
    args = parser.parse_args()

    from unlearnspec.magic.lds import lds_table
    from unlearnspec.run.executors.serial import SerialExecutor
    from unlearnspec.run.plan import Plan
    from unlearnspec.run.study import RunOptions, make_context, make_plan, quiet_libraries
    from unlearnspec.spec.profile import default_toy_profile

    quiet_libraries()
    rows = []
    with tempfile.TemporaryDirectory(prefix="toy-magic-lds-") as tmp:
        out = Path(tmp) / "scores"
        for unit, fraction in SETTINGS:
            lds = [f"magic.lds.subsets={args.subsets}", f"magic.lds.unit={unit}", f"magic.lds.fraction={fraction}"]
            options = RunOptions(profile=default_toy_profile(), overrides=[*args.overrides, *lds], out=out)
            ctx = make_context(options, say=lambda m: None)
            plan = make_plan([args.spec], options, ctx)
            run = plan.specs[0]
            SerialExecutor(ctx).run(Plan(jobs=[plan.job(j) for j in (*run.points, *run.lds)], specs=[run]))
            entry = lds_table(out / "scores.json")
            assert entry is not None, "no LDS summary was written"
            lo, hi = entry["spearman_ci95"]
            print(
                f"{unit}s {fraction:.0%}: LDS {entry['spearman']:.3f} (95% CI {lo:.3f}-{hi:.3f}), Pearson "
                f"{entry['pearson']:.3f}, |pred|/|actual| {entry['scale_ratio']:.2f}, {entry['subsets']} subsets of "
                f"{entry['dropped_per_subset']} {unit}s, lr {run.spec.training.lrs[0]:g}, "
                f"{entry['retrain_seconds']:.0f}s of retraining",
                flush=True,
            )
            rows.append(entry["spearman"])
    print(f"lds={rows[0]:.3f}")


if __name__ == "__main__":
    main()

"""Training time of one toy-world point per objective, relative to the all-tokens control (`weighted`, every token).

Each variant is specs/fixed/all_tokens.yaml through `--toy` (tiny-neox 4 layers d=128, 250 rows x 64 tokens,
batch 4, 62 SGD steps at lr 0.05) with `data` the bio forget corpus, `data.retain` the bio retain corpus (250 rows)
and the objective swapped in (RMU with AdamW lr 1e-3, as the paper trains it). What is timed is the recipe's
`steps.train` (model load, trainer set-up, training), alternated over rounds in one process; the median per
variant is divided by the control's. NPO is timed with its reference log-probs cached (as every point after the
first); `npo_reference` is the one-off cost of computing them (one forward over the forget grid).
Last line: `ratios vs all_tokens: weighted=1.00 grad_ascent=... grad_diff=... npo=... simnpo=... rmu=... npo_reference=...`
Usage: python benchmarks/bench_objectives.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RETAIN = {"hub": {"path": "cais/wmdp-corpora", "name": "bio-retain-corpus"}, "select": {"count": 1000, "min_chars": 100}}
VARIANTS = {
    "weighted": None,
    "grad_ascent": {"name": "grad_diff", "alpha": 0.0},
    "grad_diff": {"name": "grad_diff", "alpha": 1.0},
    "npo": {"name": "npo", "beta": 0.1, "alpha": 1.0},
    "simnpo": {"name": "simnpo", "beta": 2.5, "gamma": 0.0, "alpha": 1.0},
    "rmu": {"name": "rmu", "layer": 2, "steering_coef": 6.5, "alpha": 100.0, "seed": 0},
}


def spec_file(folder: Path, name: str) -> Path:
    data = yaml.safe_load((REPO / "specs" / "fixed" / "all_tokens.yaml").read_text())
    data.update(name=f"bench_{name}")
    data.pop("control", None)
    data["data"]["hub"] = {"path": "cais/wmdp-bio-forget-corpus"}
    data["training"]["lr"] = [1e-4]
    objective = VARIANTS[name]
    if objective is not None:
        data["objective"] = objective
        if objective.get("alpha"):
            data["data"]["retain"] = RETAIN
    if name == "rmu":
        data["training"]["optimizer"] = {"name": "adamw", "weight_decay": 0.0}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from unlearnspec.run.context import toy_context
    from unlearnspec.run.plan import Job, spec_hash
    from unlearnspec.run.steps import prepare, train
    from unlearnspec.spec.load import load_spec
    from unlearnspec.spec.profile import default_toy_profile

    profile = default_toy_profile()
    ctx = toy_context(profile, say=lambda _m: None)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = {}
        for name in VARIANTS:
            path = spec_file(folder, name)
            spec = load_spec(path, profile=profile)
            jobs[name] = Job("point", f"point:{name}", spec, path, folder / name, spec_hash(spec))
            prepare(jobs[name], ctx)  # data and weights once, outside the timing (shared by a sweep's points)
        train(jobs["npo"].spec, prepare(jobs["npo"], ctx), folder / "warm", ctx)  # fills the reference cache
        for _ in range(args.rounds):
            for name, job in jobs.items():
                start = time.perf_counter()
                train(job.spec, prepare(job, ctx), folder / name, ctx)
                times[name].append(time.perf_counter() - start)
        from unlearnspec.train.objectives.reference import compute_reference
        from unlearnspec.train.modeling import load_model

        grid = prepare(jobs["npo"], ctx).grid
        spec = jobs["npo"].spec
        model = load_model(spec.model, ctx.assets, device="cpu")
        ref_times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            compute_reference(model, grid.input_ids, grid.attention_mask, grid.labels, spec.training.batch_size, fused=False)
            ref_times.append(time.perf_counter() - start)
    base = statistics.median(times["weighted"])
    for name, ts in times.items():
        print(f"{name:12s} median {statistics.median(ts):6.2f} s  ({', '.join(f'{t:.2f}' for t in ts)})")
    print(f"{'npo_reference':12s} median {statistics.median(ref_times):6.2f} s (one forward over the forget grid, once per grid)")
    ratios = {name: statistics.median(ts) / base for name, ts in times.items()}
    ratios["npo_reference"] = statistics.median(ref_times) / base
    print("ratios vs all_tokens: " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()

"""The LDS recipe: retraining jobs of a score run (`magic.lds`), and the summary they add to its scores.json.

Each job (`lds:<spec>/reference`, `lds:<spec>/subset_007`, ...) replays the recorded run from theta_0 with
its subset's weights set to 0 and evaluates the query: `<score folder>.lds/<job>/lds.json`. When all have
finished, `write_lds_summary` correlates them and writes `<score folder>.lds/summary.json` and the `lds`
entry of scores.json.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, cast

from typing_extensions import TypedDict

from unlearnspec.errors import UserError
from unlearnspec.records import JsonValue
from unlearnspec.run.context import Prepared, RunContext
from unlearnspec.run.jobstate import LDS_FILE, SIDECAR_FILE, job_state
from unlearnspec.run.plan import LDS_SUFFIX, SCORES_FILE, Job, Plan, SpecRun, spec_hash
from unlearnspec.run.results import RunRecord
from unlearnspec.run.rundirs import write_json
from unlearnspec.run.steps import prepare

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unlearnspec.magic.lds import LdsSummary
    from unlearnspec.magic.query import QueryLoss
    from unlearnspec.magic.trajectory import Trajectory

SUMMARY_FILE = "summary.json"


class _Dropped(TypedDict, total=False):
    dropped: int
    """Ids (rows or tokens) the subset dropped."""
    predicted: float
    """The scores' first-order prediction of the query's change."""
    dropped_ids: list[int]


class LdsEntry(_Dropped):
    """lds.json of one retraining (the reference has no subset and drops nothing)."""

    subset: Optional[int]
    unit: str
    fraction: float
    seed: int
    query: float
    """The query loss Q of the retrained parameters."""
    seconds: float


@dataclass(frozen=True)
class Retrained:
    """A finished retraining's lds.json as read back: the numbers the summary uses, checked finite."""

    subset: JsonValue
    query: float
    predicted: float
    dropped: float
    seconds: JsonValue
    """As written; the summary adds only finite numbers."""


def score_dir(job: Job) -> Path:
    """The score job's folder an LDS job belongs to (`<score folder>.lds/<job>`)."""
    root = job.out.parent
    return root.with_name(root.name[: -len(LDS_SUFFIX)])


@dataclass(frozen=True)
class LdsShared:
    """What every retraining of one score run shares (loaded once per process)."""

    prep: Prepared
    trajectory: "Trajectory"
    """The recorded steps (`magic.lds.load_trajectory_plan`)."""
    scores: "torch.Tensor"
    model: "nn.Module"
    theta0: list["torch.Tensor"]
    query: "QueryLoss"


def _shared(job: Job, ctx: RunContext) -> LdsShared:
    """Model and theta_0, the recorded steps, the scores and the query of the job's score run, once per process."""
    key = f"lds:{spec_hash(job.spec)}"
    cached = ctx.recipe_cache.get(key)
    if isinstance(cached, LdsShared):
        return cached
    import torch

    from unlearnspec.magic.attention import use_replay_attention
    from unlearnspec.magic.lds import load_trajectory_plan
    from unlearnspec.magic.query import build_query
    from unlearnspec.scores import load_score_file
    from unlearnspec.train.modeling import apply_lora, load_model

    spec, folder = job.spec, score_dir(job)
    assert spec.magic is not None
    prep = prepare(job, ctx)
    trajectory = load_trajectory_plan(folder, n_rows=int(prep.grid.labels.shape[0]))
    scores = load_score_file(folder / SCORES_FILE).scores
    if tuple(scores.shape) != tuple(prep.grid.labels.shape):
        raise UserError.one(
            str(folder / SCORES_FILE),
            f"scores are {tuple(scores.shape)} but this spec's token grid is "
            f"{tuple(prep.grid.labels.shape)}; the score run is not this spec's. Rerun the score spec.",
        )
    torch.manual_seed(spec.training.seed)  # as `steps.train`: same model (and LoRA init) as the recorded run
    model = load_model(spec.model, ctx.assets, dropout=spec.training.dropout, device=ctx.device_for(spec))
    use_replay_attention(model)
    if spec.lora is not None:
        model = apply_lora(model, spec.lora)
    params = dict(model.named_parameters())
    missing = [n for n in trajectory.param_names if n not in params]
    if missing:
        raise UserError.one(
            str(folder),
            f"the recorded run trained parameters this model lacks ({missing[:2]}); "
            "rerun the score spec with this version.",
        )
    theta0 = [params[n].detach().clone() for n in trajectory.param_names]
    query = build_query(
        spec.magic.query, model, prep.tokenizer, include_path=[str(p) for p in ctx.include_paths(job.spec_path)]
    )
    shared = LdsShared(prep, trajectory, scores, model, theta0, query)
    ctx.recipe_cache[key] = shared
    return shared


def run_lds(job: Job, ctx: RunContext, workdir: Path) -> RunRecord:
    """One retraining: drop the job's subset (nothing for the reference), replay, evaluate Q, write lds.json."""
    from unlearnspec.magic.lds import drop_set, dropped_mask, predicted_change, query_value, retrained_params

    lds = job.spec.magic.lds if job.spec.magic else None
    assert lds is not None
    shared = _shared(job, ctx)
    prep = shared.prep
    start = time.perf_counter()
    weights = prep.weights
    dropped: _Dropped = {}
    if job.subset is not None:
        drop = drop_set(lds, prep.weights, prep.grid.labels, job.subset)
        mask = dropped_mask(prep.weights.shape, drop, lds.unit)
        weights = prep.weights.masked_fill(mask, 0)
        dropped = {
            "dropped": int(drop.numel()),
            "predicted": predicted_change(shared.scores, prep.weights, mask),
            "dropped_ids": drop.tolist(),
        }
    params = retrained_params(shared.model, prep.grid, shared.trajectory, shared.theta0, weights)
    query = query_value(shared.model, shared.query, params)
    entry: LdsEntry = {
        "subset": job.subset,
        "unit": lds.unit,
        "fraction": lds.fraction,
        "seed": lds.seed,
        **dropped,
        "query": query,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if ctx.is_main:
        write_json(workdir / LDS_FILE, entry)
    return RunRecord(
        point=job.point,
        hparams={"lr": job.lr},
        status="ok",
        run_dir=".",
        spec_hash=job.hash,
        train_seconds=entry["seconds"],
    )


def _finite(value: object) -> Optional[float]:
    """A finite number as read (an int stays an int), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _read(job: Job) -> Optional[Retrained]:
    """A finished retraining's lds.json, or None (not finished, unreadable, or a number missing or not finite)."""
    from unlearnspec.safeio import read_json_lenient

    if job_state(job) != "done":
        return None
    data: object = read_json_lenient(job.out / LDS_FILE)
    if not isinstance(data, dict):
        return None
    query, predicted, dropped = _finite(data.get("query")), _finite(data.get("predicted")), _finite(data.get("dropped"))
    if query is None:
        return None
    subset = data.get("subset")
    if (subset is not None or job.subset is not None) and (predicted is None or dropped is None):
        return None  # a subset's retraining without its prediction
    return Retrained(subset, query, predicted or 0.0, dropped or 0.0, data.get("seconds"))


def write_lds_summary(folder: Path, jobs: Sequence[Job]) -> Optional[LdsSummary]:
    """Correlate the finished retrainings (all of them, else None) into `lds/summary.json` and the `lds` entry
    of `scores.json` (rewritten atomically; the score folder is the tool's own). `new` says it changed."""
    from unlearnspec.magic.lds import LdsSummary, summarize
    from unlearnspec.safeio import read_json, write_json_atomic

    entries = [_read(j) for j in jobs]
    reference = next((e for j, e in zip(jobs, entries) if j.subset is None), None)
    if reference is None or any(e is None for e in entries) or not (folder / SIDECAR_FILE).is_file():
        return None
    magic = next(j for j in jobs if j.subset is not None).spec.magic
    lds = magic.lds if magic is not None else None
    assert lds is not None, "LDS jobs come from a spec with magic.lds"
    subsets = [e for j, e in zip(jobs, entries) if j.subset is not None and e is not None]
    actual = [e.query - reference.query for e in subsets]
    predicted = [float(e.predicted) for e in subsets]
    summary = summarize(actual, predicted, lds, int(subsets[0].dropped))
    summary["reference_query"] = reference.query
    seconds = [e.seconds for e in [reference, *subsets]]
    summary["retrain_seconds"] = round(
        sum(float(x) for x in seconds if isinstance(x, (int, float)) and math.isfinite(x)), 3
    )
    summary["method"] = (
        "retrain the recorded run (replayed steps, same order and schedule) with each subset's weights "
        "set to 0; actual = Q(subset) - Q(reference), predicted = -sum(score x weight) over the subset"
    )
    sidecar: object = read_json(folder / SIDECAR_FILE, "score sidecar", "missing.", "Rerun the score spec.")
    if not isinstance(sidecar, dict):
        raise UserError.one(str(folder / SIDECAR_FILE), "the score sidecar is not a JSON object. Rerun the score spec.")

    def finite(v: object) -> object:  # NaN and inf are written as null
        if isinstance(v, list):
            return [finite(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    clean = cast(LdsSummary, {k: finite(v) for k, v in summary.items()})
    if sidecar.get("lds") == clean:
        return LdsSummary(**clean, new=False)
    write_json_atomic(
        jobs[0].out.parent / SUMMARY_FILE,
        {
            **clean,
            "pairs": [{"subset": e.subset, "actual": a, "predicted": p} for e, a, p in zip(subsets, actual, predicted)],
        },
    )
    sidecar["lds"] = clean
    write_json_atomic(folder / SIDECAR_FILE, sidecar)
    return LdsSummary(**clean, new=True)


def finish_score(run: SpecRun, plan: Plan, ctx: RunContext) -> None:
    """After a score spec's LDS retrainings: their summary into scores.json (once all have finished)."""
    summary = write_lds_summary(run.out, [plan.job(j) for j in run.lds])

    def num(x: Optional[float]) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    if summary is not None and summary.get("new"):
        lo, hi = summary["spearman_ci95"]
        ctx.say(
            f"[{run.spec.name}] LDS {num(summary['spearman'])} (Spearman; 95% CI {num(lo)}-{num(hi)}) over {summary['subsets']} subsets of {summary['fraction']:.0%} "
            f"{summary['unit']}s"
        )

"""The plan: spec paths (with a profile applied) expanded once into typed jobs in dependency order.

A score job per MAGIC spec, a baseline job per distinct model and evaluation, one point job per sweep
point. The plan is what `run` executes, what `plan` prints and what the SLURM executor submits; it
imports no torch and builds nothing (the toy world is named by its key, not built).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

from unlearnspec.errors import Problem, UserError
from unlearnspec.spec.assets import Assets, folder_digest, package_version
from unlearnspec.spec.batch import BatchLayout, batch_layout
from unlearnspec.spec.load import find_spec_files, is_profile_path, load_spec, project_root, resolve_path
from unlearnspec.spec.profile import MappedKnob, is_world_file
from unlearnspec.spec.schema import RESULT_NEUTRAL_FIELDS, Spec, drop_fields

JobKind = Literal["score", "baseline", "point", "lds"]
SCORES_FILE = "per_token_scores.pt"  # the score file a score job writes (format: unlearnspec.scores)


@dataclass(frozen=True)
class Job:
    """One unit of work an executor runs: its spec (one LR), the folder it writes, what it waits for."""

    kind: JobKind
    id: str
    """Unique and readable: `score:magic_wmdp`, `baseline:3f2a...`, `point:exp7_all_tokens/lr_1e-05`."""
    spec: Spec
    """The spec of this job; for score and point jobs a single learning rate."""
    spec_path: Path
    out: Path
    """The folder the job writes, created atomically (score: the spec's output.dir; point: one sweep point;
    baseline: the cache entry)."""
    hash: str
    """Spec hash shared by all points of a spec (sweep and output location excluded)."""
    after: tuple[str, ...] = ()
    """Ids of the jobs that must succeed first (score producers of a point job)."""
    inputs: tuple[tuple[str, Path], ...] = ()
    """Score source name -> score file, resolved at plan time (built-in sources, `random` and `toy:truth`,
    have no file: `steps.prepare` builds them for the grid)."""
    subset: Optional[int] = None
    """LDS jobs: the random subset this retraining drops (None: the reference retraining, nothing dropped)."""

    @property
    def lr(self) -> float:
        return self.spec.training.lrs[0]

    @property
    def point(self) -> str:
        if self.kind == "lds":
            return "reference" if self.subset is None else f"subset={self.subset}"
        return f"lr={self.lr:g}"


@dataclass(frozen=True)
class SpecRun:
    """One spec of the plan: where its results go and which jobs make them up."""

    path: Path
    spec: Spec
    out: Path
    hash: str
    points: tuple[str, ...]
    """Point (or score) job ids, in sweep order."""
    baseline: Optional[str] = None
    """Baseline job id, when the spec evaluates the base model."""
    control: Optional[Path] = None
    lds: tuple[str, ...] = ()
    """LDS retraining job ids of a score spec with `magic.lds` (reference first)."""

    @property
    def is_score(self) -> bool:
        return self.spec.magic is not None


@dataclass
class Plan:
    """Jobs in an order an executor can run one by one (every job after the jobs it names in `after`)."""

    jobs: list[Job] = field(default_factory=list)
    specs: list[SpecRun] = field(default_factory=list)
    profile: Optional[Path] = None
    mapped: dict[Path, list[MappedKnob]] = field(default_factory=dict)
    """Per spec file (resolved): the knobs the profile changed, said when the run starts and in the plan."""

    def mapping_lines(self) -> list[str]:
        """One line per knob a profile changed, per spec of the plan: `spec: field: before -> after (why)`."""
        return [f"{run.spec.name}: {knob}" for run in self.specs for knob in self.mapped.get(run.path.resolve(), [])]

    def mapping_summary(self, limit: int = 20) -> list[str]:
        """What the profile changed, as a run starts: `mapping_lines` when there are at most `limit`; else the
        changes every mapped spec shares on one line and one line per spec with its own (no reasons: the plan
        lists them)."""
        lines = self.mapping_lines()
        if len(lines) <= limit:
            return lines
        mapped = [
            (run.spec.name, self.mapped[run.path.resolve()])
            for run in self.specs
            if self.mapped.get(run.path.resolve())
        ]
        shared = set.intersection(*(({k.short() for k in knobs}) for _, knobs in mapped))
        out = (
            [f"all {len(mapped)} specs: " + "; ".join(k.short() for k in mapped[0][1] if k.short() in shared)]
            if shared
            else []
        )
        for name, knobs in mapped:
            own = [k.short() for k in knobs if k.short() not in shared]
            if own:
                out.append(f"{name}: " + "; ".join(own))
        return out

    def job(self, job_id: str) -> Job:
        return next(j for j in self.jobs if j.id == job_id)

    def dependants(self, job_id: str) -> list[Job]:
        """Jobs that (transitively) wait for `job_id`."""
        out: list[Job] = []
        frontier = {job_id}
        for j in self.jobs:
            if frontier & set(j.after):
                out.append(j)
                frontier.add(j.id)
        return out


def point_dir_name(point: str) -> str:
    """Filesystem-safe folder name of a sweep point id such as `lr=1e-05`."""
    import re

    return re.sub(r"[^A-Za-z0-9_.+-]", "_", point.replace("=", "_"))


REPORTING_KNOBS = ("hazard_task", "general_task")
"""`eval` fields that only say how reports read the results: out of the spec hash and the baseline key."""


def spec_hash(spec: Spec) -> str:
    """sha256 of the resolved spec minus its sweep (kept for a MAGIC spec's single LR) and the fields that
    never change a run's numbers (`RESULT_NEUTRAL_FIELDS`: output location, memory and reporting knobs)."""
    payload = spec.model_dump(mode="json", exclude_none=True)
    if spec.magic is None:  # a sweep's points share the hash; each point's folder names its LR
        payload.get("training", {}).pop("lr", None)
    # A score run has one LR and one folder: its LR is part of what it computed (else a changed LR would
    # resume the old scores and their LDS retrainings as done).
    drop_fields(payload, RESULT_NEUTRAL_FIELDS)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def at_lr(spec: Spec, lr: float) -> Spec:
    """The spec of one sweep point (typed copy; no round trip through JSON)."""
    return spec.model_copy(update={"training": spec.training.model_copy(update={"lr": lr})})


def baseline_key(spec: Spec, spec_path: Path, assets: Assets, device: str) -> str:
    """Everything that can change the base model's numbers: model, dtype, attention kernel, tokenizer,
    the evaluation, the task files' contents, the device kind and the library versions."""
    assert spec.eval is not None
    toy = spec.model.toy is not None
    payload = {
        "model": assets.model_id(spec.model),
        "dtype": spec.model.dtype,
        "attn": spec.model.attn_implementation,
        "tokenizer": assets.tokenizer_id(spec.model),
        "eval": spec.eval.model_dump(mode="json", exclude=set(REPORTING_KNOBS)),
        "tasks": folder_digest([project_root(spec_path) / "plugins"]) + (f"+world:{assets.world_key}" if toy else ""),
        "device": device,
        "versions": {p: package_version(p) for p in ("lm_eval", "transformers", "torch")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


LDS_SUFFIX = ".lds"
"""LDS retrainings of a score run live beside its folder, in `<score folder>.lds/` (one folder each): the
score job replaces its own folder atomically, and SLURM state of its LDS jobs exists before it runs."""


def lds_root(score_out: Path) -> Path:
    """The folder holding the LDS retrainings (and their summary.json) of the score run in `score_out`."""
    return score_out.parent / f"{score_out.name}{LDS_SUFFIX}"


def lds_jobs(score: Job) -> list[Job]:
    """The LDS retrainings of a score job (`magic.lds`): a reference (nothing dropped), then one per subset.
    Each waits for the score job and writes `<score folder>.lds/<name>`; subset hashes include the LDS settings."""
    assert score.spec.magic is not None
    lds = score.spec.magic.lds
    if lds is None:
        return []
    settings = json.dumps(lds.model_dump(mode="json"), sort_keys=True)
    subset_hash = hashlib.sha256(f"{score.hash}:{settings}".encode()).hexdigest()
    ref_hash = hashlib.sha256(f"{score.hash}:reference".encode()).hexdigest()
    name = score.spec.name
    root = lds_root(score.out)
    jobs = [Job("lds", f"lds:{name}/reference", score.spec, score.spec_path, root / "reference", ref_hash, (score.id,))]
    width = max(3, len(str(lds.subsets - 1)))
    for i in range(lds.subsets):
        jobs.append(
            Job(
                "lds",
                f"lds:{name}/subset_{i:0{width}d}",
                score.spec,
                score.spec_path,
                root / f"subset_{i:0{width}d}",
                subset_hash,
                (score.id,),
                subset=i,
            )
        )
    return jobs


@dataclass(frozen=True)
class PlanOptions:
    """How `build_plan` reads the specs (the profile and overrides change the experiments; the rest says where)."""

    profile: Optional[Path] = None
    overrides: tuple[str, ...] = ()
    """`--set` overrides, applied to the specs named on the command line (not to the producers they pull in)."""
    out: Optional[Path] = None
    """--out: the output folder of the one spec given, instead of its output.dir."""
    auto_produce: bool = False
    """Plan the score producers whose score files are missing (else such a spec is refused with the command)."""
    device: str = "cpu"
    """The device kind baseline cache keys name (the device the baselines evaluate on)."""
    cache_root: Optional[Path] = None
    """Where baselines are cached; None: the tool's cache (`spec.assets.cache_root`)."""


@dataclass
class _Builder:
    options: PlanOptions
    assets: Assets
    cache_root: Path
    plan: Plan = field(default_factory=Plan)
    specs: dict[Path, Spec] = field(default_factory=dict)
    visiting: list[Path] = field(default_factory=list)

    def load(self, path: Path, top: bool) -> Spec:
        key = path.resolve()
        if key not in self.specs:
            changes: list[MappedKnob] = []
            self.specs[key] = load_spec(
                path,
                overrides=list(self.options.overrides) if top else (),
                profile=self.options.profile,
                changes=changes,
            )
            self.plan.mapped[key] = changes
        return self.specs[key]

    def add_spec(self, path: Path, top: bool) -> SpecRun:
        key = path.resolve()
        done = next((s for s in self.plan.specs if s.path.resolve() == key), None)
        if done is not None:
            return done
        if key in self.visiting:
            chain = " -> ".join(p.name for p in [*self.visiting[self.visiting.index(key) :], key])
            raise UserError.one(
                str(path),
                f"the `produced_by` chain leads back to this spec ({chain}); a spec cannot "
                "depend on its own scores. Point scores.*.produced_by at a MAGIC spec outside the cycle.",
                loc="scores",
            )
        self.visiting.append(key)
        spec = self.load(path, top)
        inputs, after = self.score_inputs(path, spec)
        self.visiting.pop()
        out = self.options.out if (self.options.out is not None and top) else resolve_path(path, spec.output.dir)
        digest = spec_hash(spec)
        jobs, lds = [], []
        if spec.magic is not None:
            jobs.append(Job("score", f"score:{spec.name}", spec, path, out, digest, after, inputs))
            lds = lds_jobs(jobs[0])
        else:
            for lr in spec.training.lrs:
                point = f"lr={lr:g}"
                jobs.append(
                    Job(
                        "point",
                        f"point:{spec.name}/{point_dir_name(point)}",
                        at_lr(spec, lr),
                        path,
                        out / point_dir_name(point),
                        digest,
                        after,
                        inputs,
                    )
                )
        base = self.baseline(path, spec)
        self.plan.jobs.extend(jobs + lds)
        control = resolve_path(path, spec.control) if spec.control else None
        run = SpecRun(path, spec, out, digest, tuple(j.id for j in jobs), base, control, tuple(j.id for j in lds))
        self.plan.specs.append(run)
        return run

    def score_inputs(self, path: Path, spec: Spec) -> tuple[tuple[tuple[str, Path], ...], tuple[str, ...]]:
        inputs: list[tuple[str, Path]] = []
        after: list[str] = []
        for name, src in spec.scores.items():
            if src.path is not None:
                inputs.append((name, resolve_path(path, src.path)))
                continue
            if src.built_in:  # `random` / `toy:truth`: built for the grid by `steps.prepare`, no file, no job
                continue
            assert src.produced_by is not None
            producer_path = resolve_path(path, src.produced_by)
            producer = self.load(producer_path, top=False)
            target = resolve_path(producer_path, producer.output.dir) / SCORES_FILE
            listed = any(s.path.resolve() == producer_path.resolve() for s in self.plan.specs)
            if self.options.auto_produce or listed or producer_path.resolve() in self.visiting:
                run = self.add_spec(producer_path, top=False)
                after.extend(run.points)
                target = run.out / SCORES_FILE
            elif not target.is_file():
                flag = f" --profile {self.options.profile}" if self.options.profile else ""
                raise UserError.one(
                    str(path),
                    f"score source {name!r} needs {src.produced_by}, which has not been run (no {target}). "
                    f"Run `unlearnspec run {src.produced_by}{flag}` first, or run both specs together.",
                    loc=f"scores.{name}.produced_by",
                )
            inputs.append((name, target))
        return tuple(inputs), tuple(after)

    def baseline(self, path: Path, spec: Spec) -> Optional[str]:
        if spec.magic is not None or spec.eval is None or not spec.baseline.evaluate:
            return None
        key = baseline_key(spec, path, self.assets, self.options.device)
        job_id = f"baseline:{key}"
        if not any(j.id == job_id for j in self.plan.jobs):
            self.plan.jobs.append(
                Job(
                    "baseline",
                    job_id,
                    at_lr(spec, spec.training.lrs[0]),
                    path,
                    self.cache_root / "baselines" / key,
                    key,
                )
            )
        return job_id


def build_plan(paths: list[Path], options: Optional[PlanOptions] = None, assets: Optional[Assets] = None) -> Plan:
    """Expand spec files/folders into the plan. Score producers come before the points that read them;
    specs named as controls before the specs that compare with them."""
    from unlearnspec.spec.assets import cache_root as default_cache

    options = options or PlanOptions()
    files, problems = find_spec_files(paths)
    files = [f for f in files if not is_profile_path(f) and not is_world_file(f)]
    if problems:
        raise UserError(problems)
    if not files:
        raise UserError([Problem(" ".join(map(str, paths)), "", "no spec files found.")])
    if options.out is not None and len(files) > 1:
        raise UserError.one("--out", "--out takes one spec; several specs each write to their own output.dir.")
    b = _Builder(options, assets or Assets(), options.cache_root or default_cache())
    loaded = {f: b.load(f, top=True) for f in files}
    controls = {resolve_path(p, s.control).resolve() for p, s in loaded.items() if s.control}

    def rank(p: Path) -> int:
        return 0 if loaded[p].magic is not None else 1 if p.resolve() in controls else 2

    for f in sorted(files, key=rank):
        b.add_spec(f, top=True)
    b.plan.profile = options.profile
    _check_unique_outputs(b.plan)
    return b.plan


def _check_unique_outputs(plan: Plan) -> None:
    seen: dict[Path, SpecRun] = {}
    for run in plan.specs:
        other = seen.get(run.out.resolve())
        if other is not None:
            raise UserError.one(
                str(run.path),
                f"output.dir {run.out} is also the output of {other.path}; two specs "
                "would overwrite each other's results. Give each spec its own output.dir.",
                loc="output.dir",
            )
        seen[run.out.resolve()] = run


def plan_layouts(plan: Plan, world_size: Callable[[Job], int], launch: Callable[[Job], str]) -> dict[str, BatchLayout]:
    """The batch layout of every job that trains through the trainer (score, point) at the world size it will run
    under, checked before any work: one UserError listing every spec whose global batch those ranks cannot share,
    with the fix. (LDS jobs replay the recorded steps row by row, whatever their rank count.)"""
    layouts: dict[str, BatchLayout] = {}
    problems: dict[tuple[str, str], Problem] = {}
    for job in plan.jobs:
        if job.kind not in ("score", "point"):
            continue
        try:
            layouts[job.id] = batch_layout(
                job.spec.training,
                world_size(job),
                file=str(job.spec_path),
                launch=launch(job),
                n_rows=job.spec.data.select.count,
            )
        except UserError as exc:
            for p in exc.problems:
                problems.setdefault((p.file, p.message), p)
    if problems:
        raise UserError(list(problems.values()))
    return layouts

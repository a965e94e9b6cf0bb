"""D16 gpu-memory: before submission, whether each job of a spec fits the GPUs it will get (site file
`slurm.jobs.<kind>.gpu_mem_gb`, or `doctor --gpu-mem-gb`), from the memory model (`unlearnspec.doctor.memory_model`):
training, the MAGIC reverse pass and evaluation, per GPU. A job that does not fit is an error naming the
knobs that make it fit (the first ones, in the order the model finds them cheapest); one that fits is an
`info` with its estimate. Imports no torch: the model's shape comes from its config.json in the local
Hugging Face cache, the toy world's file, or the shapes of the recorded runs' model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from unlearnspec.doctor.findings import Finding
from unlearnspec.doctor.memory_model import (
    HEADROOM,
    ModelShape,
    Setting,
    attack_bytes,
    double_activations,
    eval_bytes,
    fits,
    gib,
    host_bytes,
    kept_count,
    resident_bytes,
    reverse_bytes,
    train_activations,
    train_bytes,
)
from unlearnspec.spec import Spec
from unlearnspec.spec.batch import optimizer_steps
from unlearnspec.spec.objectives import RmuObjective

DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
KNOWN_SHAPES = {
    # config.json of EleutherAI/deep-ignorance-unfiltered (Pythia-6.9B architecture), for sites without it in the cache
    "EleutherAI/deep-ignorance-unfiltered": ModelShape(32, 4096, 32, 50304, 16384),
}
CONFIG_BYTES = 1 << 20
HOST = "host RAM"
"""The phase compared with the job's `mem_gb` (all its ranks together) instead of one GPU's memory."""


def model_shape(spec: Spec) -> tuple[Optional[ModelShape], str]:
    """(shape, where it came from), or (None, why not)."""
    if spec.model.toy is not None:
        from unlearnspec import worlds

        where, m = worlds.get(worlds.TOY).model_dims()
        return ModelShape(m["layers"], m["hidden"], m["heads"], m["vocab_size"], m["intermediate"]), where
    name = spec.model.name_or_path or ""
    local = Path(name) / "config.json"
    found: Optional[Path] = local if local.is_file() else None
    if found is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
            found = Path(cached) if isinstance(cached, str) else None
        except Exception:  # not a repo id, or no hub client: fall back below
            found = None
    if found is not None and found.stat().st_size <= CONFIG_BYTES:
        try:
            return ModelShape.from_config(json.loads(found.read_text(encoding="utf-8"))), str(found)
        except (KeyError, TypeError, ValueError):
            pass
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name], "the recorded runs' model shape (no config.json in the local cache)"
    return None, f"no config.json for {name!r} in the local Hugging Face cache"


def total_steps(spec: Spec) -> int:
    return optimizer_steps(spec.training, spec.data.select.count if spec.data.select is not None else 1)


@dataclass(frozen=True)
class Job:
    """The knobs of one job that the memory model reads (spec fields, and the site's processes)."""

    setting: Setting
    train_rows: int
    activation_checkpointing: bool
    eval_batch: int
    attack_rows: int = 1
    """Rows per forward/backward of the relearning attack (`attack.micro_batch_size`, else its batch)."""
    attack_lora: bool = False


def job_of(spec: Spec, world: int) -> Job:
    t, magic, par = spec.training, spec.magic, spec.parallel_or_default
    memory = magic.memory if magic is not None else None
    per_question = magic is not None and magic.query.per == "question"
    # rows of one forward/backward on one rank: the global batch split over the ranks (and micro-batches)
    rows = t.micro_batch_size or max(1, t.batch_size // world)
    setting = Setting(
        world=world,
        fsdp=par.strategy == "fsdp",
        optimizer=t.optimizer.name,
        rows=(memory.replay_batch_size if memory and memory.replay_batch_size else rows),
        schedule=magic.checkpoints if magic else "sqrt",
        steps=total_steps(spec),
        offload_states=bool(memory and memory.offload_states),
        questions=(memory.question_chunk if memory else 16) if per_question else 1,
        dtype_bytes=DTYPE_BYTES[spec.model.dtype],
    )
    a = spec.attack
    return Job(
        setting,
        rows,
        par.fsdp.activation_checkpointing,
        spec.eval.batch_size if spec.eval else 8,
        (a.micro_batch_size or a.batch_size) if a else 1,
        bool(a and a.lora),
    )


def phases(spec: Spec, m: ModelShape, job: Job, kind: str = "point") -> dict[str, float]:
    """Peak bytes per GPU of each phase a job of `kind` runs (a baseline job only evaluates)."""
    seq, s = spec.data.max_seq_len, job.setting
    if kind == "baseline":
        return {"evaluation": eval_bytes(m, seq, job.eval_batch, s.dtype_bytes)}
    # an objective with `data.retain` sends each forget row and its paired retain row through one forward
    rows = job.train_rows * (2 if spec.data.retain is not None else 1)
    train = _rmu_bytes(spec, m, seq, s, rows) if _unsharded(spec) else train_bytes(m, seq, replace(s, rows=rows))
    if job.activation_checkpointing and s.fsdp and s.world > 1:  # one layer's activations plus each layer's input
        full = rows * train_activations(m, seq, s.dtype_bytes)
        train += full / m.layers + rows * m.layers * seq * m.hidden * s.dtype_bytes - full
    out = {"training": train}
    if spec.magic is not None and spec.lora is None:
        sharded = s.fsdp and s.world > 1  # the sharded job parks the trained shards in host RAM (`sharded.parked`)
        out["reverse pass"] = reverse_bytes(m, seq, s) + (0 if sharded else resident_bytes(m, s))
    elif spec.magic is not None:  # LoRA: adapter-sized state is negligible; the frozen weights are one copy
        copy = m.params * s.dtype_bytes / (s.world if s.fsdp else 1)
        out["reverse pass"] = copy + s.rows * double_activations(m, seq, s.dtype_bytes)
    if spec.magic is not None:
        out[HOST] = host_bytes(m, s, kept_count(spec.magic.checkpoints, s.steps), spec.magic.storage == "ram")
    if spec.eval is not None and kind == "point":
        out["evaluation"] = eval_bytes(m, seq, job.eval_batch, s.dtype_bytes)
    if spec.attack is not None and kind == "point":  # on the main GPU alone, whatever the world size
        out["attack"] = attack_bytes(
            m, seq, job.attack_rows, spec.attack.optimizer.name, job.attack_lora, s.dtype_bytes
        )
    return out


def _unsharded(spec: Spec) -> bool:
    """RMU refuses FSDP and LoRA: it trains some blocks of the model itself beside a frozen copy."""
    return spec.objective.name == "rmu"


def _rmu_bytes(spec: Spec, m: ModelShape, seq: int, s: Setting, rows: int) -> float:
    """RMU's training (train/objectives/rmu.py): the whole model, its frozen copy when alpha > 0, gradients and
    optimizer state of the trained blocks only (DDP: a bucket copy of those gradients), and the activations of
    `rows` sequences (the forward runs every layer; counted whole, an upper bound)."""
    obj, d, i = spec.objective, m.hidden, m.intermediate
    assert isinstance(obj, RmuObjective)  # called for `objective: rmu` only
    block = 2 * d * i + i + d if obj.train_params == "mlp" else 4 * d * d + 4 * d + 2 * d * i + i + d + 4 * d
    trained = sum(1 for x in obj.layers_trained() if x < m.layers) * block * s.dtype_bytes
    states = 1 + (2 if s.optimizer != "sgd" else 0) + (1 if s.world > 1 else 0)  # gradients (+ m, v) (+ bucket)
    copy = m.params * s.dtype_bytes
    return copy * (2 if obj.alpha > 0 else 1) + states * trained + rows * train_activations(m, seq, s.dtype_bytes)


def _moves(spec: Spec, job: Job, gpus: int) -> list[tuple[str, Job]]:
    """Cumulative knob changes, cheapest first: each entry is (what to set, the job with it and all before)."""
    out: list[tuple[str, Job]] = []
    s = job.setting
    if gpus > 1 and not s.fsdp and not _unsharded(spec):
        job = replace(job, setting=replace(s, fsdp=True))
        out.append(("parallel.strategy: fsdp", job))
    if spec.magic is not None and spec.magic.checkpoints != "log" and not job.setting.offload_states:
        job = replace(job, setting=replace(job.setting, offload_states=True))
        out.append(("magic.memory.offload_states: true", job))
    if spec.magic is not None and job.setting.rows > 1:
        job = replace(job, setting=replace(job.setting, rows=1))
        out.append(("magic.memory.replay_batch_size: 1", job))
    while spec.magic is not None and job.setting.questions > 1:
        job = replace(job, setting=replace(job.setting, questions=job.setting.questions // 2))
        out.append((f"magic.memory.question_chunk: {job.setting.questions}", job))
    if job.setting.fsdp and gpus > 1 and not job.activation_checkpointing:
        job = replace(job, activation_checkpointing=True)
        out.append(("parallel.fsdp.activation_checkpointing: true", job))
    share = max(1, spec.training.batch_size // gpus)  # a micro-batch must divide each rank's share of the batch
    for rows in sorted((d for d in range(1, job.train_rows) if share % d == 0), reverse=True):
        job = replace(job, train_rows=rows)
        out.append(
            (
                f"training.micro_batch_size: {rows} (the same global batch of {spec.training.batch_size} rows, "
                "in more micro-batches)",
                job,
            )
        )
    while spec.eval is not None and job.eval_batch > 1:
        job = replace(job, eval_batch=job.eval_batch // 2)
        out.append((f"eval.batch_size: {job.eval_batch}", job))
    return out + _attack_moves(spec, job)


def _attack_moves(spec: Spec, job: Job) -> list[tuple[str, Job]]:
    """The attack runs on one GPU: smaller micro-batches, then LoRA adapters instead of full fine-tuning."""
    out: list[tuple[str, Job]] = []
    if spec.attack is None:
        return out
    batch = spec.attack.batch_size
    for rows in sorted((d for d in range(1, job.attack_rows) if batch % d == 0), reverse=True):
        job = replace(job, attack_rows=rows)
        out.append((f"attack.micro_batch_size: {rows}", job))
    if not job.attack_lora:
        out.append(
            (
                "attack.lora: {rank: 8} (a LoRA attack: the full one holds parameters, gradients and optimizer "
                "state on one GPU)",
                replace(job, attack_lora=True),
            )
        )
    return out


def _summary(est: dict[str, float], gpu_gb: float, host_gb: Optional[float]) -> str:
    gpu = ", ".join(f"{k} {gib(v):.1f}" for k, v in est.items() if k != HOST) + f" GB of {gpu_gb:g} per GPU"
    host = f"; {HOST} {gib(est[HOST]):.0f} GB of {host_gb:g}" if HOST in est and host_gb is not None else ""
    return gpu + host


def _fit(est: dict[str, float], gpu_gb: float, host_gb: Optional[float]) -> bool:
    return all(fits(v, host_gb if k == HOST else gpu_gb) for k, v in est.items())


def _device_fix(
    spec: Spec, m: ModelShape, job: Job, kind: str, gpus: int, gpu_gb: float
) -> tuple[str, dict[str, float]]:
    """The knobs that make the GPU phases fit (cheapest first, cumulative), and the estimate with them."""
    chosen: dict[str, str] = {}  # field -> its setting (a later move of the same field replaces the earlier)
    moved = job
    for knob, moved in _moves(spec, job, gpus):
        chosen[knob.split(":")[0]] = knob
        after = phases(spec, m, moved, kind)
        if _fit(after, gpu_gb, None):
            return f"set {'; '.join(chosen.values())}", after
    if _unsharded(spec):  # more GPUs hold more replicas of the same per-GPU memory: only the dtype halves it
        if job.setting.dtype_bytes > 2:
            moved = replace(moved, setting=replace(moved.setting, dtype_bytes=2))
            after = phases(spec, m, moved, kind)
            if _fit(after, gpu_gb, None):
                chosen["model.dtype"] = (
                    "model.dtype: bfloat16 (objective `rmu` runs unsharded, refusing FSDP and "
                    "LoRA, so more GPUs would not shrink it; the WMDP paper's code loads both "
                    "models in bfloat16)"
                )
                return f"set {'; '.join(chosen.values())}", after
        return "", {}
    for more in (2, 4, 8, 16):
        wide = replace(
            job,
            setting=replace(job.setting, world=more, fsdp=True, offload_states=True, rows=1, questions=1),
            activation_checkpointing=True,
            train_rows=1,
            eval_batch=1,
            attack_rows=1,
            attack_lora=spec.attack is not None,
        )
        after = phases(spec, m, wide, kind)
        if more > gpus and _fit(after, gpu_gb, None):
            lora = (
                " and `attack.lora: {rank: 8}` (the attack runs on one GPU)"
                if job.attack_lora != wide.attack_lora
                else ""
            )
            return (
                f"give `{kind}` jobs {more} GPUs (slurm.jobs.{kind}.gpus/processes) with every memory knob of the "
                f"model{lora}"
            ), after
    return "", {}


def fit_report(
    spec: Spec, kind: str, gpus: int, gpu_gb: float, host_gb: Optional[float] = None
) -> tuple[Optional[bool], str, str, str]:
    """(fits as is (None: not estimated), the estimate as is, where the model shape came from, the fix: knobs that
    make it fit, or why none does) for one job. GPU phases are checked against `gpu_gb` per GPU, host RAM (all
    ranks) against `host_gb` (the job's mem_gb)."""
    m, source = model_shape(spec)
    if m is None:
        return None, "", source, ""
    job = job_of(spec, max(gpus, 1))
    est = phases(spec, m, job, kind)
    now = _summary(est, gpu_gb, host_gb) + f" on {max(gpus, 1)} GPU(s)"
    if _fit(est, gpu_gb, host_gb):
        return True, now, source, ""
    fixes, after = [], est
    if not _fit(est, gpu_gb, None):
        knobs, after = _device_fix(spec, m, job, kind, gpus, gpu_gb)
        if not knobs and _unsharded(spec):
            return (
                False,
                now,
                source,
                (
                    "objective `rmu` runs unsharded (it refuses FSDP and LoRA), so more GPUs do "
                    "not shrink it, and no knob of the memory model makes it fit (bfloat16 "
                    "included): use larger GPUs"
                ),
            )
        if not knobs:
            return (
                False,
                now,
                source,
                "no knob of the memory model makes it fit 16 GPUs; use LoRA (`lora:`) or larger GPUs",
            )
        fixes.append(knobs)
    if HOST in after and host_gb is not None and not fits(after[HOST], host_gb):
        fixes.append(
            f"raise slurm.jobs.{kind}.mem_gb to {math.ceil(gib(after[HOST]) / HEADROOM)} (host RAM over its ranks: "
            "the model each rank loads, then the states the reverse pass keeps there)"
        )
    return False, now, source, "; and ".join(fixes) + f": {_summary(after, gpu_gb, None)}"


def job_kinds(spec: Spec) -> list[str]:
    """The kinds of the jobs a spec's plan holds that run on GPUs (LDS retrainings are `point`-sized)."""
    kinds = ["score"] if spec.magic is not None else ["point"]
    if spec.magic is None and spec.baseline is not None and spec.baseline.evaluate:
        kinds.append("baseline")
    return kinds


def memory_lines(spec: Spec, site) -> list[str]:
    """`show --cluster`: each GPU job's estimated peak per GPU against the site's `gpu_mem_gb`."""
    out = []
    for kind in job_kinds(spec):
        res = site.resources(kind)
        par = spec.parallel_or_default
        layout = f"{res.processes} process(es), {par.strategy if res.processes > 1 else 'one process'}"
        if res.gpus == 0:
            continue
        if res.gpu_mem_gb is None:
            out.append(f"{kind}: {res.gpus} GPU(s), {layout}; set slurm.jobs.{kind}.gpu_mem_gb to check its memory")
            continue
        ok, now, source, fix = fit_report(spec, kind, res.gpus, res.gpu_mem_gb, res.mem_gb)
        verdict = {None: f"not estimated ({source})", True: "fits", False: f"does NOT fit; {fix}"}[ok]
        out.append(f"{kind}: {layout}; {now}: {verdict}" if now else f"{kind}: {layout}: {verdict}")
    return out


def memory_findings(entry, site, gpu_mem_gb: Optional[float]) -> list[Finding]:
    """D16 for one spec: each job kind it runs against its GPUs (`site`: a SlurmSection or None)."""
    spec = entry.spec
    if spec is None or (site is None and gpu_mem_gb is None):
        return []
    out = []
    for kind in job_kinds(spec):
        res = site.resources(kind) if site is not None else None
        gpu_gb = gpu_mem_gb if gpu_mem_gb is not None else getattr(res, "gpu_mem_gb", None)
        if gpu_gb is None:
            continue
        gpus = res.gpus if res is not None else 1
        ok, now, source, fix = fit_report(spec, kind, gpus, gpu_gb, res.mem_gb if res is not None else None)
        evidence = (
            f"model shape: {source}",
            "memory model: docs/magic.md 'Memory model', unlearnspec/doctor/memory_model.py",
        )
        if ok is None:
            out.append(Finding("D16", "info", entry.shown, f"{kind} job's memory not estimated: {source}."))
        elif ok:
            out.append(Finding("D16", "info", entry.shown, f"{kind} job fits its resources: {now}.", evidence))
        else:
            out.append(
                Finding(
                    "D16",
                    "error",
                    entry.shown,
                    f"{kind} job will not fit its memory: {now}; it would fail with out-of-memory after queueing.",
                    evidence,
                    fix[0].upper() + fix[1:] + ".",
                )
            )
    return out

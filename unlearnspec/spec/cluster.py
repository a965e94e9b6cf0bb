"""Cluster resources for `run --executor slurm`: a `slurm:` section in a site file (`--cluster FILE`, e.g.
specs/profiles/slurm_example.yaml) or in a mapping profile (the toy profile's section sizes toy jobs).

Every job kind (score, point, baseline, and the final assemble job) names its GPUs, processes, CPUs,
memory and time limit here; nothing is left to a hidden default. Imports no torch and no submitit.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationError, model_validator

from unlearnspec.errors import UserError
from unlearnspec.spec.base import SpecRuleError, _Section

JobKindName = Literal["score", "point", "baseline", "lds", "assemble"]


def control_character(value: Any, loc: tuple[Any, ...] = ()) -> Optional[tuple[tuple[Any, ...], str]]:
    """The first text (a key or a value, at any depth) holding a control character or a line/paragraph
    separator, as (field path, the character); None when there is none. Such text in a site or profile
    field would end an `#SBATCH` line or a script line, and what follows would run as a shell command."""
    if isinstance(value, str):
        bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
        return (loc, bad) if bad is not None else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = control_character(k, loc + (k,)) if isinstance(k, str) else None
            found = found or control_character(v, loc + (k,))
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = control_character(v, loc + (i,))
            if found:
                return found
    return None


class _OneLineText(_Section):
    """A section of a site or profile file: every text in it is one line without control characters."""

    @model_validator(mode="before")
    @classmethod
    def _one_line(cls, data: Any) -> Any:
        found = control_character(data)
        if found is not None:
            loc, char = found
            raise SpecRuleError(
                loc,
                f"holds the control character {char!r}. Site and profile text becomes part of "
                "`#SBATCH` and shell lines of every job script, where a line break would run the "
                "rest as a command; write it on one line without control characters.",
            )
        return data


class JobResources(_OneLineText):
    """What one SLURM job of a kind asks for (one node)."""

    gpus: int = Field(default=0, ge=0, le=1024)
    """GPUs per job (`--gpus-per-node`); 0 runs on CPUs only."""
    processes: int = Field(default=1, ge=1, le=1024)
    """Processes per job; more than 1 starts them with torchrun (one per GPU on a GPU job)."""
    cpus: int = Field(ge=1, le=1_000_000)
    """CPUs per job (`--cpus-per-task`)."""
    mem_gb: float = Field(gt=0, le=1_000_000)
    """Memory per job in GB (`--mem`), at most 1,000,000 (a petabyte)."""
    time_min: int = Field(ge=1, le=10_000_000)
    """Time limit in minutes (`--time`), at most 10,000,000 (19 years); a job killed by it is requeued up to
    `slurm.max_requeues` times."""
    gpu_mem_gb: Optional[float] = Field(default=None, gt=0, le=1_000_000)
    """Memory of one of its GPUs in GB as SLURM counts them (2^30 bytes; nvidia-smi's MiB / 1024), e.g. 80 for an
    A100/H100 80GB. Not asked of SLURM: `doctor` and `show --cluster` check each job's estimated peak per GPU
    against it before submission (90% of it, the rest is the CUDA context's). Unset: not checked."""

    @model_validator(mode="after")
    def _rules(self) -> "JobResources":
        if self.gpus and self.processes > self.gpus:
            raise SpecRuleError(
                ("processes",),
                f"{self.processes} processes on {self.gpus} GPU(s): use at most one "
                "process per GPU (set `processes` to `gpus`).",
            )
        return self


class JobKinds(_OneLineText):
    """Resources per job kind."""

    score: JobResources
    """MAGIC score runs (training plus the exact reverse pass: the largest jobs)."""
    point: JobResources
    """One sweep point: train, evaluate, save."""
    baseline: JobResources
    """Evaluation of the untouched base model (once per model and evaluation)."""
    lds: Optional[JobResources] = None
    """One LDS retraining of a score run (`magic.lds`: a forward training run and one query evaluation);
    unset: the `point` resources."""
    assemble: JobResources = JobResources(cpus=1, mem_gb=4, time_min=30)
    """The final job that writes results.json and the reports once the others ended."""


class SlurmSection(_OneLineText):
    """Where and how jobs are submitted."""

    partition: Optional[str] = None
    """Partition (`--partition`); unset: the cluster's default partition."""
    account: Optional[str] = None
    """Account to charge (`--account`)."""
    qos: Optional[str] = None
    """Quality of service (`--qos`)."""
    extra_sbatch: list[str] = []
    """More `#SBATCH` options, written as on the sbatch command line, e.g. `--constraint=a100`, `--exclusive`."""
    setup: list[str] = []
    """Shell lines run in each job before Python starts, e.g. `module load cuda/12.4`,
    `source ~/venvs/unlearnspec/bin/activate`. The submitting shell's environment is passed on."""
    max_requeues: int = Field(default=3, ge=0, le=1000)
    """How often a job stopped by its time limit is requeued (it restarts its point from scratch) before it is
    reported failed. Preempted jobs are always requeued."""
    jobs: JobKinds
    """Resources per job kind."""

    @model_validator(mode="after")
    def _rules(self) -> "SlurmSection":
        for i, line in enumerate(self.extra_sbatch):
            if not re.fullmatch(r"--[A-Za-z][A-Za-z0-9-]*(=.*)?", line):
                raise SpecRuleError(
                    ("extra_sbatch", i),
                    f"write sbatch options as `--name=value` or `--flag`, the name in "
                    f"letters, digits and `-` (got {line!r}).",
                )
        return self

    def resources(self, kind: JobKindName) -> JobResources:
        if kind == "lds" and self.jobs.lds is None:
            return self.jobs.point
        return getattr(self.jobs, kind)

    def sbatch_extra(self) -> dict[str, Any]:
        """extra_sbatch as submitit's `slurm_additional_parameters` ({name: value}, True for a bare flag)."""
        out: dict[str, Any] = {}
        for line in self.extra_sbatch:
            name, eq, value = line[2:].partition("=")
            out[name.replace("-", "_")] = value if eq else True
        return out


class ClusterProfile(_OneLineText):
    """A site file: the cluster's SLURM settings (`unlearnspec run ... --executor slurm --cluster FILE`)."""

    name: str
    """Short name of the site."""
    slurm: SlurmSection
    """SLURM settings."""


def is_cluster_data(data: Any) -> bool:
    """A YAML mapping that is a site file (a `slurm` section and no model mapping)."""
    return isinstance(data, dict) and "slurm" in data and "model" not in data


def load_cluster(path: Path) -> ClusterProfile:
    """Read and validate a site file; problems name the file and field."""
    from unlearnspec.spec.yamlio import read_yaml_file, validation_problems_for

    data, node = read_yaml_file(path)
    if not is_cluster_data(data):
        raise UserError.one(
            str(path),
            "a cluster file is a YAML mapping with `name` and a `slurm` section "
            "(see specs/profiles/slurm_example.yaml).",
        )
    try:
        return ClusterProfile.model_validate(data)
    except ValidationError as exc:
        raise UserError(validation_problems_for(ClusterProfile, exc, data, node, str(path))) from None

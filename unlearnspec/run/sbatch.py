"""The sbatch script of one SLURM job: its parameters from the site's resources, a check that no text on an
`#SBATCH` line can end it, and the script itself (written by submitit; no SLURM binaries needed to see it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict, Union

from unlearnspec.spec.cluster import JobKindName, SlurmSection

if TYPE_CHECKING:
    from submitit import SlurmExecutor


class SbatchParameters(TypedDict, total=False):
    """submitit's sbatch parameters of one job, named as `submitit.slurm.slurm._make_sbatch_string` names them."""

    job_name: str
    time: int
    nodes: int
    ntasks_per_node: int
    cpus_per_task: int
    mem: str
    setup: list[str]
    additional_parameters: dict[str, Union[str, bool]]
    """The site's `extra_sbatch` options ({name: value}, True for a bare flag) and `kill_on_invalid_dep`."""
    gpus_per_node: int
    partition: str
    account: str
    qos: str
    dependency: str


@dataclass(frozen=True)
class SbatchJob:
    """What one submission asks of sbatch besides the site's resources: its kind (which resources), its name and
    the SLURM ids it waits for (`afterok` for a job's producers, `afterany` for the final assemble job)."""

    kind: JobKindName
    name: str
    after: tuple[str, ...] = ()
    how: Literal["afterok", "afterany"] = "afterok"


def sbatch_parameters(settings: SlurmSection, job: SbatchJob) -> SbatchParameters:
    """submitit's sbatch parameters of one job: its kind's resources, the site's partition/account/qos and
    extra options, and its dependencies."""
    res = settings.resources(job.kind)
    extra = {**settings.sbatch_extra(), "kill_on_invalid_dep": "yes"}
    params = SbatchParameters(
        job_name=job.name,
        time=res.time_min,
        nodes=1,
        ntasks_per_node=1,
        cpus_per_task=res.cpus,
        mem=f"{int(res.mem_gb * 1024)}MB",
        setup=list(settings.setup),
        additional_parameters=extra,
    )
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    if settings.partition:
        params["partition"] = settings.partition
    if settings.account:
        params["account"] = settings.account
    if settings.qos:
        params["qos"] = settings.qos
    if job.after:
        params["dependency"] = f"{job.how}:" + ":".join(job.after)
    return params


def check_sbatch_text(params: SbatchParameters, folder: Path) -> None:
    """No text that ends up on an `#SBATCH` line may hold a control character: a line break would end the line,
    sbatch would stop reading options there (dropping --time and --signal) and bash would run the rest. The
    site and profile fields are refused at validation; this also covers the job folder (from --out or
    output.dir) and anything a later field adds."""
    from unlearnspec.errors import UserError
    from unlearnspec.spec.cluster import control_character

    found = control_character({**params, "folder": str(folder)})
    if found is not None:
        loc, char = found
        field = ".".join(str(p) for p in loc)
        what = "the job folder (from --out or output.dir)" if field == "folder" else f"the sbatch option `{field}`"
        raise UserError.one(
            str(folder) if field == "folder" else field,
            f"{what} holds the control character {char!r}, "
            "which would end its #SBATCH line and run the rest as a shell command; nothing was "
            "submitted. Use a folder name and site fields without control characters.",
        )


def sbatch_script(folder: Path, settings: SlurmSection, job: SbatchJob, command: str) -> str:
    """The sbatch script submitit writes for one job (no SLURM binaries needed: for checks and tests)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = sbatch_parameters(settings, job)
    check_sbatch_text(params, folder)
    return _make_sbatch_string(command=command, folder=folder, **params)


def _executor(folder: Path, settings: SlurmSection, job: SbatchJob) -> SlurmExecutor:
    import submitit

    params = sbatch_parameters(settings, job)
    check_sbatch_text(params, folder)
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    ex.update_parameters(**params)
    return ex

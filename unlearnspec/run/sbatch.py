"""The sbatch script of one SLURM job: its parameters from the site's resources, a check that no text on an
`#SBATCH` line can end it, and the script itself (written by submitit; no SLURM binaries needed to see it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearnspec.spec.cluster import JobKindName, SlurmSection


def sbatch_parameters(
    settings: SlurmSection, kind: JobKindName, name: str, after: list[str], how: str
) -> dict[str, Any]:
    """submitit's sbatch parameters of one job: its kind's resources, the site's partition/account/qos and
    extra options, and its dependencies."""
    res = settings.resources(kind)
    extra = {**settings.sbatch_extra(), "kill_on_invalid_dep": "yes"}
    params: dict[str, Any] = dict(
        job_name=name,
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
    for key in ("partition", "account", "qos"):
        if getattr(settings, key):
            params[key] = getattr(settings, key)
    if after:
        params["dependency"] = f"{how}:" + ":".join(after)
    return params


def check_sbatch_text(params: dict[str, Any], folder: Path) -> None:
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


def sbatch_script(
    folder: Path, settings: SlurmSection, kind: JobKindName, name: str, after: list[str], how: str, command: str
) -> str:
    """The sbatch script submitit writes for one job (no SLURM binaries needed: for checks and tests)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = sbatch_parameters(settings, kind, name, after, how)
    check_sbatch_text(params, folder)
    return _make_sbatch_string(command=command, folder=folder, **params)


def _executor(folder: Path, settings: SlurmSection, kind: JobKindName, name: str, after: list[str], how: str) -> Any:
    import submitit

    params = sbatch_parameters(settings, kind, name, after, how)
    check_sbatch_text(params, folder)
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    ex.update_parameters(**params)
    return ex

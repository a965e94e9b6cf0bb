"""The `unlearnspec` command line. Heavy imports (torch, transformers, trl, peft, lm_eval) happen
inside the commands that need them, so `validate`, `schema`, `show` and `--help` start fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Literal, Optional

import typer

import unlearnspec.toy  # noqa: F401 - registers the embedded toy world with unlearnspec.worlds (the plug-in at the edge)
from unlearnspec.cli.results import results_app
from unlearnspec.cli.support import (  # noqa: F401 - render_problems: re-exported for tests
    ClusterOption,
    DeviceOption,
    ProfileOption,
    SetOption,
    ToyOption,
    _console,
    output_folder,
    render_problems,
    resolve_profile,
    user_errors,
)
from unlearnspec.cli.toy import toy_app
from unlearnspec.errors import Problem, UserError

app = typer.Typer(
    name="unlearnspec",
    help="Validated specs for attribution-guided unlearning: run, score (MAGIC), evaluate, report.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)

app.add_typer(results_app)  # report, diff, lds, status: listed after the commands below
app.add_typer(toy_app, name="toy")

NprocOption = typer.Option(
    1,
    "--nproc",
    min=1,
    help="Processes (data-parallel ranks) per job; `training.batch_size` is the global batch, split over them.",
)


@app.command()
@user_errors
def validate(
    paths: List[Path] = typer.Argument(..., help="Spec files or folders (searched recursively)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
) -> None:
    """Validate spec files (and profiles under a `profiles/` folder). Exit 0 if all are valid, 2 otherwise.
    With --toy (or --profile), each spec, its producers and its control are checked as mapped, as plan,
    doctor and run read them.

    Example: [bold]unlearnspec validate specs/[/bold] ; [bold]unlearnspec validate specs/ --toy[/bold]
    """
    from unlearnspec.spec.load import find_spec_files, validate_files

    chosen = resolve_profile(toy, profile)
    files, problems = find_spec_files(paths)
    if not files and not problems:
        problems.append(Problem(" ".join(map(str, paths)), "", "no .yaml/.yml files found."))
    checked, file_problems = validate_files(files, chosen)
    problems.extend(file_problems)
    if problems:
        render_problems(problems)
        bad = len({p.file for p in problems})
        _console(stderr=True).print(f"[red]{bad} of {len(files)} file(s) invalid[/red]")
        raise typer.Exit(2)
    if not quiet:
        _console().print(f"[green]ok[/green] {checked} file(s) valid")


@app.command()
def schema() -> None:
    """Print the JSON Schema of spec files (use with yaml-language-server, see docs/getting-started.md)."""
    from unlearnspec.spec import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
@user_errors
def show(
    spec: Path = typer.Argument(..., help="Spec file."),
    set_: Optional[List[str]] = SetOption,
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
    cluster: Optional[Path] = ClusterOption,
    nproc: int = NprocOption,
) -> None:
    """Print the resolved spec (after --set overrides and an optional profile), how its global batch splits over
    the processes of a launch (--nproc N, or with --cluster the processes of its SLURM job), and with --cluster
    (or a profile with a `slurm:` section) the SLURM resources its jobs would get.

    Example: [bold]unlearnspec show specs/exp7_all_tokens.yaml --toy --set training.lr=1e-3[/bold]
    """
    from unlearnspec.spec.batch import batch_layout
    from unlearnspec.spec.load import dump_spec, load_spec

    chosen = resolve_profile(toy, profile)
    resolved = load_spec(spec, overrides=set_ or [], profile=chosen)
    world, launch, slurm = nproc, f"--nproc {nproc}" if nproc > 1 else "one process; --nproc N shows N", ""
    if cluster is not None:  # read before anything is printed: a bad site file prints only its error
        import yaml

        from unlearnspec.doctor.memory_rules import memory_lines
        from unlearnspec.spec.profile import slurm_settings

        if nproc > 1:
            raise UserError.one(
                "--nproc",
                "give --nproc or --cluster, not both: with --cluster the site file's "
                "`processes` of the job kind is the rank count.",
            )
        settings, source = slurm_settings(cluster, chosen)
        kind: Literal["score", "point"] = "score" if resolved.magic is not None else "point"
        world, launch = settings.resources(kind).processes, f"jobs.{kind}.processes in {source}"
        slurm = f"# SLURM resources (from {source})\n" + yaml.safe_dump(
            {"slurm": settings.model_dump(mode="json")}, sort_keys=False
        )
        lines = memory_lines(resolved, settings)
        if lines:
            slurm += (
                "# Memory per GPU (memory model, docs/magic.md 'Memory model'; `doctor --cluster` checks it)\n"
                + "".join(f"#   {line}\n" for line in lines)
            )
    layout = batch_layout(resolved.training, world, file=str(spec), launch=launch, n_rows=resolved.data.select.count)
    sys.stdout.write(dump_spec(resolved) + f"# batch ({launch}): {layout.describe()}\n" + slurm)


@app.command()
@user_errors
def doctor(
    paths: List[Path] = typer.Argument(..., help="Spec files or folders (searched recursively)."),
    format: str = typer.Option("table", "--format", help="table | json."),
    strict: bool = typer.Option(False, "--strict", help="Count warnings as errors (exit 2)."),
    lr_factor: float = typer.Option(1.25, "--lr-factor", help="Flag a per-token LR ratio to the control above this."),
    lds_min: float = typer.Option(
        0.8, "--lds-min", help="A score source whose LDS (Spearman) is below this is an error."
    ),
    lds_fraction_factor: float = typer.Option(
        5.0,
        "--lds-fraction-factor",
        help="Warn when an experiment changes this many times more tokens than the LDS dropped.",
    ),
    power: float = typer.Option(
        0.8,
        "--power",
        help="Power of the minimum detectable effect (D14 warns when a study's largest effect is below it), in [0.5, 1).",
    ),
    near_zero: float = typer.Option(
        1e-3,
        "--near-zero",
        help="D15 warns about questions (leaf tasks) whose max |score| is below this times the median one's (rules reading min_q/rank_q/wsum_q, min_t/rank_t/wsum_t), in [0, 1).",
    ),
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
    cluster: Optional[Path] = typer.Option(
        None,
        "--cluster",
        help="Site file: D16 checks each job's estimated peak memory per GPU against its slurm.jobs.<kind>.gpu_mem_gb.",
    ),
    gpu_mem_gb: Optional[float] = typer.Option(
        None,
        "--gpu-mem-gb",
        help="GPU memory in GB for D16 (wins over the site file's gpu_mem_gb; without --cluster: 1 GPU per job).",
    ),
) -> None:
    """Find what invalidates an experiment: unmatched controls, score/data/regime mismatches, precision, alignment,
    masked-LR shifts, and (from results.json or the recorded tables) collapse, within-noise effects, moving controls;
    per study (the checked specs sharing a control): no positive control (D13), largest effect below the MDE (D14);
    unusable or near-zero per-question (per-leaf) scores under a `min_q`/`rank_q`/`wsum_q` (`min_t`/...) rule (D15);
    with --cluster or --gpu-mem-gb, each job whose estimated peak memory per GPU exceeds its GPUs, and the knobs that fix it (D16).
    Exit 0 clean, 1 warnings only, 2 errors (or warnings with --strict).

    Example: [bold]unlearnspec doctor specs/[/bold]
    """
    from unlearnspec.doctor import Thresholds, diagnose, exit_code, print_findings, to_json

    if format not in ("table", "json"):
        raise UserError.one("--format", f"unknown format {format!r}; use table or json.")
    thresholds = Thresholds(lr_factor, lds_min, lds_fraction_factor, power, near_zero)
    findings, count = diagnose(
        paths, thresholds, profile=resolve_profile(toy, profile), cluster=cluster, gpu_mem_gb=gpu_mem_gb
    )
    if format == "json":
        sys.stdout.write(to_json(findings, count, strict))
    else:
        print_findings(findings, count, _console())
    raise typer.Exit(exit_code(findings, strict))


@app.command()
@user_errors
def run(
    paths: List[Path] = typer.Argument(
        ..., help="Spec files or folders. Score specs run first, then controls, then the rest."
    ),
    set_: Optional[List[str]] = SetOption,
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder (one spec only); default: the spec's output.dir."
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Rerun sweep points recorded as failed."),
    report: bool = typer.Option(
        True, "--report/--no-report", help="Write <spec>.md/.json/.png reports for the experiments run."
    ),
    reports_dir: Optional[Path] = typer.Option(
        None,
        "--reports-dir",
        help="Where reports go (default: <out>/reports with --out, else the specs' project reports/).",
    ),
    device: Optional[str] = DeviceOption,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan (jobs, order, folders, done or not) and run nothing."
    ),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Processes (data-parallel ranks) per job: starts `torchrun --nproc-per-node N -m unlearnspec run ...` (serial executor); the global batch (`training.batch_size`) is split over them.",
    ),
    jobs: int = typer.Option(
        1,
        "--jobs",
        "-j",
        min=1,
        help="Jobs at once, each in its own worker process (the pool executor); 1: one after another here.",
    ),
    gpus_per_job: Optional[int] = typer.Option(
        None,
        "--gpus-per-job",
        min=0,
        help="GPUs per pool job, a disjoint CUDA_VISIBLE_DEVICES set each (default: 1 when GPUs are visible, else 0).",
    ),
    executor: Optional[str] = typer.Option(
        None,
        "--executor",
        help="serial (here, one job after another) | pool (here, --jobs N at once) | slurm (submit every job to SLURM and return). Default: pool with --jobs > 1 or --gpus-per-job, else serial.",
    ),
    cluster: Optional[Path] = ClusterOption,
) -> None:
    """Run specs: the plan's score, baseline and sweep-point jobs (resumable), results.json, then reports.
    On a terminal a live panel shows jobs done by kind, the running ones and an ETA; in logs one line per job.

    Examples: [bold]unlearnspec run specs/exp7_all_tokens.yaml --toy[/bold] ;
    [bold]unlearnspec run specs/ --toy --jobs 2[/bold] (the whole toy study, two jobs at once) ;
    [bold]unlearnspec run specs/ --executor slurm --cluster my_site.yaml[/bold] (then [bold]unlearnspec status specs/[/bold])
    """
    import os

    output_folder(out, "--out")
    output_folder(reports_dir, "--reports-dir")
    from unlearnspec.toy.numerics import pin_for_profile

    pin_for_profile(resolve_profile(toy, profile))  # before torch is imported: ATen and MKL read their pins once
    from unlearnspec.report.commands import report_runs
    from unlearnspec.run.executors import executor_class
    from unlearnspec.run.executors.base import ExecutorOptions
    from unlearnspec.run.study import RunOptions, check_launch, run_study, show_plan

    settings = ExecutorOptions(jobs=jobs, gpus_per_job=gpus_per_job, nproc=nproc, cluster=cluster)
    chosen = executor_class(executor, settings)  # an unknown name is refused before any work

    options = RunOptions(
        profile=resolve_profile(toy, profile),
        auto_produce=toy,
        overrides=set_ or [],
        out=out,
        retry_failed=retry_failed,
        device=device,
        report=report,
        reports_dir=reports_dir,
        reporter=report_runs,
    )
    if nproc > 1 and chosen.under_torchrun and not dry_run and "WORLD_SIZE" not in os.environ:
        check_launch(paths, options, nproc)  # one clear refusal here instead of one per rank
        raise typer.Exit(_torchrun(nproc))
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if dry_run:
        raise typer.Exit(show_plan(paths, options, _console(), world_size=nproc))
    code = run_study(paths, options, _console(), executor=chosen.name, settings=settings)
    if report and not chosen.detached and code in (0, 1) and os.environ.get("RANK", "0") == "0":
        _doctor_summary(paths, toy, profile)
    raise typer.Exit(code)


def _doctor_summary(paths: List[Path], toy: bool, profile: Optional[Path]) -> None:
    """After a local run: the doctor's verdict on the specs just run (and their results), in a few lines."""
    import shlex

    from unlearnspec.doctor import diagnose
    from unlearnspec.doctor.findings import print_summary

    findings, count = diagnose(paths, profile=resolve_profile(toy, profile))
    flags = " --toy" if toy else (f" --profile {shlex.quote(str(profile))}" if profile else "")
    print_summary(
        findings, count, _console(), f"unlearnspec doctor {' '.join(shlex.quote(str(p)) for p in paths)}{flags}"
    )


def _torchrun(nproc: int) -> int:
    """Rerun this very command under torchrun (the existing launcher; nothing home-made) with N ranks."""
    import subprocess

    args = sys.argv[1:]
    i = next(k for k, a in enumerate(args) if a == "--nproc" or a.startswith("--nproc="))
    args = args[:i] + args[i + (1 if "=" in args[i] else 2) :]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "unlearnspec",
        *args,
    ]
    _console(stderr=True).print(f"[launch] {' '.join(cmd[2:])}", markup=False)
    return subprocess.run(cmd).returncode


@app.command()
@user_errors
def plan(
    paths: List[Path] = typer.Argument(..., help="Spec files or folders."),
    set_: Optional[List[str]] = SetOption,
    toy: bool = ToyOption,
    profile: Optional[Path] = ProfileOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (one spec only)."),
    device: Optional[str] = DeviceOption,
    format: str = typer.Option("table", "--format", help="table | json."),
    nproc: int = NprocOption,
) -> None:
    """Print the jobs `run` would execute, in order: score, baseline and point jobs, their folders, what
    each waits for, which are already done, and how each training job's global batch splits over --nproc ranks.

    Example: [bold]unlearnspec plan specs/exp5_selective.yaml --toy[/bold]
    """
    from unlearnspec.run.study import RunOptions, show_plan

    if format not in ("table", "json"):
        raise UserError.one("--format", f"unknown format {format!r}; use table or json.")
    options = RunOptions(
        profile=resolve_profile(toy, profile), auto_produce=toy, overrides=set_ or [], out=out, device=device
    )
    raise typer.Exit(show_plan(paths, options, _console(), as_json=format == "json", world_size=nproc))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

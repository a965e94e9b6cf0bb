"""`unlearnspec toy ...`: build the embedded offline toy world and regenerate its task folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from unlearnspec.cli.support import _console, output_folder, user_errors
from unlearnspec.errors import UserError

toy_app = typer.Typer(help="The embedded offline toy world: tiny model, corpora and cloze tasks.", no_args_is_help=True)
WorldOption = typer.Option(None, "--config", help="Toy world file (default: specs/profiles/toy_world.yaml).")


@toy_app.command("build")
@user_errors
def toy_build(
    force: bool = typer.Option(
        False,
        "--force",
        help="Rebuild from scratch (generate, pretrain, evaluate) even when the cache holds this world.",
    ),
    config: Optional[Path] = WorldOption,
    ship: bool = typer.Option(
        False,
        "--ship",
        help="With --force, in a source checkout: also write the rebuilt default world into unlearnspec/toy/shipped/ (package data).",
    ),
) -> None:
    """Find, install (from the shipped pretrained copy) or build the cached toy world; print where it is and its baseline.

    Examples: [bold]UNLEARNSPEC_CACHE=.cache/unlearnspec unlearnspec toy build --force[/bold] ;
    [bold]unlearnspec toy build --force --ship[/bold] (regenerate the shipped world after changing the world file)
    """
    if ship:
        _check_ship(force, config)
    from unlearnspec.toy.numerics import pin_for_world

    pin_for_world(config)  # before torch is imported: ATen and MKL read their pins once
    from unlearnspec.toy.build import ensure_toy_world

    console = _console()
    world = ensure_toy_world(config, force=force, log=lambda msg: console.print(msg, markup=False))
    info = world.info
    how = (
        f"the shipped pretrained model, installed in {info.get('install_seconds')}s"
        if info.get("source") == "shipped"
        else f"built in {info['build_seconds']}s"
    )
    console.print(f"[green]toy world[/green] {world.root}  ({how})")
    console.print(f"model     {world.model_dir}\ntasks     {world.task_dir}")
    for task, m in info["baseline"].items():
        console.print(
            f"baseline  {task}: acc {m['acc']:.4f} ± {m['acc_stderr']:.4f}, acc_norm {m['acc_norm']:.4f} (n={m['n']})"
        )
    if ship:
        from unlearnspec.toy.shipped import ship as ship_world

        console.print(f"[green]shipped[/green] {ship_world(world.root, info)} (commit it with the world file)")


def _check_ship(force: bool, config: Optional[Path]) -> None:
    """--ship writes package data: only a fresh build of the default world, only into a source checkout."""
    from unlearnspec.toy.build import load_config, world_key
    from unlearnspec.toy.shipped import SHIPPED_DIR

    if not force:
        raise UserError.one(
            "--ship",
            "ships a fresh build only (a cached world may come from older code or from the shipped copy itself); add --force.",
        )
    if config is not None and world_key(load_config(config)) != world_key(load_config(None)):
        raise UserError.one(
            "--ship",
            f"the shipped world is the default world (unlearnspec/profiles/toy_world.yaml), and {config} "
            "describes another; edit the default world file instead, or drop --ship.",
        )
    checkout = SHIPPED_DIR.parents[2]  # <checkout>/unlearnspec/toy/shipped
    if not (checkout / "pyproject.toml").is_file():
        raise UserError.one(
            "--ship",
            f"the package at {SHIPPED_DIR.parents[1]} is installed, not a source checkout; "
            "run it from a clone (with PYTHONPATH or `pip install -e .`) so the shipped copy can be committed.",
        )


@toy_app.command("write-tasks")
@user_errors
def toy_write_tasks(
    out: Path = typer.Option(Path("plugins/toy"), "--out", help="Task folder to (over)write."),
    config: Optional[Path] = WorldOption,
) -> None:
    """Regenerate the toy lm-eval task folder (YAML, loader, JSONL docs) from the world file.

    Example: [bold]unlearnspec toy write-tasks[/bold]  (then commit plugins/toy)
    """
    output_folder(out, "--out")
    from unlearnspec.toy.build import load_config
    from unlearnspec.toy.taskfiles import write_task_folder
    from unlearnspec.toy.world import generate_world

    for path in write_task_folder(generate_world(load_config(config)), out):
        _console().print(f"wrote {path}")


@toy_app.command("truth")
@user_errors
def toy_truth(
    spec: Path = typer.Argument(
        ..., help="Spec whose token grid to mark (mapped through --profile, default the toy profile)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write per_token_scores.pt and scores.json into."),
    task: str = typer.Option("toy_wmdp", "--task", help="Toy task whose facts count as queried (marked -1)."),
    retain: bool = typer.Option(False, "--retain", help="Also mark the values of the facts toy_mmlu asks with +1."),
    profile: Optional[Path] = typer.Option(
        None, "--profile", help="Profile mapping the spec (default: specs/profiles/toy.yaml)."
    ),
) -> None:
    """Write ground-truth scores for a spec's toy token grid: -1 on the tokens that state a value of a fact
    the task asks, 0 elsewhere; a score file with sidecar and data fingerprint, read by token rules via `path:`.

    Example: [bold]unlearnspec toy truth specs/fixed/magic_wmdp.yaml --out runs/toy/truth/magic_wmdp[/bold]
    """
    output_folder(out, "--out")
    from unlearnspec.cli.support import resolve_profile
    from unlearnspec.toy.numerics import pin_for_profile

    chosen = resolve_profile(profile is None, profile)
    assert chosen is not None
    pin_for_profile(chosen)  # before torch is imported
    from unlearnspec.spec.assets import Assets
    from unlearnspec.spec.load import load_spec
    from unlearnspec.spec.profile import world_config_path
    from unlearnspec.toy.truth import RETAIN_TASK, claim_truth_folder, require_toy, spec_truth, write_truth

    claim_truth_folder(out)  # before any work: a folder holding others' files is refused
    loaded = load_spec(spec, profile=chosen)
    require_toy(loaded, str(spec))
    truth = spec_truth(
        loaded, spec, Assets(world_config=world_config_path(chosen)), task, RETAIN_TASK if retain else None
    )
    write_truth(out, truth)
    info = truth.info
    extra = f", {info['retain_tokens']:,} retain-fact tokens (+1)" if retain else ""
    _console().print(
        f"[green]truth[/green] {out}: {info['forget_tokens']:,} of {info['valid_tokens']:,} valid target tokens "
        f"({info['forget_fraction']:.1%}) state a fact {task} asks (-1){extra}; fingerprint {truth.fingerprint[:16]}"
    )


@toy_app.command("quality")
@user_errors
def toy_quality(
    run_dir: Path = typer.Argument(
        ..., help="Folder of a finished toy MAGIC score run (per_token_scores.pt, scores.json, spec.yaml)."
    ),
) -> None:
    """Rate a toy score run against the ground truth (AUROC, precision@k of the facts its query asks) and write
    `attribution_quality` into its scores.json; `doctor --toy` shows it.

    Example: [bold]unlearnspec toy quality runs/toy/fixed/magic_wmdp[/bold]
    """
    from unlearnspec.toy.numerics import pin_for_world

    pin_for_world(None)  # before torch is imported
    from unlearnspec.toy.quality import run_quality

    q = run_quality(run_dir)
    for leaf, figures in [("", q), *sorted((q.get("per_task") or {}).items())]:
        p = ", ".join(f"precision@{k} {v:.3f}" for k, v in figures["precision_at_k"].items() if v is not None)
        auroc = "n/a" if figures["auroc"] is None else f"{figures['auroc']:.3f}"
        _console().print(
            f"{leaf or 'scores':<12} vs {figures['task']}: AUROC {auroc}, {p} "
            f"({figures['truth_tokens']} truth tokens of {figures['valid_tokens']:,})"
        )
    _console().print(f"[green]written[/green] attribution_quality into {run_dir / 'scores.json'}")

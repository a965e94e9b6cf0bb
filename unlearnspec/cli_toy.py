"""`unlearnspec toy ...`: build the embedded offline toy world and regenerate its task folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from unlearnspec.cli_support import _console, output_folder, user_errors

toy_app = typer.Typer(help="The embedded offline toy world: tiny model, corpora and cloze tasks.", no_args_is_help=True)
WorldOption = typer.Option(None, "--config", help="Toy world file (default: specs/profiles/toy_world.yaml).")


@toy_app.command("build")
@user_errors
def toy_build(
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache holds this world."),
    config: Optional[Path] = WorldOption,
) -> None:
    """Build (or find) the cached toy world and print where it is and its baseline accuracy.

    Example: [bold]UNLEARNSPEC_CACHE=.cache/unlearnspec unlearnspec toy build --force[/bold]
    """
    from unlearnspec.numerics import pin_for_world

    pin_for_world(config)  # before torch is imported: ATen and MKL read their pins once
    from unlearnspec.toy.build import ensure_toy_world

    console = _console()
    world = ensure_toy_world(config, force=force, log=lambda msg: console.print(msg))
    info = world.info
    console.print(f"[green]toy world[/green] {world.root}  (built in {info['build_seconds']}s)")
    console.print(f"model     {world.model_dir}\ntasks     {world.task_dir}")
    for task, m in info["baseline"].items():
        console.print(f"baseline  {task}: acc {m['acc']:.4f} ± {m['acc_stderr']:.4f}, acc_norm {m['acc_norm']:.4f} (n={m['n']})")


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

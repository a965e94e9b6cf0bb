"""Embedded worlds plug into the core here: one registration point for a world's names, assets, built-in score
producers, score-quality hook and numerics. The core never imports a world's package; `unlearnspec.toy`
registers the toy world when it is imported (the `unlearnspec` command imports it at start)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

from unlearnspec.errors import UserError

if TYPE_CHECKING:
    import torch

TOY = "toy"
"""The world a spec names with `model.toy`, `data.toy` and `produced_by: toy:...` (the only kind so far)."""

Log = Callable[[str], None]


class BuiltWorld(Protocol):
    """A world as loaders read it: where its model, corpora and lm-eval task files are."""

    @property
    def model_dir(self) -> Path: ...

    @property
    def task_dir(self) -> Path: ...

    def corpus_path(self, name: str) -> Path: ...


@dataclass(frozen=True)
class Producer:
    """A built-in score producer (`produced_by: toy:truth`): computed in-process for a spec's own token grid."""

    description: str
    """One line for `Unknown producer` messages."""
    scores: Callable[..., tuple["torch.Tensor", dict[str, object]]]
    """(on: data.SpecGrid, task, retain_task) -> (scores [N, S] float32, sidecar entries) for the spec's grid `on`;
    the parameters are fixed by its one caller, `unlearnspec.scores.builtin` (a layer above this module, which is
    why they are not typed here)."""


@dataclass(frozen=True)
class World:
    """What a world contributes. Heavy work (building, ground truth) is behind callables that import lazily, so
    registering stays cheap on the `validate`/`show`/`--help` paths."""

    name: str
    plugin: str
    """The module whose import registers this world (worker processes import it again)."""
    models: tuple[str, ...]
    corpora: tuple[str, ...]
    tasks: tuple[str, ...]
    build: Callable[[Optional[Path], Log], BuiltWorld]
    """(world config or None for the default, log) -> the world, built into the cache on first use."""
    key: Callable[[Optional[Path]], str]
    """(world config) -> the cache key of the world, without building it."""
    check_config: Callable[[Path], object]
    """Validate a world config file (`*_world.yaml`); UserError naming the field otherwise."""
    pin_for_profile: Callable[[Optional[Path]], None]
    """Pin what must be pinned before torch loads in a process running this profile's jobs (CPU numerics)."""
    damaged_fix: str
    """What to do when a cached model of this world cannot be loaded."""
    model_dims: Callable[[], tuple[str, dict[str, int]]]
    """(where it came from, {layers, hidden, heads, vocab_size, intermediate}) of the default world's model, read
    from its world file without building it (what `doctor`'s memory model needs)."""
    producers: Mapping[str, Producer] = field(default_factory=dict)
    score_quality: Optional[Callable[..., dict[str, object]]] = None
    """(on: data.SpecGrid, scored: magic.output.QueryScores, say) -> sidecar entries a score job adds (e.g.
    attribution quality against the ground truth), `{}` when it does not apply; the parameters are fixed by its
    one caller, `unlearnspec.run.recipes.score`."""


_WORLDS: dict[str, World] = {}
_PLUGIN = re.compile(r"^unlearnspec(\.[a-z_][a-z0-9_]*)+$")


def register(world: World) -> None:
    """Make `world` the one of its name (a second registration of the same name replaces the first)."""
    _WORLDS[world.name] = world


def registered(name: str = TOY) -> Optional[World]:
    return _WORLDS.get(name)


def get(name: str = TOY) -> World:
    """The registered world `name`; a UserError with the fix when none is (a library user forgot the import)."""
    world = _WORLDS.get(name)
    if world is None:
        raise UserError.one(
            name,
            f"no {name} world is registered in this process: `import unlearnspec.{name}` registers "
            "the embedded one (the `unlearnspec` command does this itself).",
        )
    return world


def names(kind: str, name: str = TOY) -> tuple[str, ...]:
    """The registered world's `models`, `corpora` or `tasks`; () when none is registered."""
    world = _WORLDS.get(name)
    return tuple(getattr(world, kind)) if world is not None else ()


def unknown(kind: str, value: str, name: str = TOY) -> Optional[str]:
    """None when `value` is one of the world's `kind` (models, corpora, tasks), else the message saying so."""
    available = names(kind, name)
    if value in available:
        return None
    singular = {"models": "model", "corpora": "corpus", "tasks": "task"}[kind]
    if name not in _WORLDS:
        return (
            f"unknown {name} {singular} {value!r}: no {name} world is registered in this process "
            f"(`import unlearnspec.{name}` registers the embedded one; the `unlearnspec` command does)"
        )
    return f"unknown {name} {singular} {value!r}; available: {', '.join(available)}"


def producers() -> dict[str, Producer]:
    """Every registered world's built-in producers, by full name (`toy:truth`)."""
    return {key: p for world in _WORLDS.values() for key, p in world.producers.items()}


def plugins() -> tuple[str, ...]:
    """The modules that registered the worlds of this process (a worker imports them again)."""
    return tuple(sorted({w.plugin for w in _WORLDS.values()}))


def load_plugins(modules: Sequence[str], where: str = "worlds") -> None:
    """Import the plugin modules a parent process had (a pool worker, a SLURM job). Only modules of this
    package: the names may come back from a file on disk, which must not choose code to import."""
    for module in modules:
        if not isinstance(module, str) or not _PLUGIN.match(module):
            raise UserError.one(
                where,
                f"{str(module)[:80]!r} is not a world plugin of unlearnspec (a module "
                "`unlearnspec.<name>`); rerun the command that wrote this file.",
            )
        importlib.import_module(module)

"""Where a spec's named things live: model and tokenizer folders, corpora and lm-eval task folders; the cache.

A spec names a hub model or an embedded toy model; `Assets` resolves toy names against one toy world (the one
registered with `unlearnspec.worlds`, built on first use), so loaders take one typed object instead of a
`toy=`/`world=` parameter.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Optional

from unlearnspec import worlds
from unlearnspec.errors import UserError
from unlearnspec.spec.load import project_root
from unlearnspec.spec.sections import ModelSpec

CACHE_ENV = "UNLEARNSPEC_CACHE"


def cache_root() -> Path:
    """$UNLEARNSPEC_CACHE (default ~/.cache/unlearnspec); a path that exists but is no folder is
    refused here, by name, instead of failing deep inside a build."""
    env = os.environ.get(CACHE_ENV)
    root = Path(env or Path.home() / ".cache" / "unlearnspec").expanduser()
    if root.exists() and not root.is_dir():
        where = f"{CACHE_ENV}={env}" if env else str(root)
        raise UserError.one(
            where,
            f"the cache location {root} exists but is not a folder. Point {CACHE_ENV} at a folder (it is created if missing).",
        )
    return root


@dataclass
class Assets:
    """Resolves the names in specs; one per run (the toy world of the profile, or the default one)."""

    world_config: Optional[Path] = None
    """Toy world file (from the profile); None means the default world when a toy name is used."""
    log: Callable[[str], None] = field(default=lambda _msg: None, repr=False)

    @cached_property
    def world(self) -> worlds.BuiltWorld:
        """The toy world, built into the cache on first use."""
        return worlds.get().build(self.world_config, self.log)

    @cached_property
    def world_key(self) -> str:
        """The cache key of the toy world, without building it."""
        return worlds.get().key(self.world_config)

    def model_location(self, model: ModelSpec) -> str:
        if model.toy is not None:
            return str(self.world.model_dir)
        if model.name_or_path is None:  # the schema makes this unreachable; keep mypy and users honest
            raise UserError.one("model", "a model needs `name_or_path` or `toy`.", loc="model")
        return model.name_or_path

    def tokenizer_location(self, model: ModelSpec) -> str:
        return model.tokenizer or self.model_location(model)

    def model_id(self, model: ModelSpec) -> str:
        """A machine-independent name of the model (fingerprints, caches); a toy model is named by its
        world's key, since the world config determines its weights."""
        if model.toy is not None:
            return f"toy:{model.toy}@{self.world_key}"
        rev = f"@{model.revision}" if model.revision else ""
        return f"{model.name_or_path}{rev}"

    def tokenizer_id(self, model: ModelSpec) -> str:
        return model.tokenizer if model.tokenizer else self.model_id(model)

    def corpus_path(self, name: str) -> Path:
        return self.world.corpus_path(name)

    def include_paths(self, spec_path: Path, toy: bool) -> list[Path]:
        """lm-eval include paths: the spec project's plugins/, plus the toy world's task folder unless
        the project already ships identical task files (the same task names twice would clash)."""
        plugins = (project_root(spec_path) / "plugins").resolve()
        paths = [plugins] if plugins.is_dir() else []
        if toy:
            tasks = Path(self.world.task_dir).resolve()
            shipped = plugins / tasks.name if tasks.name != "tasks" else plugins / "toy"
            if not _same_files(tasks, shipped) and tasks not in paths:
                paths.append(tasks)
        return paths


def _same_files(a: Path, b: Path) -> bool:
    if not (a.is_dir() and b.is_dir()):
        return False
    files = [f for f in a.iterdir() if f.is_file()]
    return bool(files) and all((b / f.name).is_file() and (b / f.name).read_bytes() == f.read_bytes() for f in files)


def folder_digest(paths: list[Path]) -> str:
    """sha256 over every file under the given folders (names and contents): task YAML, loaders, docs."""
    h = hashlib.sha256()
    for root in paths:
        if not root.is_dir():
            continue
        for f in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"

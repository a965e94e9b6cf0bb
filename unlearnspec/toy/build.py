"""Build the toy world once and cache it: corpora, facts, task folder, tokenizer and pretrained model.

The cache dir ($UNLEARNSPEC_CACHE, default ~/.cache/unlearnspec) holds one folder per hash of the
world config and generator version; it is built in a temp dir and renamed into place, so an
interrupted build leaves nothing behind. On first use a world whose key matches the shipped copy
(`toy/shipped.py`) takes its tokenizer and model from there instead of pretraining.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from unlearnspec.errors import UserError
from unlearnspec.safeio import follow_umask, read_json, write_bytes, write_json, write_text
from unlearnspec.spec.assets import CACHE_ENV, cache_root  # noqa: F401 - CACHE_ENV: re-exported
from unlearnspec.toy.config import WorldConfig, load_world_config
from unlearnspec.toy.names import DAMAGED_FIX, TOY_CORPORA, TOY_TASKS
from unlearnspec.toy.taskfiles import write_task_folder
from unlearnspec.toy.world import GENERATOR_VERSION, World, generate_world, jsonl, row_text

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "profiles" / "toy_world.yaml"
INFO_FILE = "world.json"

Log = Callable[[str], None]


@dataclass(frozen=True)
class ToyWorld:
    """A built toy world in the cache."""

    root: Path
    """Cache folder of this world."""
    config: WorldConfig
    """The world config it was built from."""
    task_dir: Path
    """lm-eval include path of toy_wmdp/toy_mmlu (the world's own copy in the cache)."""

    @property
    def model_dir(self) -> Path:
        """Model and tokenizer (save_pretrained); load with AutoModelForCausalLM / AutoTokenizer."""
        return self.root / "model"

    @property
    def facts_path(self) -> Path:
        """JSONL of every fact: id, domain, kind, entity, attribute, value, lie, weight, stem."""
        return self.root / "facts.jsonl"

    def corpus_path(self, name: str) -> Path:
        """JSONL of one corpus (`text` or `messages` rows, each with id, domain and fact spans)."""
        if name not in TOY_CORPORA:
            raise UserError.one("toy world", f"unknown toy corpus {name!r}; available: {', '.join(TOY_CORPORA)}.")
        return self.root / "corpora" / f"{name}.jsonl"

    @property
    def info(self) -> dict[str, Any]:
        """Build record: key, generator version, build seconds, baseline metrics of the model."""
        info = read_json(self.root / INFO_FILE, "toy world record", "missing.", DAMAGED_FIX)
        if not isinstance(info, dict) or not isinstance(info.get("baseline"), dict):
            raise UserError.one(str(self.root / INFO_FILE), f"not a toy world record. {DAMAGED_FIX}")
        return info


def world_key(cfg: WorldConfig) -> str:
    """Hash of everything that determines the built world."""
    payload = json.dumps({"generator": GENERATOR_VERSION, "config": cfg.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_config(config_path: Optional[Path]) -> WorldConfig:
    path = Path(config_path) if config_path is not None else DEFAULT_CONFIG
    if config_path is None and not path.is_file():
        raise UserError.one(str(path), "the default toy world file is missing; pass the path of a toy_world.yaml.")
    return load_world_config(path)


def ensure_toy_world(config_path: Optional[Path] = None, *, force: bool = False, log: Optional[Log] = None) -> ToyWorld:
    """The toy world of `config_path` (default specs/profiles/toy_world.yaml), installed from the shipped
    copy or built on first use; `force` rebuilds it from scratch (pretraining included)."""
    cfg = load_config(config_path)
    import unlearnspec.toy.numerics as numerics

    numerics.apply(cfg.numerics, str(config_path or DEFAULT_CONFIG))  # before any tensor work of a build or run
    root = cache_root() / "toy_world" / world_key(cfg)
    if force or not (root / INFO_FILE).is_file():
        _build_atomically(cfg, root, log or (lambda _msg: None), from_shipped=not force)
    return ToyWorld(root=root, config=cfg, task_dir=root / "tasks")


def _build_atomically(cfg: WorldConfig, root: Path, log: Log, from_shipped: bool) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    try:
        if not (from_shipped and install_shipped(cfg, tmp, log)):
            build_world(cfg, tmp, log)
        follow_umask(tmp)  # mkdtemp and safetensors made 0700/0600: a shared cache must be readable
        if from_shipped and (root / INFO_FILE).is_file():
            return  # another process installed the same world (same key) first: keep theirs, which it may be reading
        if root.exists():  # --force, or a folder without its record: replace it
            trash = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.replace(root, trash)
            os.replace(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_world(cfg: WorldConfig, dest: Path, log: Log) -> dict[str, Any]:
    """Generate, pretrain and evaluate into `dest` (an empty folder); returns the build record."""
    start = time.perf_counter()
    world = generate_world(cfg)
    write_world_data(world, dest)
    log(f"generated {len(world.facts)} facts, corpora and tasks in {time.perf_counter() - start:.1f}s")

    import unlearnspec.toy.numerics as numerics
    from unlearnspec.toy.pretrain import pretrain, train_tokenizer

    tokenizer = train_tokenizer((row_text(r) for rows in world.corpora.values() for r in rows), cfg.model)
    model = pretrain(cfg, world.corpora, tokenizer, log)
    model.save_pretrained(dest / "model")
    tokenizer.save_pretrained(dest / "model")
    train_s = time.perf_counter() - start

    baseline = _baseline(model, tokenizer, dest / "tasks")
    for task, m in baseline.items():
        log(f"baseline {task}: acc {m['acc']:.4f} ± {m['acc_stderr']:.4f}  acc_norm {m['acc_norm']:.4f}  (n={m['n']})")
    info = {
        "key": world_key(cfg),
        "generator_version": GENERATOR_VERSION,
        "config": cfg.model_dump(mode="json"),
        "source": "built",
        "build_seconds": round(time.perf_counter() - start, 1),
        "pretrain_seconds": round(train_s, 1),
        "baseline": baseline,
        "numerics": numerics.active(),
    }
    write_json(dest / INFO_FILE, info)
    return info


def install_shipped(cfg: WorldConfig, dest: Path, log: Log) -> Optional[dict[str, Any]]:
    """Generate the world's data into `dest` (an empty folder) and take the tokenizer, model and
    baseline from the shipped copy when it is this config's and intact; None (nothing written) when not."""
    from unlearnspec.toy.shipped import verified_files

    start = time.perf_counter()
    key = world_key(cfg)
    found = verified_files(key, log)
    if found is None:
        return None
    record, files = found
    write_world_data(generate_world(cfg), dest)
    for name, data in files.items():
        write_bytes(dest / "model" / name, data, root=dest)
    info = {k: v for k, v in record.items() if k not in ("files", "regenerate")}
    info.update(source="shipped", install_seconds=round(time.perf_counter() - start, 1))
    write_json(dest / INFO_FILE, info, root=dest)
    log(
        f"toy world {key}: the shipped pretrained model, installed in {info['install_seconds']}s "
        "(`unlearnspec toy build --force` rebuilds it from scratch)"
    )
    return info


def write_world_data(world: World, dest: Path) -> None:
    """The pure-Python part of a world: corpora, facts and the task folder."""
    for name, rows in world.corpora.items():
        write_text(dest / "corpora" / f"{name}.jsonl", jsonl(rows), root=dest)
    write_text(dest / "facts.jsonl", jsonl(f.to_json() for f in world.facts))
    write_task_folder(world, dest / "tasks")


def _baseline(model: Any, tokenizer: Any, task_dir: Path) -> dict[str, Any]:
    from unlearnspec.evaluation import evaluate_model
    from unlearnspec.spec import EvalSpec, EvalTaskSpec

    spec = EvalSpec(tasks=[EvalTaskSpec(name=t, num_fewshot=0) for t in TOY_TASKS], batch_size=32)
    result = evaluate_model(model, tokenizer, spec, [task_dir])
    return {task: m.model_dump(mode="json") for task, m in result.metrics.items()}

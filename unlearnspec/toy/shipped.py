"""The pretrained default toy world shipped as package data (`unlearnspec/toy/shipped/`): its tokenizer,
model and build record, keyed by the world config's hash, so the first `--toy` command copies it into
the cache in seconds instead of pretraining for minutes. Corpora, facts and tasks are not shipped: the
seeded generator rebuilds them in about a second. `unlearnspec toy build --force --ship` regenerates it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from unlearnspec.errors import UserError
from unlearnspec.safeio import follow_umask, read_json, write_json

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
MANIFEST = "world.json"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
"""What `save_pretrained` writes for the toy model and tokenizer: everything shipped besides the manifest."""
MAX_FILE_BYTES = 64 * 2**20
"""Largest shipped file read (the float32 toy model is about 5 MB)."""
REGENERATE = "unlearnspec toy build --force --ship"
"""The documented command that rebuilds the default world from scratch and ships it (README)."""

Log = Callable[[str], None]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(folder: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """The shipped world's record (key, config, baseline, numerics, versions, file hashes) in `folder`
    (default: the package's), or None when nothing is shipped."""
    path = (folder or SHIPPED_DIR) / MANIFEST
    if not path.is_file():
        return None
    record = read_json(path, "shipped toy world record", "missing.", f"Regenerate it with `{REGENERATE}`.")
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("files"), dict)
        or not isinstance(record.get("baseline"), dict)
    ):
        raise UserError.one(str(path), f"not a shipped toy world record. Regenerate it with `{REGENERATE}`.")
    return record


def verified_files(
    key: str, log: Log, folder: Optional[Path] = None
) -> Optional[tuple[dict[str, Any], dict[str, bytes]]]:
    """The shipped record and model files when they are this world's (`key`) and intact; None (with the
    reason logged when something is shipped) otherwise, so the caller builds the world instead."""
    folder = folder or SHIPPED_DIR
    try:
        record = manifest(folder)
    except UserError as exc:
        log(f"the shipped toy world is unusable ({exc}); building it instead")
        return None
    if record is None:
        return None
    if record.get("key") != key:
        log(f"no shipped copy of this toy world (key {key}; shipped: {record.get('key')}): building it")
        return None
    files: dict[str, bytes] = {}
    for name in MODEL_FILES:
        path = folder / name
        expected = record["files"].get(name)
        size = path.stat().st_size if path.is_file() else None
        if size is None or size > MAX_FILE_BYTES:
            log(f"the shipped toy world lacks {name} (or it is too large); building the world instead")
            return None
        data = path.read_bytes()
        if sha256(data) != expected:
            log(
                f"the shipped toy world's {name} does not match its record (damaged install?); building the world instead"
            )
            return None
        files[name] = data
    return record, files


def model_files_equal(a: Path, b: Path) -> list[str]:
    """Names of the model files that differ between two model folders; the JSON configs are compared
    without `transformers_version` (the writer's version, not part of the model)."""
    differ = []
    for name in MODEL_FILES:
        x, y = (a / name), (b / name)
        if not (x.is_file() and y.is_file()):
            differ.append(name)
        elif name.endswith(".json") and name != "tokenizer.json":
            if _config(x) != _config(y):
                differ.append(name)
        elif x.read_bytes() != y.read_bytes():
            differ.append(name)
    return differ


def _config(path: Path) -> Any:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data.pop("transformers_version", None)
    return data


def versions() -> dict[str, str]:
    """Versions of the libraries that wrote the shipped files (named in a failing rebuild test)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "tokenizers", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def ship(world_root: Path, info: dict[str, Any], dest: Optional[Path] = None) -> Path:
    """Write a freshly built world's model files and record into `dest` (the package's shipped folder),
    replacing the previous shipped copy atomically. Refuses a folder holding files it did not write."""
    dest = dest or SHIPPED_DIR
    manifest_names = {MANIFEST, *MODEL_FILES}
    if dest.exists():
        foreign = sorted(p.name for p in dest.iterdir() if p.name not in manifest_names)
        if not dest.is_dir() or dest.is_symlink() or foreign:
            what = f"holds files the tool did not write ({', '.join(foreign)})" if foreign else "is not a plain folder"
            raise UserError.one(str(dest), f"{what}; move them away, then ship again.")
    model = world_root / "model"
    record = {
        k: info[k]
        for k in ("key", "generator_version", "config", "baseline", "numerics", "pretrain_seconds", "build_seconds")
    }
    record["versions"] = versions()
    record["regenerate"] = REGENERATE
    record["files"] = {name: sha256((model / name).read_bytes()) for name in MODEL_FILES}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.ship-", dir=dest.parent))
    try:
        for name in MODEL_FILES:
            shutil.copyfile(model / name, tmp / name)
        write_json(tmp / MANIFEST, record, root=tmp)
        follow_umask(tmp)
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest

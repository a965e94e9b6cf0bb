"""Run folders: atomic creation, resume bookkeeping, provenance and the baseline cache."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from unlearnspec.errors import UserError
from unlearnspec.run.results import write_json_atomic

POINT_FILE = "point.json"
TMP_PREFIX = ".tmp-"


def point_dir_name(point: str) -> str:
    """Filesystem-safe folder name of a sweep point id such as `lr=1e-05`."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", point.replace("=", "_"))


def spec_hash(resolved: dict[str, Any]) -> str:
    """sha256 of the resolved spec minus its sweep and output location (shared by all its points)."""
    payload = json.loads(json.dumps(resolved))
    payload.get("training", {}).pop("lr", None)
    payload.pop("output", None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def clean_stale_tmp(folder: Path) -> list[Path]:
    """Remove half-written point folders left by a killed run; returns what was removed."""
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir() and p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder next to `final`; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_point(folder: Path) -> Optional[dict[str, Any]]:
    path = folder / POINT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def check_same_spec(folder: Path, expected_hash: str) -> None:
    """Refuse to resume into a folder whose finished points came from a different spec."""
    if not folder.is_dir():
        return
    for child in sorted(folder.iterdir()):
        point = read_point(child) if child.is_dir() else None
        if point and point.get("spec_hash") not in (None, expected_hash):
            raise UserError.one(
                str(folder),
                f"this output folder holds runs of a different spec (point {child.name}); resuming would mix results. "
                "Pass another --out, or delete the folder to start over.",
            )


# --------------------------------------------------------------------------- provenance
def git_sha(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("unlearnspec", "torch", "transformers", "trl", "peft", "lm_eval", "datasets"):
        try:
            out[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} cores, {gpu}, torch threads {torch.get_num_threads()}"


def provenance(root: Path) -> dict[str, str]:
    info = {f"version.{k}": v for k, v in versions().items()}
    info["git_sha"] = git_sha(root)
    info["machine"] = machine()
    info["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return info


def write_json(path: Path, payload: Any) -> None:
    write_json_atomic(path, payload)

"""Run folders the tool owns: a marker in every folder it creates, atomic creation, provenance.

The tool replaces or removes only folders holding its own marker (`.unlearnspec.json`, with the job
and spec hash); anything else in the way is refused with a message naming it. A job's folder is built
as a `.tmp-*` sibling and renamed into place only when the job finished, so a kill leaves no
half-written folder under the final name.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from unlearnspec.errors import UserError
from unlearnspec.records import JsonDict
from unlearnspec.safeio import read_json_lenient, write_json_atomic
from unlearnspec.safewrite import WriteRefused, disk_error

MARKER = ".unlearnspec.json"
TMP_PREFIX = ".tmp-"


def marker(folder: Path) -> Optional[JsonDict]:
    """The folder's ownership marker, or None when the tool did not create it."""
    data: object = read_json_lenient(folder / MARKER, max_bytes=1 << 20)  # a FIFO or device named so is no marker
    return data if isinstance(data, dict) and data.get("by") == "unlearnspec" else None


def _mark(folder: Path, **info: Union[str, int]) -> None:
    write_json_atomic(folder / MARKER, {"by": "unlearnspec", **info})


def claim_root(folder: Path, spec_hash: str, what: str) -> bool:
    """Make `folder` an output folder of this spec: create it, or accept it when it is ours and of the
    same spec, or empty. A foreign or other-spec folder is refused before any work is done. True when
    this call created (or first marked) it, so a run that fails before writing anything can take it back
    (`release_root`)."""
    if folder.exists() and not folder.is_dir():
        raise UserError.one(str(folder), f"the output folder of {what} is a file; pass another --out or output.dir.")
    if folder.is_dir():
        owned = marker(folder)
        if owned is None:
            if any(folder.iterdir()):
                raise UserError.one(
                    str(folder),
                    f"this folder was not created by unlearnspec and is not empty; {what} will not write into it "
                    "(it could overwrite your files). Pass a new or empty folder with --out or output.dir.",
                )
        elif owned.get("spec_hash") not in (None, spec_hash):
            raise UserError.one(
                str(folder),
                f"this output folder holds runs of a different spec (marker spec hash {str(owned.get('spec_hash'))[:12]}); "
                "resuming would mix results. Pass another --out, or delete the folder to start over.",
            )
        else:
            return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError.one(str(folder), f"cannot create the output folder: {exc.strerror or exc}.") from None
    _mark(folder, kind="root", spec_hash=spec_hash)
    return True


def release_root(folder: Path) -> bool:
    """Remove an output folder this run claimed when it still holds nothing but the tool's marker (the run
    failed before writing anything): no empty marked folder is left behind. Anything else is left alone."""
    try:
        if folder.is_symlink() or not folder.is_dir() or marker(folder) is None:
            return False
        if {p.name for p in folder.iterdir()} != {MARKER}:
            return False
        (folder / MARKER).unlink()
        folder.rmdir()
    except OSError:
        return False
    return True


def _in_the_way(final: Path) -> bool:
    return final.is_symlink() or (final.exists() and (not final.is_dir() or marker(final) is None))


def check_replaceable(final: Path) -> None:
    """Refuse up front when a job's folder exists and is not the tool's own. A folder seen between another
    process's two renames (it replaces the same shared cache entry, e.g. a baseline) is looked at again: only a
    foreign folder that stays in the way is refused."""
    for wait in (0.0, 0.05, 0.2, 0.5):
        time.sleep(wait)
        if not _in_the_way(final):
            return
    raise UserError.one(
        str(final),
        "a file or folder not created by unlearnspec is in the way of this job's output; it is left untouched. "
        "Move it away, or pass another --out / output.dir.",
    )


def writer_alive(info: JsonDict) -> Optional[str]:
    """Why a temp folder's writer may still be running (None: it is not). Its marker names the host and
    process that made it: a live process on this host, or any process on another host (a shared cluster
    filesystem: its liveness cannot be checked from here), may still be writing it."""
    host, pid = info.get("host"), info.get("pid")
    if not isinstance(pid, int) or not isinstance(host, str):
        return None  # made before markers named their writer: no run of this version writes it
    if host != platform.node():
        return f"it was made on host {host} (pid {pid}); remove it yourself if no job runs there"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    return f"process {pid} on this host is still writing it"


def clean_stale_tmp(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Remove half-written job folders left by a killed run: (removed, left alone with the reason). Only
    folders carrying our marker, and never one whose writer may still run (another `run` on the same
    output, a SLURM job, another host)."""
    removed: list[Path] = []
    kept: list[tuple[Path, str]] = []
    if folder.is_dir():
        for p in folder.iterdir():
            info = marker(p) if p.is_dir() and not p.is_symlink() and p.name.startswith(TMP_PREFIX) else None
            if info is None:
                continue
            why = writer_alive(info)
            if why is not None:
                kept.append((p, why))
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed, kept


@contextmanager
def atomic_dir(final: Path, keep_existing: bool = False, **info: str) -> Iterator[Path]:
    """Yield a marked temp folder next to `final`; it replaces `final` only if the block succeeds and
    `final` is absent or ours. On failure the temp folder is removed and `final` is untouched. With
    `keep_existing` (a shared cache entry whose content depends only on its key), a `final` another process
    finished meanwhile is kept and this one's copy dropped."""
    check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        if marker(tmp) is None:
            raise UserError.one(
                str(tmp), "a folder not created by unlearnspec has the name of this job's temp folder; move it away."
            )
        shutil.rmtree(tmp)
    tmp.mkdir()
    _mark(tmp, host=platform.node(), pid=os.getpid(), **info)
    try:
        try:
            yield tmp
        except Exception as exc:  # a full disk while the job wrote (a model save, a library's file): name the job
            why = disk_error(exc)
            if why is None:
                raise
            raise WriteRefused.one(
                str(final),
                f"could not be written: {why}. Its previous folder, if any, is unchanged "
                "(the job wrote into a temporary folder, now removed); rerun to resume.",
            ) from None
        check_replaceable(final)
        if keep_existing and final.is_dir() and marker(final) is not None:
            return  # another process finished the same shared entry first: keep it (a reader may be in it)
        if final.exists():
            old = final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- provenance
def git_sha(root: Path) -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    from unlearnspec.spec.assets import package_version

    out = {"python": platform.python_version()}
    for pkg in ("unlearnspec", "torch", "transformers", "trl", "peft", "lm_eval", "datasets"):
        out[pkg] = package_version(pkg.replace("_", "-"))
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


def write_json(path: Path, payload: object) -> None:
    """A value `json.dumps` encodes, written atomically."""
    write_json_atomic(path, payload)

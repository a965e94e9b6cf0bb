"""Files the tool reads from users and writes for them: JSON read with every failure as a UserError,
JSON written atomically, and output modes that follow the umask. Standard library only."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from unlearnspec.errors import UserError

MAX_JSON_BYTES = 512 * 1024 * 1024
"""Largest JSON file read (results.json is KBs, samples.json MBs)."""


def read_json(path: Path, what: str, missing: str, fix: str) -> Any:
    """Parse a JSON file; every failure (missing, a folder, unreadable, not UTF-8, not JSON, nested
    too deep for the parser, too large) is a UserError naming the file and the fix."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise UserError.one(str(path), f"the {what} is larger than {MAX_JSON_BYTES // 2**20} MiB; is this the right file? {fix}")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError.one(str(path), missing) from None
    except IsADirectoryError:
        raise UserError.one(str(path), f"is a folder, not a {what}. {fix}") from None
    except OSError as exc:
        raise UserError.one(str(path), f"cannot read the {what}: {exc.strerror or exc}. {fix}") from None
    except UnicodeDecodeError as exc:
        raise UserError.one(str(path), f"the {what} is not UTF-8 text (byte {exc.start}). {fix}") from None
    except json.JSONDecodeError as exc:
        raise UserError.one(str(path), f"the {what} is not valid JSON ({exc.msg} at line {exc.lineno}). {fix}") from None
    except RecursionError:
        raise UserError.one(str(path), f"the {what} is nested too deeply to be one. {fix}") from None


def current_umask() -> int:
    """The process umask (os.umask can only be read by setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything below it) the mode a plain `open`/`mkdir` would:
    0666/0777 minus the umask. mkstemp/mkdtemp and safetensors create 0600/0700, which hides
    results on a shared cluster filesystem from the group even when the umask allows it."""
    mask = current_umask()
    paths = [path] + (sorted(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON via a temp file in the same folder and os.replace: never half-written. The file
    gets the mode a plain `open(path, "w")` would (0666 minus the umask), not mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

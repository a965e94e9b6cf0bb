"""Files the tool reads from users: regular files only, size-bounded before a byte is read, JSON and
tensors parsed with every failure as a UserError, and names read back from files checked before they
become file names. Writes go through unlearnspec.safewrite (re-exported here). Standard library only."""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

from unlearnspec.errors import UserError
from unlearnspec.safewrite import (  # noqa: F401 - the one write path, re-exported for callers
    current_umask,
    follow_umask,
    write_bytes,
    write_json,
    write_json_atomic,
    write_text,
    write_with,
)

MAX_JSON_BYTES = 512 * 1024 * 1024
"""Largest JSON file read (results.json is KBs, samples.json MBs)."""
MAX_TENSOR_BYTES = 64 * 1024**3
"""Largest tensor file read (a per-question score file of 1,000 questions x 1,000 rows x 4,096 columns is
16 GB); what a file may hold is checked against its real size before anything is materialised."""
SPEC_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
"""A spec name (the pattern of Spec.name): it names report files, so names read back from results.json
and report JSON are held to it before they become file names."""


def _problem(path: Path, message: str) -> UserError:
    return UserError.one(str(path), message)


@contextmanager
def open_regular(path: Path, what: str, fix: str, max_bytes: int, missing: str = "") -> Iterator[tuple[BinaryIO, int]]:
    """Open a regular file for reading and yield (file, size). A FIFO, device or socket is refused without
    being opened (stat first: opening some devices acts) or blocked on (opened non-blocking, then fstat, in
    case it was swapped meanwhile), and a file larger than `max_bytes` before it is read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not stat.S_ISDIR(os.stat(path).st_mode):
            raise _problem(
                path,
                f"is not a regular file (a device, FIFO or socket), so it is not a {what}; it was not "
                f"read. {fix}".strip(),
            )
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _problem(path, missing or f"no such file. {fix}".strip()) from None
    except IsADirectoryError:
        raise _problem(path, f"is a folder, not a {what}. {fix}".strip()) from None
    except OSError as exc:
        raise _problem(path, f"cannot read the {what}: {exc.strerror or exc}. {fix}".strip()) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _problem(path, f"is a folder, not a {what}. {fix}".strip())
        if not stat.S_ISREG(info.st_mode):
            raise _problem(
                path,
                f"is not a regular file (a device, FIFO or socket), so it is not a {what}; it was not "
                f"read. {fix}".strip(),
            )
        if info.st_size > max_bytes:
            raise _problem(
                path,
                f"the {what} is {info.st_size:,} bytes, larger than the {max_bytes:,} a {what} may have; "
                f"is this the right file? {fix}".strip(),
            )
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh, info.st_size


def read_bytes(path: Path, what: str, fix: str, max_bytes: int, missing: str = "") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; reads exactly its size at open (a file that grows
    meanwhile is not followed)."""
    with open_regular(path, what, fix, max_bytes, missing) as (fh, size):
        try:
            data = fh.read(size)
        except OSError as exc:
            raise _problem(path, f"cannot read the {what}: {exc.strerror or exc}. {fix}".strip()) from None
    return data


def read_text(path: Path, what: str, fix: str, max_bytes: int, missing: str = "") -> str:
    """A UTF-8 text file read with `read_bytes`; not UTF-8 is a UserError naming the byte."""
    raw = read_bytes(path, what, fix, max_bytes, missing)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _problem(path, f"the {what} is not UTF-8 text (byte {exc.start}). {fix}".strip()) from None


def read_json(path: Path, what: str, missing: str, fix: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file; every failure (missing, a folder, a device or FIFO, unreadable, not UTF-8, not
    JSON, an integer of thousands of digits, nested too deep for the parser, too large) is a UserError naming
    the file and the fix. NaN/Infinity literals parse (files of earlier versions hold them); the typed
    readers refuse them where a number must be finite."""
    text = read_text(path, what, fix, max_bytes, missing)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _problem(path, f"the {what} is not valid JSON ({exc.msg} at line {exc.lineno}). {fix}".strip()) from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise _problem(
            path, f"the {what} holds a value JSON parsing refuses ({str(exc)[:100]}). {fix}".strip()
        ) from None
    except RecursionError:
        raise _problem(path, f"the {what} is nested too deeply to be one. {fix}".strip()) from None


def read_json_lenient(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file the tool wrote itself (state, markers), or None when it is missing, not a regular file, too
    large or unreadable: callers treat None as 'no record'."""
    try:
        return read_json(path, "JSON file", "", "", max_bytes)
    except UserError:
        return None


# --------------------------------------------------------------------------- tensors
def check_tensor_storage(tensor: Any, path: Path) -> None:
    """Refuse a loaded tensor whose elements are not each backed by their own bytes of its storage: an
    expanded (stride-0) or overlapping view, which a file of a few KB can use to ask for GBs once it is made
    contiguous, converted or compared. Then every later copy is at most the storage the file itself held.
    Called before anything is derived from the tensor."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        return
    stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
    dims = sorted((st, n) for n, st in zip(tensor.shape, tensor.stride()) if n > 1)
    reach, overlapping = 1, False
    for st, n in dims:
        overlapping |= st < reach  # a stride below the span of the faster dimensions: elements share bytes
        reach = st * n
    last = tensor.storage_offset() + sum((n - 1) * st for st, n in dims)
    if tensor.numel() and (overlapping or last >= stored):
        claimed = tensor.numel() * tensor.element_size()
        raise _problem(
            path,
            f"the tensor {list(tensor.shape)} is an expanded or overlapping view (strides "
            f"{list(tensor.stride())}) of {stored * tensor.element_size():,} stored bytes that claims "
            f"{claimed:,}; it was not used. Save plain data: `torch.save(t.contiguous().clone(), path)`.",
        )


# --------------------------------------------------------------------------- text read back
def terminal_control(value: Any, loc: str = "") -> Optional[tuple[str, str]]:
    """(key path, character) of the first control character other than a line break or tab in any key or
    string of a JSON value: read back and printed, an escape sequence (ESC, CSI, CR, backspace) would rewrite
    what the terminal shows. None when there is none."""
    if isinstance(value, str):
        bad = next((c for c in value if unicodedata.category(c) == "Cc" and c not in "\n\t"), None)
        return (loc or "(top level)", bad) if bad is not None else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        where = f"{loc}.{k}" if loc else str(k)
        found = (terminal_control(k, where) if isinstance(k, str) else None) or terminal_control(v, where)
        if found:
            return found
    return None


# --------------------------------------------------------------------------- names read back
def check_name(name: Any, what: str, where: str) -> str:
    """A name read back from a file (a spec name in results.json or a report) that becomes part of a file name:
    held to the spec-name pattern (letters, digits, `_`, `.`, `-`; no `/`), so it cannot leave its folder."""
    if not isinstance(name, str) or not re.fullmatch(SPEC_NAME_PATTERN, name) or name in (".", "..") or len(name) > 200:
        shown = repr(name)[:80]
        raise UserError.one(
            where,
            f"the {what} {shown} is not a spec name (letters, digits, `_`, `.` or `-`, at most 200); "
            "it would name a file, so it is refused. Was the file edited? Rerun the spec to rewrite it.",
        )
    return name

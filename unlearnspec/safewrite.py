"""The one path every file the tool writes goes through: atomic (a temp file in the same folder, fsync,
rename), inside the folder the tool owns, never through a symbolic link, strict JSON, and every OSError
(a full disk above all) a UserError naming the file and the fix with the previous file left intact."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Callable, Optional

from unlearnspec.errors import UserError

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class WriteRefused(UserError):
    """A write the tool will not do (a link or a non-file in the way, a name leaving its folder) or could
    not do (a full disk, no permission); nothing was changed under the final name."""


def current_umask() -> int:
    """The process umask (os.umask can only be read by setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything below it) the mode a plain `open`/`mkdir` would:
    0666/0777 minus the umask. mkdtemp and safetensors create 0600/0700, which hides results on a
    shared cluster filesystem from the group even when the umask allows it. Links are not followed."""
    mask = current_umask()
    paths = [path] + (sorted(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def advice(exc: OSError) -> str:
    """What an OSError on a write means for the user, and the fix."""
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "no space left on the device (or the disk quota is used up). Free space, or write to another folder"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{exc.strerror or 'not writable'}: the folder is read-only or not yours. Choose a writable folder"
    if code == errno.ENAMETOOLONG:
        return "the name is too long for this filesystem. Use a shorter spec name or folder"
    if code == errno.EFBIG:
        return "the file is larger than this filesystem or the process's file-size limit (`ulimit -f`) allows"
    if code == errno.ELOOP:
        return "a symbolic link is in the way; unlearnspec does not write through links. Remove it or choose another folder"
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return "a file stands where a folder is needed (or the reverse). Move it, or choose another folder"
    return f"{exc.strerror or type(exc).__name__}"


DISK_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EROFS, errno.EFBIG, errno.EIO}
"""errnos that are about the disk, not about a path: reported even when the error names no file."""
DISK_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull", "Read-only file system", "File too large")
"""How libraries that wrap an OSError in their own exception (safetensors, torch's zip writer) still say it."""


def disk_error(exc: BaseException) -> Optional[str]:
    """The advice for an exception that is a disk error (full, quota, read-only, I/O) or wraps one (through
    __cause__/__context__, or in its message, as safetensors does); None for anything else."""
    seen: set[int] = set()
    cause: Optional[BaseException] = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
            return advice(cause)
        cause = cause.__cause__ or cause.__context__
    said = next((t for t in DISK_TEXT if t in str(exc)), None)
    return None if said is None else f"{said} ({type(exc).__name__}). Free space, or write to another folder"


def _refuse(path: Path, message: str) -> WriteRefused:
    return WriteRefused.one(str(path), message)


def _inside(path: Path, root: Path) -> list[str]:
    """The folders between `root` and `path`'s file, refusing a path that leaves `root` (`..`, absolute names)."""
    rel = os.path.relpath(os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root)))
    parts = Path(rel).parts
    if not parts or parts[0] == ".." or os.path.isabs(rel) or path.name in ("", ".", ".."):
        raise _refuse(
            path,
            f"would be written outside the folder {root} the tool writes into; refused. A name read "
            "from a file (a spec name?) leads out of it: fix or regenerate that file.",
        )
    return list(parts[:-1])


def _open_folder(root: Path, parts: list[str], path: Path) -> int:
    """A descriptor of root/parts..., creating the folders below root; none of them may be a link."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise _refuse(root, f"cannot create or open the output folder: {advice(exc)}.") from None
    for part in parts:
        try:
            try:
                os.mkdir(part, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            sub = os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            where = root.joinpath(*parts[: parts.index(part) + 1])
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refuse(
                    where,
                    f"is a symbolic link or not a folder; unlearnspec writes nothing through it "
                    f"(writing {path.name}). Remove it, or choose another folder.",
                ) from None
            raise _refuse(where, f"cannot create the folder for {path.name}: {advice(exc)}.") from None
        os.close(fd)
        fd = sub
    return fd


class _Sink(io.RawIOBase):
    """A write-only file over a descriptor that remembers the first OSError: libraries (torch.save) turn
    it into their own RuntimeError, and the write path still reports the disk's own reason."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.error: Optional[OSError] = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as exc:
            self.error = self.error or exc
            raise
        return done


def write_with(
    path: Path, writer: Callable[[Any], None], root: Optional[Path] = None, by_path: bool = False, durable: bool = True
) -> Path:
    """Write `path` by calling `writer(file)` on a binary file, atomically: the bytes go to a temp file in
    the same folder, are fsynced and renamed over `path` only when complete. `root` is the folder the tool
    owns (default: path's folder): folders below it are created and may not be links, and `path` may not
    leave it. An existing link or non-file at `path` is refused (a rename would replace the link itself, but
    the user's link is not the tool's to replace). On any failure the temp file is removed, `path` is as
    before, and an OSError becomes a WriteRefused naming the file and the fix. `by_path`: `writer` gets the
    temp file's path instead (for libraries that only write to a path, e.g. safetensors' save_file); the
    path reaches the file through the folder already opened, so a link swapped in meanwhile is not followed.
    `durable=False` skips the fsyncs (scratch files a crash makes worthless anyway, e.g. MAGIC's kept states:
    on a cluster filesystem an fsync per step costs more than the step's write)."""
    root = path.parent if root is None else root
    fd = _open_folder(root, _inside(path, root), path)
    name = path.name
    tmp = f".{name[:180]}.{secrets.token_hex(4)}.tmp"
    created = False
    try:
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise _refuse(
                path,
                "is a symbolic link; unlearnspec writes no file through a link (it could point outside "
                "the output folder). Remove the link, or choose another folder.",
            )
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise _refuse(
                path,
                "is in the way and is not a regular file (a folder, FIFO or device); it was left "
                "untouched. Move it, or choose another folder.",
            )
        out = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666, dir_fd=fd
        )  # 0666 minus the umask: the mode a plain open() gives
        created = True
        sink = _Sink(out)
        try:
            try:
                if by_path:
                    proc = f"/proc/self/fd/{fd}"
                    writer(os.path.join(proc if os.path.isdir(proc) else str(path.parent), tmp))
                else:
                    writer(sink)
                if durable:
                    os.fsync(out)
            except OSError as exc:
                raise _refuse(
                    path, f"could not be written: {advice(exc)}. The previous file, if any, is unchanged."
                ) from None
            except Exception:
                if sink.error is not None:
                    raise _refuse(
                        path, f"could not be written: {advice(sink.error)}. The previous file, if any, is unchanged."
                    ) from None
                raise
        finally:
            os.close(out)
        try:
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            created = False
            if durable:
                os.fsync(fd)
        except OSError as exc:
            raise _refuse(
                path, f"could not be written: {advice(exc)}. The previous file, if any, is unchanged."
            ) from None
    finally:
        if created:
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
        os.close(fd)
    return path


def write_bytes(path: Path, data: bytes, root: Optional[Path] = None) -> Path:
    return write_with(path, lambda fh: fh.write(data), root)


def write_text(path: Path, text: str, root: Optional[Path] = None) -> Path:
    """UTF-8 text with `\\n` line ends, written atomically (see write_with)."""
    return write_bytes(path, text.encode("utf-8"), root)


def _non_finite(value: Any, where: str = "") -> Optional[str]:
    """The key path of the first NaN/inf in a JSON payload, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(top level)"
    if isinstance(value, dict):
        for k, v in value.items():
            found = _non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _non_finite(v, f"{where}.{i}" if where else str(i))
            if found:
                return found
    return None


def write_json(path: Path, payload: object, root: Optional[Path] = None, ensure_ascii: bool = True) -> Path:
    """Strict JSON (no NaN or Infinity, which JSON does not have and other tools reject), atomically. A
    payload holding one is refused, naming the key: the producer must say `null` and why."""
    bad = _non_finite(payload)
    if bad is not None:
        raise _refuse(
            path,
            f"not written: `{bad}` is not a finite number (NaN or infinity), which JSON cannot hold. "
            "This is a bug in unlearnspec; please report it with the command you ran.",
        )
    text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=False, ensure_ascii=ensure_ascii) + "\n"
    return write_text(path, text, root)


write_json_atomic = write_json
"""The name earlier callers use."""

#!/usr/bin/env python3
"""Check a pull request's unlearnspec changes against BASE (a git ref): validate and doctor the changed specs,
and diff every changed report JSON against its BASE version. Writes a Markdown summary to OUT (default
pr-comment.md) for a PR comment and prints it. Exit 1 if validation/doctor failed, a changed file could not be
checked, or a report cell changed beyond noise; 2 if BASE is not a commit or git/unlearnspec are missing; else 0.

File names are data: they come NUL-separated from `git diff -z`, go to git and unlearnspec as separate
arguments after `--`, never through a shell, sed or eval, and are escaped when shown in the comment. Names git
would quote (non-ASCII, a tab, a newline) are checked like any other. Standard library only (run by
.ci/pr-check.sh with any python3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from typing import Optional


def shown(text: str) -> str:
    """`text` safe inside a Markdown code span of the comment: control and format characters (and bytes that
    are not UTF-8) as escapes, backticks as quotes."""
    out = []
    for c in text:
        if 0xDC80 <= ord(c) <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        else:
            out.append("'" if c == "`" else c)
    return "".join(out)


def fenced(text: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside, so output cannot close it."""
    longest, run = 0, 0
    for c in text:
        run = run + 1 if c == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def git(*args: str, binary: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=not binary)


def resolve_base(base: str) -> Optional[str]:
    """BASE as a commit id; None when it names no commit (an option-like BASE is never read as an option)."""
    proc = git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{base}^{{commit}}")
    sha = proc.stdout.strip() if proc.returncode == 0 else ""
    return sha if len(sha) in (40, 64) and all(c in "0123456789abcdef" for c in sha) else None


def changed_files(sha: str) -> list[str]:
    """Added, modified or renamed files between the merge base with BASE and HEAD, NUL-separated, unquoted."""
    proc = git("diff", "-z", "--name-only", "--diff-filter=AMR", f"{sha}...HEAD", "--", binary=True)
    if proc.returncode != 0:
        raise SystemExit(f"pr-check: git diff failed: {proc.stderr.decode(errors='replace').strip()}")
    return [os.fsdecode(name) for name in proc.stdout.split(b"\0") if name]


def classify(names: list[str]) -> tuple[list[str], list[str]]:
    """(spec and profile files, report JSON files), as the check reads them."""
    specs, reports = [], []
    for f in names:
        if f.startswith("specs/profiles/") or (f.startswith("specs/") and f.endswith((".yaml", ".yml"))):
            specs.append(f)
        elif f.startswith("reports/") and not f.startswith("reports/reference/") and f.endswith(".json"):
            reports.append(f)
    return specs, reports


def unlearnspec(exe: str, *args: str) -> tuple[int, str]:
    """Run the CLI with its output (stdout and stderr, in order) captured."""
    proc = subprocess.run([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    return proc.returncode, proc.stdout


def old_version(sha: str, path: str) -> Optional[bytes]:
    """The file's content at BASE, or None when it did not exist there (looked up by tree entry, not `rev:path`)."""
    proc = git("ls-tree", "-z", sha, "--", path, binary=True)
    entry = proc.stdout.split(b"\0")[0] if proc.returncode == 0 else b""
    meta = entry.split(b"\t", 1)[0].split()
    if len(meta) != 3 or meta[1] != b"blob":
        return None
    blob = git("cat-file", "blob", meta[2].decode("ascii"), binary=True)
    return blob.stdout if blob.returncode == 0 else None


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print("usage: pr-check.sh BASE_REF [OUT]", file=sys.stderr)
        return 2
    base, out = argv[0], argv[1] if len(argv) > 1 else "pr-comment.md"
    exe = shutil.which("unlearnspec")
    if shutil.which("git") is None or exe is None:
        print("pr-check: git and unlearnspec must be on PATH", file=sys.stderr)
        return 2
    sha = resolve_base(base)
    if sha is None:
        print(f"pr-check: BASE {shown(base)!r} is not a commit (fetch it, e.g. `git fetch origin main`)", file=sys.stderr)
        return 2
    specs, reports = classify(changed_files(sha))
    status = 0
    lines = ["## unlearnspec", ""]
    links = [f for f in specs + reports if os.path.islink(f)]
    for f in links:  # a link could make the check read (and quote) a file outside the repository
        lines += [f"### `{shown(f)}`: a symbolic link; not checked (replace it with the file itself)", ""]
        status = 1
    specs = [f for f in specs if f not in links]
    reports = [f for f in reports if f not in links]
    if specs:
        lines += [f"### validate + doctor ({len(specs)} changed spec file(s))", ""]
        rc, text = unlearnspec(exe, "validate", "--", *specs)
        status |= rc != 0
        doctor_specs = [f for f in specs if not f.startswith("specs/profiles/")]
        if doctor_specs:
            rc, more = unlearnspec(exe, "doctor", "--strict", "--", *doctor_specs)
            status |= rc != 0
            text += more
        lines += [fenced(text), ""]
    for f in reports:
        old = old_version(sha, f)
        if old is None:
            lines += [f"### `{shown(f)}`: new report", ""]
            continue
        fd, tmp = tempfile.mkstemp(suffix=".json")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(old)
            rc, text = unlearnspec(exe, "diff", "--format", "markdown", "--", tmp, f)
        finally:
            os.unlink(tmp)
        status |= rc != 0
        lines += [text.replace(f"`{tmp}`", f"`{shown(base)}:{shown(f)}`").rstrip(), ""]
    if not specs and not reports and not links:
        lines.append("No spec or report changed.")
    comment = "\n".join(lines).rstrip() + "\n"
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(comment)
    sys.stdout.write(comment)
    return 1 if status else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Issue 22, class 1: the pull-request check treats file names and BASE as data. A report or spec name that
would run code (`;touch PWNED;#e` through the old sed), names git quotes (non-ASCII, a tab, a newline), a
BASE holding `#` or looking like an option, and links are all checked or refused, never executed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

BIN = str(Path(sys.executable).parent)
SCRIPT = REPO / ".ci" / "pr-check.sh"
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}


def _project(tmp_path: Path, extra: dict[str, str], base: str = "main") -> Path:
    """A small study repo: one spec, one report, plus `extra` files (name -> text) committed on `base`."""
    proj = tmp_path / "study"
    (proj / "specs").mkdir(parents=True)
    (proj / "reports").mkdir()
    shutil.copy(REPO / "specs" / "exp7_all_tokens.yaml", proj / "specs" / "exp7_all_tokens.yaml")
    shutil.copy(REPO / "reports" / "exp7_all_tokens.json", proj / "reports" / "exp7_all_tokens.json")
    (proj / "pyproject.toml").write_text("")
    for name, text in extra.items():
        (proj / name).write_text(text)
    _git(proj, "init", "-q", "-b", base)
    _git(proj, "add", "-A")
    _git(proj, "commit", "-qm", "base")
    _git(proj, "checkout", "-qb", "pr")
    return proj


def _moved_report() -> str:
    data = json.loads((REPO / "reports" / "exp7_all_tokens.json").read_text())
    row = next(r for r in data["rows"] if r.get("kind") != "baseline")
    task = next(iter(row["cells"]))
    row["cells"][task]["acc"] = round(row["cells"][task]["acc"] - 0.3, 4)
    return json.dumps(data, indent=2) + "\n"


def _check(proj: Path, base: str = "main") -> tuple[subprocess.CompletedProcess, str]:
    proc = subprocess.run(
        ["bash", str(SCRIPT), base, "c.md"], cwd=proj, env=_env(), capture_output=True, text=True, timeout=300
    )
    comment = (proj / "c.md").read_text() if (proj / "c.md").is_file() else ""
    return proc, comment


def test_a_report_name_cannot_run_code(tmp_path):
    """The issue's exploit: with the old sed, `#` ended the replacement and `e` ran the name as a command."""
    evil = "reports/;touch PWNED;#ew y.json"
    proj = _project(tmp_path, {evil: (REPO / "reports" / "exp7_all_tokens.json").read_text()})
    (proj / evil).write_text(_moved_report())
    _git(proj, "commit", "-qam", "a result moved")
    proc, comment = _check(proj)
    assert not (proj / "PWNED").exists() and not list(proj.rglob("PWNED")), "a file name ran code"
    assert not (proj / "y.json`#").exists()
    assert proc.returncode == 1 and "beyond noise" in comment, proc.stdout + proc.stderr
    assert "main:reports/;touch PWNED;#ew y.json" in comment  # shown, as text


def test_names_git_would_quote_are_checked_not_skipped(tmp_path):
    names = ["specs/exp_ü.yaml", "specs/tab\there.yaml", "specs/new\nline.yaml"]
    proj = _project(tmp_path, {})
    for name in names:
        (proj / name).write_text((REPO / "specs" / "exp7_all_tokens.yaml").read_text() + "\nbogus: 1\n")
    _git(proj, "add", "-A")
    _git(proj, "commit", "-qm", "broken specs")
    proc, comment = _check(proj)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "3 changed spec file" in comment and comment.count("bogus") >= 3, comment


def test_a_changed_report_with_a_non_ascii_name_is_diffed(tmp_path):
    proj = _project(tmp_path, {"reports/rép.json": (REPO / "reports" / "exp7_all_tokens.json").read_text()})
    (proj / "reports" / "rép.json").write_text(_moved_report())
    _git(proj, "commit", "-qam", "moved")
    proc, comment = _check(proj)
    assert proc.returncode == 1 and "beyond noise" in comment and "main:reports/rép.json" in comment


def test_a_base_ref_with_a_hash_keeps_the_diff(tmp_path):
    proj = _project(tmp_path, {}, base="release#1")
    (proj / "reports" / "exp7_all_tokens.json").write_text(_moved_report())
    _git(proj, "commit", "-qam", "moved")
    proc, comment = _check(proj, base="release#1")
    assert proc.returncode == 1 and "release#1:reports/exp7_all_tokens.json" in comment
    assert "| row | column | old | new | verdict | detail |" in comment


def test_an_option_like_base_is_not_an_option(tmp_path):
    proj = _project(tmp_path, {})
    target = tmp_path / "written_by_git_option"
    proc, _ = _check(proj, base=f"--output={target}")
    assert proc.returncode == 2 and "is not a commit" in proc.stderr
    assert not target.exists()


def test_a_linked_spec_is_refused_not_read(tmp_path):
    """A link could make validate quote lines of a file outside the repository into a public comment."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN: hunter2-do-not-post\n")
    proj = _project(tmp_path, {})
    os.symlink(secret, proj / "specs" / "leak.yaml")
    _git(proj, "add", "-A")
    _git(proj, "commit", "-qm", "a link")
    proc, comment = _check(proj)
    assert proc.returncode == 1 and "symbolic link; not checked" in comment
    assert "hunter2" not in comment and "hunter2" not in proc.stdout


def test_output_cannot_close_the_code_fence():
    sys.path.insert(0, str(REPO / ".ci"))
    try:
        import pr_check
    finally:
        sys.path.pop(0)
    block = pr_check.fenced("error x.yaml\n```\n## all checks passed\n````")
    fence = block.splitlines()[0]
    assert set(fence) == {"`"} and len(fence) == 5 and block.endswith(fence)
    assert pr_check.shown("a\nb`c\x1b") == "a\\x0ab'c\\x1b"

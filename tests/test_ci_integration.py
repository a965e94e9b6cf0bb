"""One-line CI adoption: the pre-commit hooks and the pull-request check script, run for real."""

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


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _project(tmp_path: Path) -> Path:
    proj = tmp_path / "study"
    shutil.copytree(REPO / "specs", proj / "specs")
    shutil.copytree(REPO / "reports", proj / "reports", symlinks=False, ignore=shutil.ignore_patterns("*.png"))
    (proj / "pyproject.toml").write_text("")
    _git(proj, "init", "-q", "-b", "main")
    _git(proj, "add", "-A")
    _git(proj, "commit", "-qm", "base")
    return proj


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": BIN + os.pathsep + os.environ["PATH"],
        "PRE_COMMIT_HOME": os.environ.get("PRE_COMMIT_HOME", "/tmp/pre-commit-home"),
    }


@pytest.mark.slow
def test_pre_commit_hooks_run_validate_and_doctor(tmp_path):
    if shutil.which("pre-commit", path=BIN + os.pathsep + os.environ["PATH"]) is None:
        pytest.skip("pre-commit is not installed (it is in the test extra)")
    proj = _project(tmp_path)
    bad = proj / "specs" / "exp7_broken.yaml"
    bad.write_text((proj / "specs" / "exp7_all_tokens.yaml").read_text().replace("batch_size: 8", "batch_sise: 8"))
    good = ["specs/exp7_all_tokens.yaml", "specs/fixed/all_tokens.yaml"]
    run = lambda hook, *files: subprocess.run(  # noqa: E731
        ["pre-commit", "try-repo", str(REPO), hook, "--files", *files],
        cwd=proj,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    ok = run("unlearnspec-validate", *good)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    broken = run("unlearnspec-validate", "specs/exp7_broken.yaml")
    assert broken.returncode != 0 and "batch_sise" in broken.stdout and "Did you mean `batch_size`" in broken.stdout
    clean = run("unlearnspec-doctor", "specs/fixed/all_tokens.yaml", "specs/fixed/selective.yaml")
    assert clean.returncode == 0, clean.stdout[-2000:]
    flawed = run("unlearnspec-doctor", "specs/exp3_positive_only.yaml", "specs/exp7_all_tokens.yaml")
    assert flawed.returncode != 0 and "D1" in flawed.stdout


@pytest.mark.slow
def test_pr_check_reports_spec_errors_and_report_changes_beyond_noise(tmp_path):
    proj = _project(tmp_path)
    report = proj / "reports" / "exp7_all_tokens.json"
    data = json.loads(report.read_text())
    row = next(r for r in data["rows"] if r.get("kind") != "baseline")
    task = next(iter(row["cells"]))
    row["cells"][task]["acc"] = round(row["cells"][task]["acc"] - 0.3, 4)
    report.write_text(json.dumps(data, indent=2) + "\n")
    _git(proj, "checkout", "-qb", "pr")
    _git(proj, "commit", "-qam", "a result moved")
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "pr-check.sh"), "main", "c.md"],
        cwd=proj,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    comment = (proj / "c.md").read_text()
    assert proc.returncode == 1 and "beyond noise" in comment and "main:reports/exp7_all_tokens.json" in comment
    assert "| row | column | old | new | verdict | detail |" in comment
    _git(proj, "checkout", "-q", "main")
    _git(proj, "checkout", "-qb", "pr2")
    (proj / "specs" / "exp7_all_tokens.yaml").write_text(
        (proj / "specs" / "exp7_all_tokens.yaml").read_text() + "\nbogus: 1\n"
    )
    _git(proj, "commit", "-qam", "a broken spec")
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "pr-check.sh"), "main", "c.md"],
        cwd=proj,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "bogus" in (proj / "c.md").read_text()

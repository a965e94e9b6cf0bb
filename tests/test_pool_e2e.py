"""`run --jobs 2` end to end on a tiny toy study (a score run with its LDS feeding a two-point sweep):
the same numbers and report as the serial run, plain progress lines in logs, and an interrupted pool
run that leaves nothing half-written and resumes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO
from .fixtures.tiny_study import tiny_project

pytestmark = pytest.mark.slow
RUN = ["run", "specs/tiny_point.yaml", "--toy"]
LINE = re.compile(r"^\[(\d+)/10\] (score|lds|baseline|point) (\S+) (ok|failed) \d+\.\d s")


def _env(toy_world) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        UNLEARNSPEC_CACHE=str(toy_world.root.parents[1]),
        PYTHONPATH=str(REPO),
    )
    return env


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unlearnspec", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def serial(toy_world, tmp_path_factory) -> Path:
    """The tiny study run by the serial executor: the reference."""
    root = tmp_path_factory.mktemp("serial")
    tiny_project(root)
    done = _cli([*RUN, "--reports-dir", "rep"], root, _env(toy_world))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def _same_results(a: Path, b: Path) -> None:
    import torch

    def runs(root: Path) -> list[dict]:
        data = json.loads((root / "runs/toy/tiny_point/results.json").read_text())
        return [{k: r[k] for k in ("point", "status", "metrics", "token_stats")} for r in data["runs"]]

    assert runs(a) == runs(b) and len(runs(a)) == 2 and {r["status"] for r in runs(a)} == {"ok"}
    scores = "runs/toy/tiny_magic/per_token_scores.pt"
    assert torch.equal(torch.load(a / scores, weights_only=True), torch.load(b / scores, weights_only=True))
    lds = [json.loads((r / "runs/toy/tiny_magic/scores.json").read_text())["lds"] for r in (a, b)]
    assert [{k: v for k, v in x.items() if k != "retrain_seconds"} for x in lds][0] == [
        {k: v for k, v in x.items() if k != "retrain_seconds"} for x in lds
    ][1]


def test_two_jobs_at_once_give_the_serial_numbers_and_report(serial, toy_world, tmp_path):
    tiny_project(tmp_path)
    done = _cli([*RUN, "--jobs", "2", "--reports-dir", "rep"], tmp_path, _env(toy_world))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _same_results(serial, tmp_path)
    diff = _cli(
        ["diff", str(serial / "rep/tiny_point.json"), str(tmp_path / "rep/tiny_point.json")], tmp_path, _env(toy_world)
    )
    assert diff.returncode == 0 and "no changes" in diff.stdout, diff.stdout + diff.stderr

    out = done.stdout.splitlines()  # not a terminal: one counted line per finished job, then the summary
    assert any(line.startswith("[plan]") and "up to 2 at once (pool)" in line for line in out)
    counted = [(int(m[1]), m[2], m[3]) for m in map(LINE.match, out) if m]
    skipped = sum("already done; skipped" in line for line in out)  # the shared baseline may be cached
    assert len(counted) + skipped == 10 and [c[0] for c in counted] == list(range(skipped + 1, 11))
    kinds = [c[1] for c in counted]
    assert kinds.index("score") < min(i for i, k in enumerate(kinds) if k in ("point", "lds"))
    summary = next(line for line in out if line.startswith("[summary]"))
    assert re.match(
        rf"\[summary\] 10 job\(s\) in \d+:\d\d wall \(jobs' own time \d+:\d\d\): {10 - skipped} done, "
        rf"0 failed, 0 not run, "
        rf"{skipped} skipped",
        summary,
    ), summary


def _group_gone(pgid: int, within: float) -> bool:
    """Every process of the run's group has ended (multiprocessing's resource tracker exits just after)."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_an_interrupted_pool_run_leaves_nothing_half_written_and_resumes(serial, toy_world, tmp_path):
    from unlearnspec.run.rundirs import marker, writer_alive

    tiny_project(tmp_path)
    lds = tmp_path / "runs/toy/tiny_magic.lds"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "unlearnspec", *RUN, "--jobs", "2", "--no-report"],
        cwd=tmp_path,
        env=_env(toy_world),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:  # an LDS retraining done and another being written
            names = [p.name for p in lds.iterdir()] if lds.is_dir() else []
            done = any(
                (lds / n / "lds.json").is_file() for n in names if not n.startswith(".tmp-")
            )  # renamed: finished
            if done and any(n.startswith(".tmp-") for n in names):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        writing = [p.name.removeprefix(".tmp-").rsplit("-", 1)[0] for p in lds.iterdir() if p.name.startswith(".tmp-")]
        os.kill(proc.pid, signal.SIGTERM)
        stopped_at = time.time()
        assert proc.wait(90) == 130
        assert _group_gone(proc.pid, 15), "a worker outlived the run"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    first = (tmp_path / "first.log").read_text()
    assert "[interrupted] stopped 2 worker(s)" in first and "rerun the same command to resume" in first, first[-3000:]
    for name in writing:  # the jobs being written were stopped, not run to their end
        done = lds / name / "lds.json"
        assert not done.is_file() or done.stat().st_mtime <= stopped_at, f"{name} went on after the interrupt"
    for tmp in (p for p in tmp_path.rglob(".tmp-*") if p.is_dir()):  # only removable temp folders may stay
        info = marker(tmp)
        assert info is not None and writer_alive(info) is None, tmp
    finished = {p.parent.name: p.stat().st_mtime_ns for p in lds.glob("*/lds.json")}
    assert finished

    again = _cli([*RUN, "--jobs", "2", "--no-report"], tmp_path, _env(toy_world))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for name, mtime in finished.items():
        assert f"lds:tiny_magic/{name} already done; skipped" in again.stdout
        assert (lds / name / "lds.json").stat().st_mtime_ns == mtime
    assert not any(p.is_dir() for p in tmp_path.rglob(".tmp-*"))
    _same_results(serial, tmp_path)
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)

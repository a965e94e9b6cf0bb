"""`run --executor slurm` on the real cluster, with faults injected: a point cancelled while it runs and
then rerun, a second run while jobs are queued, a diverging learning rate, a preempted (requeued) job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.slurmutil import wait_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
EXP7 = "specs/exp7_all_tokens.yaml"
LIMITS = ["--set", "eval.tasks.0.limit=50", "--set", "eval.tasks.1.limit=50", "--no-report"]


@pytest.fixture
def env(toy_world, slurm_cluster) -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e["UNLEARNSPEC_CACHE"] = str(toy_world.root.parents[1])
    e["PYTHONPATH"] = f"{REPO}:{e['PYTHONPATH']}" if e.get("PYTHONPATH") else str(REPO)  # jobs import this checkout
    return e


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unlearnspec", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def _statuses(out: Path) -> dict:
    from unlearnspec.run.slurm import Request, context_for, plan_for, statuses

    request = Request.read(out / ".slurm" / "request.json")
    return statuses(plan_for(request, context_for(request, "cpu", say=lambda m: None)))


def _assemble_live(out: Path) -> bool:
    from unlearnspec.run.slurmstate import live_jobs, read_json

    sub = read_json(out / ".slurm" / "_assemble" / "submission.json") or {}
    return bool(sub.get("slurm_id")) and bool(live_jobs([str(sub["slurm_id"])]))


def _wait_quiet(out: Path, timeout: float = 900) -> dict:
    """Until no job of the run is queued or running, and the assembling job has ended."""
    wait_for(
        lambda: not any(s.live for s in _statuses(out).values()) and not _assemble_live(out),
        timeout,
        f"the jobs of {out} to end",
        every=2.0,
    )
    return _statuses(out)


def _cancel_all(out: Path) -> None:
    from unlearnspec.run.slurmstate import read_json

    ids = [s.slurm_id for s in _statuses(out).values() if s.live and s.slurm_id]
    ids.append(str((read_json(out / ".slurm" / "_assemble" / "submission.json") or {}).get("slurm_id", "")))
    ids = [i for i in ids if i]
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_cancel_a_running_point_then_rerun_redoes_only_it(env, tmp_path):
    out = tmp_path / "exp7"
    args = [
        "run",
        EXP7,
        "--toy",
        "--executor",
        "slurm",
        "--out",
        str(out),
        "--set",
        "training.lr=[1.0e-5, 1.0e-4]",
        *LIMITS,
    ]
    first = _cli(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    keep, victim = "point:exp7_all_tokens/lr_0.0001", "point:exp7_all_tokens/lr_0.001"  # toy AdamW LRs x10
    try:
        # a second run while the jobs are queued or running submits nothing
        again = _cli(args, env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert " 0 submitted" in again.stdout, again.stdout
        before = _statuses(out)
        assert before[victim].live and before[keep].live

        running = wait_for(lambda: (s := _statuses(out)[victim]).state == "running" and s, 600, "the victim to run")
        # SLURM says R before the task's Python has started (importing torch takes seconds on a busy CPU):
        # cancel only once the task itself recorded that it runs, as the assertions below are about that case
        run_file = out / ".slurm" / "lr_0.001" / "run.json"
        wait_for(
            lambda: run_file.is_file() and json.loads(run_file.read_text()).get("state") == "running",
            300,
            "the victim's task to start",
        )
        subprocess.run(["scancel", running.slurm_id], check=True)
        st = _wait_quiet(out)
        assert st[keep].state == "done"
        assert st[victim].state == "cancelled" and "while running" in st[victim].detail, st[victim]
        assert not (out / "lr_0.001").exists()  # no half-written folder under the final name
        kept_files = _mtimes(out / "lr_0.0001")
        log = json.loads((out / "lr_0.0001" / "slurm.json").read_text())["log_out"]
        assert "Job completed successfully" in Path(log).read_text()  # the point folder points at its log

        rerun = _cli(args, env)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert " 1 submitted" in rerun.stdout, rerun.stdout
        st = _wait_quiet(out)
        assert {s.state for s in st.values()} == {"done"}
        assert _mtimes(out / "lr_0.0001") == kept_files  # the finished point was not touched
        assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # the killed attempt's temp folder is gone
        results = json.loads((out / "results.json").read_text())  # assembled by the final job
        assert [r["status"] for r in results["runs"]] == ["ok", "ok"]
    finally:
        _cancel_all(out)


def test_a_diverging_point_is_reported_with_its_reason(env, tmp_path):
    out = tmp_path / "exp7"
    args = ["run", EXP7, "--toy", "--executor", "slurm", "--out", str(out), "--set", "training.lr=[1.0e+4]", *LIMITS]
    first = _cli(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    try:
        st = _wait_quiet(out)["point:exp7_all_tokens/lr_100000"]
        assert st.state == "failed" and "non-finite loss" in st.detail, st
        assert st.log.endswith("_log.out") and Path(st.log).is_file()
        shown = _cli(["status", str(out)], env)
        assert shown.returncode == 0 and "non-finite loss" in shown.stdout, shown.stdout + shown.stderr
        runs = json.loads((out / "results.json").read_text())["runs"]
        assert runs[0]["status"] == "failed" and "non-finite loss" in runs[0]["reason"]
        again = _cli(args, env)  # a recorded failure is not resubmitted without --retry-failed
        assert again.returncode == 1 and " 0 submitted" in again.stdout and "--retry-failed" in again.stdout, (
            again.stdout
        )
    finally:
        _cancel_all(out)


def test_a_preempted_job_is_requeued_not_lost(env, tmp_path):
    from tests.slurm.slurmutil import scontrol_job

    out = tmp_path / "exp7"
    args = ["run", EXP7, "--toy", "--executor", "slurm", "--out", str(out), "--set", "training.lr=[1.0e-5]", *LIMITS]
    first = _cli(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    job = "point:exp7_all_tokens/lr_0.0001"
    try:
        running = wait_for(lambda: (s := _statuses(out)[job]).state == "running" and s, 600, "the point to run")
        run_file = out / ".slurm" / "lr_0.0001" / "run.json"  # written by the task, after submitit's signal handler
        wait_for(lambda: json.loads(run_file.read_text()).get("state") == "running", 300, "the task to start")
        # what a preempting scheduler sends first (submitit asks for --signal=USR2@90): checkpoint and requeue
        subprocess.run(["scancel", "--signal=USR2", running.slurm_id], check=True)
        info = wait_for(
            lambda: (j := scontrol_job(running.slurm_id)).get("Restarts") == "1" and j["JobState"] == "PENDING" and j,
            300,
            "the requeued job to wait to start again",
        )
        assert info["JobId"] == running.slurm_id
        st = _statuses(out)[job]
        assert st.state == "queued" and st.slurm_id == running.slurm_id, st
        assert json.loads((out / ".slurm" / "lr_0.0001" / "run.json").read_text())["state"] == "requeued"
        assert "this job is preempted" in Path(running.log.replace("_log.out", "_log.err")).read_text()
        assert not (out / "lr_0.0001").exists()
        # (SLURM holds a requeued job ~2 minutes before it starts again; it then runs the point from scratch,
        # measured: done 3 min after the signal)
    finally:
        _cancel_all(out)


def test_a_two_process_point_runs_under_torchrun(env, tmp_path, slurm_cluster):
    if slurm_cluster.cpus < 2:
        pytest.skip(f"the node has {slurm_cluster.cpus} CPU(s); a 2-process job needs 2")
    out = tmp_path / "exp7"
    args = [
        "run",
        EXP7,
        "--toy",
        "--executor",
        "slurm",
        "--cluster",
        str(Path(__file__).with_name("two_processes.yaml")),
        "--out",
        str(out),
        "--set",
        "training.lr=[1.0e-4]",
        *LIMITS,
    ]
    first = _cli(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    try:
        st = _wait_quiet(out)["point:exp7_all_tokens/lr_0.001"]
        assert st.state == "done", st
        state = out / ".slurm" / "lr_0.001"
        ranks = [json.loads((state / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert [(r["status"], r["world_size"]) for r in ranks] == [("ok", 2), ("ok", 2)]
        assert json.loads((out / "lr_0.001" / "slurm.json").read_text())["processes"] == 2
        assert json.loads((out / "lr_0.001" / "point.json").read_text())["status"] == "ok"
    finally:
        _cancel_all(out)


def test_lds_retrainings_run_as_their_own_jobs(env, tmp_path):
    """A score spec with `magic.lds`: the score job, then each retraining as its own SLURM job (after it),
    then the assembling job writes the LDS summary into scores.json."""
    from unlearnspec.run.slurmstate import read_json

    out = tmp_path / "scores"
    args = [
        "run",
        "specs/magic/magic_wmdp.yaml",
        "--toy",
        "--executor",
        "slurm",
        "--out",
        str(out),
        "--set",
        "magic.lds.subsets=5",
        "--set",
        "data.select.count=200",
        "--set",
        "training.max_steps=48",
    ]
    # 50 toy rows x 12 steps (not 250 x 62): the jobs' order and the summary are the point (suite time, issue 23)
    first = _cli(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    try:
        lds_dir = tmp_path / "scores.lds"
        subs = {
            name: read_json(lds_dir / ".slurm" / name / "submission.json")
            for name in ("reference", "subset_000", "subset_004")
        }
        score = read_json(tmp_path / ".slurm" / "scores" / "submission.json")
        assert score and all(s and s["after"] == [score["slurm_id"]] for s in subs.values()), (score, subs)
        assert len({s["slurm_id"] for s in subs.values()}) == 3  # one SLURM job per retraining

        def summary() -> dict | None:
            side = read_json(out / "scores.json") or {}
            return side.get("lds")

        lds = wait_for(summary, 900, "the LDS summary in scores.json", every=3.0)
        assert lds["subsets"] == 5 and lds["spearman"] is not None
        assert all((lds_dir / n / "lds.json").is_file() for n in ("reference", *[f"subset_{i:03d}" for i in range(5)]))
    finally:
        for folder in (tmp_path / ".slurm", tmp_path / "scores.lds" / ".slurm"):
            ids = [str((read_json(p) or {}).get("slurm_id", "")) for p in folder.glob("*/submission.json")]
            if any(ids):
                subprocess.run(["scancel", *[i for i in ids if i]], check=False)

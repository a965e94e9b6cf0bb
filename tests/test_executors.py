"""Executors without training: the registry, GPU sets, ETA, the plain progress lines and summary, and the
pool's scheduling (dependency order, parallelism, failures, what a worker process sees) with stand-in
jobs run in real spawned worker processes (tests/workers/pool_tasks.py)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.errors import UserError
from unlearnspec.run.executors import EXECUTORS, executor_class
from unlearnspec.run.executors.base import ExecutorOptions, JobStatus
from unlearnspec.run.executors.gpus import assign_gpus
from unlearnspec.run.executors.pool import PoolExecutor
from unlearnspec.run.executors.serial import SerialExecutor
from unlearnspec.run.options import RunOptions, make_context
from unlearnspec.run.outcome import Outcome
from unlearnspec.run.plan import PlanOptions, build_plan
from unlearnspec.run.progress import RunDisplay, estimate
from unlearnspec.spec.profile import default_toy_profile

from .conftest import REPO
from .fixtures.tiny_study import POINTS, SCORE, tiny_project
from .workers import pool_tasks


# --------------------------------------------------------------------------- registry
def test_an_unknown_executor_names_the_close_one_and_every_registered_one():
    with pytest.raises(UserError) as err:
        executor_class("pol", ExecutorOptions())
    assert (
        err.value.problems[0].message == "Unknown executor 'pol'. Did you mean: pool? Available: pool, serial, slurm."
    )
    result = CliRunner().invoke(
        app, ["run", str(REPO / "specs" / "exp7_all_tokens.yaml"), "--toy", "--executor", "slrm"]
    )
    assert result.exit_code == 2
    assert "Unknown executor 'slrm'. Did you mean: slurm? Available: pool, serial, slurm." in result.output
    assert "Traceback" not in result.output


def test_the_executor_follows_jobs_unless_named():
    assert executor_class(None, ExecutorOptions()) is SerialExecutor
    assert executor_class(None, ExecutorOptions(jobs=2)) is PoolExecutor
    assert executor_class(None, ExecutorOptions(gpus_per_job=0)) is PoolExecutor
    assert executor_class("pool", ExecutorOptions()) is PoolExecutor
    assert set(EXECUTORS) == {"serial", "pool", "slurm"}
    with pytest.raises(UserError, match="needs the pool executor"):
        SerialExecutor.create(RunOptions(), ExecutorOptions(jobs=2), RunDisplay())


# --------------------------------------------------------------------------- GPU sets
def test_gpu_sets_are_disjoint_and_refused_when_they_do_not_fit():
    assert assign_gpus(["0", "1", "2", "3"], 2, 2) == [("0", "1"), ("2", "3")]
    assert assign_gpus(["3", "5", "7"], 3, 1) == [("3",), ("5",), ("7",)]  # CUDA_VISIBLE_DEVICES order is kept
    assert assign_gpus([], 4, 0) == [None] * 4  # CPU jobs: every GPU hidden from the workers
    with pytest.raises(UserError) as err:
        assign_gpus(["0", "1", "2"], 2, 2)
    assert "--jobs 2 x --gpus-per-job 2 needs 4 GPUs, but 3 are visible (0, 1, 2); lower --jobs to 1" in str(err.value)
    with pytest.raises(UserError, match="lower --gpus-per-job to 2"):
        assign_gpus(["0", "1"], 1, 3)
    with pytest.raises(UserError, match="shows no GPU.*--gpus-per-job 0"):
        assign_gpus([], 1, 1)


def test_the_pool_refuses_gpus_on_a_machine_without_one(monkeypatch):
    import unlearnspec.run.executors.pool as pool

    monkeypatch.setattr(pool, "visible_gpus", lambda: [])
    with pytest.raises(UserError, match="shows no GPU"):
        PoolExecutor.create(RunOptions(), ExecutorOptions(jobs=2, gpus_per_job=1), RunDisplay())
    ex = PoolExecutor.create(RunOptions(), ExecutorOptions(jobs=2), RunDisplay())  # default: no GPU, CPU jobs
    assert ex.slots == [None, None] and ex.options.device == "cpu"
    with pytest.raises(UserError, match="--nproc"):
        PoolExecutor.create(RunOptions(), ExecutorOptions(jobs=2, nproc=2), RunDisplay())


# --------------------------------------------------------------------------- ETA and lines
def test_eta_uses_the_mean_time_per_kind_and_the_running_jobs():
    assert estimate({"point": 3}, {"point": []}, [], 2) is None  # nothing measured yet
    assert estimate({"point": 4}, {"point": [10.0, 20.0]}, [], 2) == pytest.approx(30.0)  # 4 x 15 s over 2 workers
    assert estimate({"point": 2, "lds": 2}, {"point": [10.0], "lds": [2.0]}, [], 1) == pytest.approx(24.0)
    assert estimate({"lds": 1}, {"point": [10.0], "lds": []}, [], 1) == pytest.approx(
        10.0
    )  # unmeasured kind: overall mean
    assert estimate({"point": 2}, {"point": [10.0]}, [("point", 4.0)], 2) == pytest.approx(8.0)  # 20 s - 4 s done
    assert estimate({"point": 1}, {"point": [10.0]}, [("point", 30.0)], 4) == 0.0  # overdue: not negative
    assert estimate({"point": 0}, {"point": [1.0]}, [], 1) == 0.0


def _exp7_plan():
    return build_plan([REPO / "specs" / "exp7_all_tokens.yaml"], PlanOptions(profile=default_toy_profile()))


def test_plain_progress_prints_one_counted_line_per_job_and_a_summary():
    plan = _exp7_plan()  # 4 points + 1 baseline
    buf = io.StringIO()
    display = RunDisplay(Console(file=buf, width=200), live=False)
    display.begin(plan, workers=2)
    base, p1, p2, p3, p4 = [j for j in plan.jobs if j.kind == "baseline"] + [j for j in plan.jobs if j.kind == "point"]
    display.skipped(base)
    display.started(p1)
    display.finished(p1, "ok", 8.25)
    display.finished(p2, "failed", 3.0, "non-finite loss at step 2")
    display.not_run(p3, "score:x failed: boom")
    display.finished(p4, "ok", 7.0)
    outcome = Outcome(
        ran=[p1.id, p2.id, p4.id],
        skipped=[base.id],
        seconds={p1.id: 8.25, p2.id: 3.0, p4.id: 70.0},
        failed={p2.id: f"{p2.id} failed: non-finite loss at step 2", p3.id: "not run: score:x failed: boom"},
    )
    display.summary(outcome, plan)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[2/5] point exp7_all_tokens/lr_0.0001 ok 8.2 s · ETA 0:12"  # 3 left x 8.25 s / 2 workers
    assert lines[1] == "[3/5] point exp7_all_tokens/lr_0.0005 failed 3.0 s (non-finite loss at step 2) · ETA 0:06"
    assert lines[2] == "[4/5] point exp7_all_tokens/lr_0.001 not run: score:x failed: boom"
    assert lines[3] == "[5/5] point exp7_all_tokens/lr_0.002 ok 7.0 s"
    assert lines[4].startswith("[summary] 5 job(s) in 0:0") and lines[4].endswith(
        "wall (jobs' own time 1:21): 2 done, 1 failed, 1 not run, 1 skipped (already done or recorded as failed)"
    )
    assert lines[5] == f"  failed   {p2.id}: {p2.id} failed: non-finite loss at step 2"
    assert lines[6] == f"  not run  {p3.id}: not run: score:x failed: boom"


def test_the_live_header_shows_counts_by_kind_the_running_jobs_and_an_eta():
    plan = _exp7_plan()
    display = RunDisplay(Console(file=io.StringIO()), live=False)
    display.begin(plan, workers=1)
    points = [j for j in plan.jobs if j.kind == "point"]
    assert "ETA after the first job" in display.header()
    display.finished(points[0], "ok", 10.0)
    display.started(points[1])
    header = display.header()
    assert header.startswith("jobs 1/5  (baseline 0/1 · point 1/4)  elapsed 0:00  ETA 0:")
    assert header.splitlines()[1].startswith("running  point exp7_all_tokens/lr_0.0005 0:00")


# --------------------------------------------------------------------------- the pool, with stand-in jobs
class RecordingPool(PoolExecutor):
    work = staticmethod(pool_tasks.record)


def _pool(tmp_path, monkeypatch, slots=None, fail=()):
    spec = tiny_project(tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv(pool_tasks.LOG, str(log))
    monkeypatch.setenv(pool_tasks.FAIL, ",".join(fail))
    options = RunOptions(profile=default_toy_profile(), auto_produce=True, device="cpu", report=False)
    display = RunDisplay(Console(file=io.StringIO(), width=200))
    ex = RecordingPool(make_context(options, say=display.say), options, 2, slots or [None, None], display)
    return ex, ex.make_plan([spec]), log


def test_the_pool_runs_ready_jobs_two_at_once_and_each_after_the_jobs_it_needs(toy_world, tmp_path, monkeypatch):
    ex, plan, log = _pool(tmp_path, monkeypatch)
    ex.submit(plan)
    outcome = ex.wait()
    seen = pool_tasks.read_log(log)
    todo = [j for j in plan.jobs if j.kind != "baseline" or j.id in seen]  # the shared baseline may be cached
    assert sorted(seen) == sorted(j.id for j in todo) and sorted(outcome.ran) == sorted(seen)
    assert not outcome.failed and outcome.complete
    for job in todo:
        for before in job.after:
            assert seen[job.id]["start"] >= seen[before]["end"], f"{job.id} started before {before} ended"
    spans = sorted((d["start"], d["end"]) for d in seen.values())
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two jobs ever ran at once"
    assert len({d["pid"] for d in seen.values()}) == 2  # two long-lived workers shared the jobs
    assert ex.status(plan)[SCORE] == JobStatus(SCORE, "score", "todo")  # stand-ins write no folders
    assert (plan.specs[-1].out / "results.json").is_file()


def test_a_failed_score_job_leaves_its_dependants_not_run_in_pool_and_serial(toy_world, tmp_path, monkeypatch):
    from unlearnspec.run.results import RunRecord

    ex, plan, log = _pool(tmp_path, monkeypatch, fail=[SCORE])
    ex.submit(plan)
    outcome = ex.wait()
    seen = pool_tasks.read_log(log)
    dependants = [j.id for j in plan.jobs if SCORE in j.after]
    assert len(dependants) == 8 and set(POINTS) <= set(dependants)  # 6 LDS retrainings and 2 points
    assert not set(dependants) & set(seen)  # never handed to a worker
    assert outcome.failed[SCORE] == f"{SCORE} failed: injected failure"
    for job_id in dependants:
        assert outcome.failed[job_id] == f"not run: {SCORE} failed: injected failure"
    assert {ex.status(plan)[j].state for j in dependants} == {"not run"}

    def fake_run_job(self, job):  # the serial executor on the same plan, same failure
        return RunRecord(
            point=job.point,
            status="failed" if job.id == SCORE else "ok",
            reason="injected failure",
            run_dir=".",
            spec_hash=job.hash,
        )

    monkeypatch.setattr(SerialExecutor, "run_job", fake_run_job)
    serial = SerialExecutor(ex.ctx, display=RunDisplay()).run(plan)
    assert serial.failed == outcome.failed


def test_each_worker_sees_its_own_gpu_set_one_thread_and_the_numerics_pins(toy_world, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)  # so the worker's own pin is what the job sees
    ex, plan, log = _pool(tmp_path, monkeypatch, slots=[("0", "1"), ("2", "3")])
    ex.submit(plan)
    ex.wait()
    seen = pool_tasks.read_log(log).values()
    by_pid = {d["pid"]: d["cuda"] for d in seen}
    assert sorted(by_pid.values()) == ["0,1", "2,3"]  # two workers, disjoint sets, one set per worker
    assert all(by_pid[d["pid"]] == d["cuda"] for d in seen)
    assert {d["omp"] for d in seen} == {"1"} and {d["aten"] for d in seen} == {"default"}
    assert not any(d["torch_loaded"] for d in seen)  # the pins came before torch could read them


def test_the_slurm_executor_hands_the_plan_over_through_the_same_protocol(toy_world, tmp_path, monkeypatch):
    """`run --executor slurm` goes through the registry like the local ones: submit every job (producers
    first, dependants after them), say where to follow, return at once; local-only options are refused."""
    import shutil

    from unlearnspec.run.slurm import SlurmExecutor
    from unlearnspec.run.study import run_study

    spec = tiny_project(tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # as if on a login node
    submitted: list[tuple[str, list[str]]] = []

    def fake_submit(self, job, after):  # what sbatch would get: the job and the SLURM ids it waits for
        submitted.append((job.id, list(after)))
        return str(100 + len(submitted))

    monkeypatch.setattr(SlurmExecutor, "_submit", fake_submit)
    monkeypatch.setattr(SlurmExecutor, "_assemble", lambda self, plan, slurm_of, any_new: "999")
    buf = io.StringIO()
    options = RunOptions(profile=default_toy_profile(), auto_produce=True, report=False)
    assert run_study([spec], options, Console(file=buf, width=200), executor="slurm") == 0
    ids = {job: str(101 + i) for i, (job, _) in enumerate(submitted)}
    assert submitted[0] == (SCORE, []) and all(after == [ids[SCORE]] for job, after in submitted if job in POINTS)
    out = buf.getvalue()
    assert "on SLURM (resources: " in out and "results.json and reports: job 999" in out
    assert f"{len(submitted)} submitted" in out and "follow with: unlearnspec status" in out
    with pytest.raises(UserError, match="--jobs"):
        executor_class("slurm", ExecutorOptions(jobs=2)).create(options, ExecutorOptions(jobs=2), RunDisplay())

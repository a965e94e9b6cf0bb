"""submitit against the real SLURM cluster: a function's result and logs, afterok dependencies, cancellation.

These run real jobs through sbatch (tests/slurm/start-cluster.sh starts a single-node cluster); they pin
down the submitit behaviour the SLURM executor relies on, including what it can *not* see without a
slurmdbd (job states), which is why unlearnspec reads states from slurmctld itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.slurm.slurmutil import completion_state, scontrol_job, wait_for

submitit = pytest.importorskip("submitit")
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _executor(folder: Path, cluster, **extra):
    ex = submitit.AutoExecutor(folder=folder)
    assert ex.cluster == "slurm", f"AutoExecutor picked {ex.cluster!r} although sbatch is present"
    ex.update_parameters(
        slurm_partition=cluster.partition,
        timeout_min=5,
        cpus_per_task=1,
        nodes=1,
        tasks_per_node=1,
        slurm_setup=[f"export PYTHONPATH={REPO}:${{PYTHONPATH:-}}"],
        **extra,
    )
    return ex


def _wait_done(job, timeout: float = 90.0) -> None:
    try:
        wait_for(lambda: job.paths.result_pickle.exists(), timeout, f"job {job.job_id} to finish")
    except AssertionError:
        job.cancel(check=False)
        raise


def square_and_report(x: int) -> dict:
    print(f"square_and_report says hello {x}", flush=True)
    print(f"to stderr {x}", file=os.sys.stderr, flush=True)
    return {
        "value": x * x,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
    }


def write_after(path: str, delay: float) -> float:
    time.sleep(delay)
    Path(path).write_text("written by the producer")
    return time.time()


def read_file(path: str) -> tuple[str, float]:
    return Path(path).read_text(), time.time()


def fail_loudly() -> None:
    raise RuntimeError("injected failure")


def sleep_long(seconds: float) -> str:
    time.sleep(seconds)
    return "not cancelled"


def test_function_result_and_logs(slurm_cluster, tmp_path):
    ex = _executor(tmp_path / "logs", slurm_cluster, name="us-square")
    job = ex.submit(square_and_report, 7)
    _wait_done(job)
    result = job.result()
    assert result == {"value": 49, "job_id": job.job_id, "partition": slurm_cluster.partition}
    # one stdout and one stderr file per job, named after the job id
    assert job.paths.stdout.name == f"{job.job_id}_0_log.out" and job.paths.stdout.exists()
    assert "square_and_report says hello 7" in job.stdout()
    assert "to stderr 7" in job.stderr()
    info = wait_for(
        lambda: scontrol_job(job.job_id).get("JobState") == "COMPLETED" and scontrol_job(job.job_id),
        30,
        "slurmctld to record COMPLETED",
    )
    assert info["JobName"] == "us-square"
    assert info["StdOut"] == str(job.paths.stdout)  # slurmctld knows where the log went


def test_afterok_dependency_runs_after_producer_and_never_after_a_failure(slurm_cluster, tmp_path):
    target = tmp_path / "produced.txt"
    ex = _executor(tmp_path / "logs", slurm_cluster)
    producer = ex.submit(write_after, str(target), 4.0)
    ex.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{producer.job_id}"})
    consumer = ex.submit(read_file, str(target))
    wait_for(lambda: scontrol_job(producer.job_id).get("JobState") == "RUNNING", 60, "the producer to run")
    held = scontrol_job(consumer.job_id)  # a free CPU, but held while the producer runs
    assert (held["JobState"], held["Reason"]) == ("PENDING", "Dependency"), held
    _wait_done(consumer)
    text, read_at = consumer.result()
    assert text == "written by the producer"
    assert read_at >= producer.result()

    ex.update_parameters(slurm_additional_parameters={})
    bad = ex.submit(fail_loudly)
    ex.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{bad.job_id}"})
    orphan = ex.submit(read_file, str(target))
    _wait_done(bad)
    with pytest.raises(submitit.core.utils.FailedJobError, match="injected failure"):
        bad.result()
    try:
        # SLURM keeps the dependant pending forever (or cancels it, with kill_invalid_depend): never runs
        reason = wait_for(
            lambda: (
                (s := scontrol_job(orphan.job_id))
                and (s.get("Reason") == "DependencyNeverSatisfied" or s.get("JobState") == "CANCELLED")
                and s
            ),
            30,
            "the dependant of a failed job to be marked",
        )
        assert reason["JobState"] in ("PENDING", "CANCELLED")
        assert wait_for(lambda: scontrol_job(bad.job_id).get("JobState"), 10, "state") == "FAILED"
        assert not orphan.paths.result_pickle.exists()
    finally:
        orphan.cancel(check=False)


def test_cancelled_job_state_as_submitit_reports_it(slurm_cluster, tmp_path):
    ex = _executor(tmp_path / "logs", slurm_cluster)
    job = ex.submit(sleep_long, 120)
    wait_for(lambda: scontrol_job(job.job_id).get("JobState") == "RUNNING", 60, "the job to run")
    job.cancel()
    final = wait_for(
        lambda: scontrol_job(job.job_id).get("JobState") in ("CANCELLED",) and "CANCELLED",
        30,
        "slurmctld to show CANCELLED",
    )
    assert final == "CANCELLED"
    assert not job.paths.result_pickle.exists()
    state = job.watcher.get_state(job.job_id, mode="force")
    if slurm_cluster.accounting:
        assert state.startswith("CANCELLED")
        assert job.done(force_check=True)
    else:
        # Without a slurmdbd, `sacct` fails and submitit never learns any state: a cancelled job looks
        # forever UNKNOWN and not done (job.result() would block). unlearnspec must read states itself.
        assert state == "UNKNOWN"
        assert not job.done(force_check=True)
        assert wait_for(lambda: completion_state(job.job_id), 15, "the jobcomp record") == "CANCELLED"

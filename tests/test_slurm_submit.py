"""The SLURM executor without a cluster: resources files, the sbatch script submitit writes from them,
and what gets submitted with which dependencies (submission replaced by a recorder)."""

from __future__ import annotations

import dataclasses

import pytest

from unlearnspec.errors import UserError
from unlearnspec.run.plan import Plan
from unlearnspec.run.results import RunRecord
from unlearnspec.spec.cluster import JobResources, load_cluster
from unlearnspec.spec.profile import slurm_settings

from .conftest import REPO

EXAMPLE = REPO / "specs" / "profiles" / "slurm_example.yaml"
TOY = REPO / "unlearnspec" / "profiles" / "toy.yaml"


def test_example_site_file_and_toy_profile_resources():
    site = load_cluster(EXAMPLE).slurm
    assert (site.jobs.score.gpus, site.jobs.score.processes, site.jobs.point.gpus, site.jobs.point.processes) == (
        4,
        4,
        2,
        2,
    )
    assert site.sbatch_extra() == {"constraint": "a100|h100"}
    toy, source = slurm_settings(None, TOY)
    assert toy.jobs.point.gpus == 0 and "slurm section" in source


def test_resource_rules_are_user_errors(tmp_path):
    with pytest.raises(ValueError, match="one process per GPU"):
        JobResources(gpus=2, processes=4, cpus=8, mem_gb=10, time_min=10)
    bad = tmp_path / "site.yaml"
    bad.write_text(
        "name: x\nslurm:\n  extra_sbatch: [constraint=a100]\n  jobs:\n"
        "    score: {cpus: 1, mem_gb: 1, time_min: 1}\n    point: {cpus: 1, mem_gb: 1, time_min: 1}\n"
        "    baseline: {cpus: 1, mem_gb: 1, time_min: 1}\n"
    )
    with pytest.raises(UserError) as err:
        load_cluster(bad)
    assert "extra_sbatch" in str(err.value) and "--name=value" in str(err.value)
    with pytest.raises(UserError, match="--cluster FILE"):
        slurm_settings(None, None)


def test_sbatch_script_carries_every_resource(tmp_path):
    from unlearnspec.run.sbatch import SbatchJob
    from unlearnspec.run.slurm import sbatch_script

    site = load_cluster(EXAMPLE).slurm
    text = sbatch_script(
        tmp_path, site, SbatchJob("score", "us-score-x", ("11", "12"), "afterok"), "python -u -m submitit.core._submit"
    )
    for line in (
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --mem=1126400MB",
        "#SBATCH --time=240",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=my-lab",
        "#SBATCH --qos=normal",
        "#SBATCH --constraint='a100|h100'",
        "#SBATCH --kill-on-invalid-dep=yes",
        "#SBATCH --dependency=afterok:11:12",
        "#SBATCH --job-name=us-score-x",
        "module load cuda/12.4",
    ):
        assert line in text, line
    point = sbatch_script(tmp_path, site, SbatchJob("point", "p"), "cmd")
    assert "#SBATCH --gpus-per-node=2" in point and "--dependency" not in point


@pytest.fixture
def exp5_plan(tmp_path) -> tuple[Plan, object, object]:
    """exp5's toy plan (two score jobs, a baseline, a point) with every folder moved under tmp_path."""
    from unlearnspec.run.slurm import Request, context_for, plan_for

    request = Request(
        paths=[str(REPO / "specs" / "exp5_selective.yaml")], profile=str(TOY), overrides=["training.lr=[1.0e-4]"]
    )
    ctx = context_for(request, "cpu", say=lambda m: None)
    plan = plan_for(request, ctx)
    moved = {j.out: tmp_path / j.kind / j.out.name for j in plan.jobs}
    for r in plan.specs:  # a score spec's output folder is its score job's folder
        moved.setdefault(r.out, tmp_path / "specs" / r.out.name)
    jobs = [
        dataclasses.replace(j, out=moved.get(j.out, tmp_path / "specs" / j.out.parent.name / j.out.name))
        for j in plan.jobs
    ]
    specs = [dataclasses.replace(r, out=moved[r.out]) for r in plan.specs]
    return Plan(jobs=jobs, specs=specs, profile=plan.profile), request, ctx


def _recording(monkeypatch) -> list[tuple[str, list[str]]]:
    from unlearnspec.run.slurm import SlurmExecutor

    calls: list[tuple[str, list[str]]] = []

    def fake_submit(self, job, after):
        calls.append((job.id, list(after)))
        return str(100 + len(calls))

    monkeypatch.setattr(SlurmExecutor, "_submit", fake_submit)
    monkeypatch.setattr(SlurmExecutor, "_assemble", lambda self, plan, slurm_of, any_new: None)
    return calls


def test_points_wait_afterok_for_the_score_jobs_they_read(exp5_plan, monkeypatch):
    from unlearnspec.run.slurm import SlurmExecutor

    plan, request, ctx = exp5_plan
    calls = _recording(monkeypatch)
    done = SlurmExecutor(ctx, request, load_cluster(EXAMPLE).slurm).submit(plan)
    ids = dict(done.submitted)
    assert [c[0] for c in calls] == [j.id for j in plan.jobs]  # plan order: producers first
    scores = [j.id for j in plan.jobs if j.kind == "score"]
    assert len(scores) == 2
    for job in plan.jobs:
        expected = sorted(ids[s] for s in job.after)
        assert sorted(dict(calls)[job.id]) == expected
        if job.kind == "point":
            assert expected == sorted(ids[s] for s in scores)


def _record_failure(job, reason: str) -> None:
    from unlearnspec.run.jobstate import POINT_FILE
    from unlearnspec.run.rundirs import atomic_dir, write_json

    with atomic_dir(job.out, kind=job.kind, job=job.id, spec_hash=job.hash) as tmp:
        write_json(
            tmp / POINT_FILE,
            RunRecord(point=job.point, status="failed", reason=reason, run_dir=".", spec_hash=job.hash).model_dump(
                mode="json"
            ),
        )


def test_a_failed_producer_marks_its_dependants_not_run(exp5_plan, monkeypatch):
    from unlearnspec.run.slurm import SlurmExecutor, statuses

    plan, request, ctx = exp5_plan
    score = next(j for j in plan.jobs if j.kind == "score")
    _record_failure(score, "MAGIC check failed (injected)")
    calls = _recording(monkeypatch)
    done = SlurmExecutor(ctx, request, load_cluster(EXAMPLE).slurm).submit(plan)
    points = [j.id for j in plan.jobs if j.kind == "point"]
    assert not set(points) & {c[0] for c in calls}
    assert score.id not in done.submitted and done.kept[score.id] == "failed"
    for p in points:
        assert done.not_run[p] == f"{score.id} failed: MAGIC check failed (injected)"
    shown = statuses(plan)
    assert shown[score.id].state == "failed" and shown[score.id].recorded
    assert {shown[p].state for p in points} == {"not run"}
    assert "MAGIC check failed (injected)" in shown[points[0]].detail

    # --retry-failed resubmits the producer, and its dependants wait for it
    calls.clear()
    retry = dataclasses.replace(request, retry_failed=True)
    done = SlurmExecutor(ctx, retry, load_cluster(EXAMPLE).slurm).submit(plan)
    assert score.id in done.submitted and not done.not_run
    assert done.submitted[score.id] in dict(calls)[points[0]]

"""`training.batch_size` is the global batch: its split over the ranks (micro-batch, accumulation), every
refusal with the fix for its case, the removed `grad_accum`, and the sampler that gives every optimizer step
the same rows at any world size. No training here (the torchrun runs are in test_batch_ranks.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.errors import UserError
from unlearnspec.run.plan import PlanOptions, build_plan, plan_layouts, spec_hash
from unlearnspec.spec import TrainingSpec
from unlearnspec.spec.batch import BatchLayout, batch_layout, optimizer_steps, tail_micro_batches
from unlearnspec.spec.load import load_spec
from unlearnspec.spec.profile import default_toy_profile
from unlearnspec.train.sampler import GlobalBatchSampler, rank_micro_batches

from .conftest import SPECS

EXP7 = SPECS / "exp7_all_tokens.yaml"


def _training(**kw) -> TrainingSpec:
    return TrainingSpec.model_validate({"optimizer": {"name": "sgd"}, "lr": 0.1, "max_steps": 3, **kw})


def _refusal(training: TrainingSpec, world: int, **kw) -> tuple[str, str]:
    with pytest.raises(UserError) as err:
        batch_layout(training, world, file="s.yaml", launch="--nproc X", **kw)
    (problem,) = err.value.problems
    assert problem.file == "s.yaml"
    return problem.loc, problem.message


# --------------------------------------------------------------------------- the derivation
@pytest.mark.parametrize(
    "batch,micro,world,expected",
    [
        (8, None, 1, (8, 1, 8, 1)),
        (8, None, 2, (8, 2, 4, 1)),
        (8, 2, 2, (8, 2, 2, 2)),
        (8, 1, 4, (8, 4, 1, 2)),
        (32, 4, 4, (32, 4, 4, 2)),
        (4, None, 4, (4, 4, 1, 1)),
    ],
)
def test_the_global_batch_splits_into_ranks_micro_batches_and_accumulation(batch, micro, world, expected):
    layout = batch_layout(_training(batch_size=batch, micro_batch_size=micro), world)
    assert (layout.global_batch, layout.world_size, layout.micro_batch_size, layout.accumulation) == expected
    assert layout.world_size * layout.micro_batch_size * layout.accumulation == batch


def test_steps_come_from_the_global_batch():
    epochs = _training(batch_size=8, max_steps=None, epochs=2.0)
    assert optimizer_steps(epochs, 250) == 64  # ceil(250 / 8) = 32 steps an epoch, whatever the rank count
    assert optimizer_steps(_training(batch_size=8), 250) == 3


# --------------------------------------------------------------------------- every refusal and its fix
def test_a_rank_count_that_does_not_divide_the_global_batch_names_the_nearest_that_do():
    loc, msg = _refusal(_training(batch_size=8), 3)
    assert loc == "training.batch_size"
    assert "batch_size 8 is the global batch" in msg and "3 ranks (--nproc X)" in msg
    assert "nearest: 2 or 4" in msg and "another experiment" in msg
    for fix in (2, 4):
        batch_layout(_training(batch_size=8), fix)  # the advice works
    _, more = _refusal(_training(batch_size=4), 8)
    assert "nearest: 4)" in more  # more ranks than rows: at most the rows
    _, prime = _refusal(_training(batch_size=7), 2)
    assert "nearest: 1 or 7" in prime


def test_a_micro_batch_that_does_not_divide_the_share_names_the_largest_that_does():
    loc, msg = _refusal(_training(batch_size=24, micro_batch_size=5), 2)
    assert loc == "training.micro_batch_size"
    assert (
        "does not divide each rank's share" in msg
        and "batch_size 24 over 2 ranks (--nproc X) = 12 rows per rank" in msg
    )
    assert (
        "`micro_batch_size: 4` (3 micro-batches per step)" in msg and "or delete it (12 rows per forward pass)" in msg
    )
    assert batch_layout(_training(batch_size=24, micro_batch_size=4), 2).accumulation == 3


def test_a_micro_batch_larger_than_the_share_is_refused_with_the_share():
    loc, msg = _refusal(_training(batch_size=8, micro_batch_size=8), 4)
    assert loc == "training.micro_batch_size"
    assert (
        "larger than each rank's share" in msg
        and "= 2 rows per rank" in msg
        and "`micro_batch_size: 2` (1 micro-batch per step)" in msg
    )


def test_an_epoch_tail_too_short_for_the_ranks_is_refused_with_a_launch_that_works():
    exp3 = _training(batch_size=32, max_steps=8)  # toy exp3: 8 steps over 250 rows reach the 26-row last step
    loc, msg = _refusal(exp3, 32, n_rows=250)
    assert loc == "training.batch_size"
    assert "each epoch of 250 rows ends in a step of 26 rows (batch_size 32)" in msg and "32 ranks" in msg
    assert "repeated rows" in msg and "Launch 16 ranks." in msg
    batch_layout(exp3, 16, n_rows=250)
    assert batch_layout(_training(batch_size=32, max_steps=7), 32, n_rows=250).micro_batch_size == 1  # stops before it
    tight = _training(batch_size=8, micro_batch_size=1, max_steps=32)  # 3-row last step, 2 ranks x 2 micro-batches
    _, msg = _refusal(tight, 2, n_rows=251)
    assert "Launch 1 rank or set `micro_batch_size: 2`" in msg and "in each of its 2 micro-batches" in msg
    for fixed, world in ((tight, 1), (_training(batch_size=8, micro_batch_size=2, max_steps=32), 2)):
        batch_layout(fixed, world, n_rows=251)


@pytest.mark.parametrize(
    "accum,expected",
    [
        (2, "write `batch_size: 8` and `micro_batch_size: 4`"),
        (1, "delete `grad_accum` and keep `batch_size: 4`"),
        ("two", "write `batch_size: B x A` (rows per optimizer step) and `micro_batch_size: B`"),
    ],
)
def test_grad_accum_is_refused_with_the_migration(tmp_path, accum, expected):
    spec = yaml.safe_load(EXP7.read_text())
    spec["training"].update(batch_size=4, grad_accum=accum)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "training.grad_accum" in text and "`grad_accum` was removed" in text and expected in text, text


def test_the_micro_batch_is_a_memory_knob_outside_the_hash():
    plain = load_spec(EXP7)
    micro = load_spec(EXP7, overrides=["training.micro_batch_size=2"])
    assert micro.training.micro_batch_size == 2 and spec_hash(micro) == spec_hash(plain)
    assert spec_hash(load_spec(EXP7, overrides=["training.batch_size=4"])) != spec_hash(plain)


# --------------------------------------------------------------------------- the sampler
def _steps(n: int, layout: BatchLayout, epochs: int = 2, seed: int = 3) -> list[list[int]]:
    """The rows of each optimizer step over `epochs` shuffled epochs, gathered over the ranks as MAGIC records
    them (rank-interleaved) and grouped as the HF loop groups micro-batches (accumulation, then the remainder)."""
    w, out = layout.world_size, []
    for epoch in range(epochs):
        per_rank = []
        for r in range(w):
            sampler = GlobalBatchSampler(n, layout, r, True, seed)
            sampler.set_epoch(epoch)
            got = list(sampler)
            assert len(got) == len(sampler) and all(got)  # no empty micro-batch
            per_rank.append(got)
        assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of micro-batches
        counts = [layout.accumulation] * (n // layout.global_batch)
        counts += [tail_micro_batches(n % layout.global_batch, layout)] if n % layout.global_batch else []
        assert sum(counts) == len(per_rank[0])
        i = 0
        for c in counts:
            out.append([row for k in range(c) for r in range(w) for row in per_rank[r][i + k]])
            i += c
    return out


@pytest.mark.parametrize(
    "n,batch,micro,world",
    [
        (250, 8, None, 2),  # exp7-like
        (250, 32, None, 4),  # exp3-like: the 26-row last step over 4 ranks
        (250, 32, 4, 2),  # accumulation 4 on 2 ranks, and the short step
        (251, 8, 2, 2),  # a 3-row last step over 2 ranks
        (10, 4, 1, 2),
    ],
)
def test_every_step_holds_the_one_process_rows_at_any_world_size(n, batch, micro, world):
    one = _steps(n, BatchLayout(batch, 1, batch, 1))
    training = _training(batch_size=batch, micro_batch_size=micro, max_steps=2 * -(-n // batch))
    many = _steps(n, batch_layout(training, world, n_rows=n))
    assert many == one  # the same rows, in the same order within each step, epoch after epoch
    assert len(one) == 2 * -(-n // batch) and all(len(set(s)) == len(s) for s in many)  # never a repeated row


def test_one_process_keeps_the_hf_accelerate_order():
    """One process before this change: accelerate's SeedableRandomSampler (data_seed + epoch) in batches of
    batch_size; the committed toy reports were trained on that order."""
    from accelerate.data_loader import SeedableRandomSampler
    from torch.utils.data import BatchSampler

    hf = SeedableRandomSampler(data_source=range(250), data_seed=42)
    ours = GlobalBatchSampler(250, BatchLayout(8, 1, 8, 1), 0, True, 42)
    for epoch in range(3):
        hf.set_epoch(epoch)
        ours.set_epoch(epoch)
        assert list(ours) == list(BatchSampler(hf, 8, drop_last=False))


def test_accelerates_own_sharding_repeats_rows_in_the_short_last_step():
    """Why the trainer shards itself: accelerate's BatchSamplerShard (even_batches, its default) pads the 26-row
    last step of toy exp3 under 2 ranks of 16 with rows from the start of the epoch."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    base = BatchSampler(SequentialSampler(range(250)), 16, drop_last=False)
    shards = [list(BatchSamplerShard(base, 2, r)) for r in range(2)]
    last = shards[0][-1] + shards[1][-1]
    assert len(last) == 32 and len(set(last) & set(range(16))) == 6  # 6 rows trained twice in the epoch
    ours = rank_micro_batches(list(range(224, 250)), BatchLayout(32, 2, 16, 1), 0) + rank_micro_batches(
        list(range(224, 250)), BatchLayout(32, 2, 16, 1), 1
    )
    assert sorted(r for b in ours for r in b) == list(range(224, 250))


# --------------------------------------------------------------------------- show, plan, run --nproc, --cluster
def test_show_prints_the_split_for_nproc_and_refuses_what_cannot_split():
    runner = CliRunner()
    one = runner.invoke(app, ["show", str(EXP7), "--toy"])
    assert (
        one.exit_code == 0
        and "# batch (one process; --nproc N shows N): 8 rows per step = 1 rank x 8 rows x 1 micro-batch" in one.stdout
    )
    two = runner.invoke(app, ["show", str(EXP7), "--toy", "--nproc", "2", "--set", "training.micro_batch_size=2"])
    assert (
        two.exit_code == 0 and "# batch (--nproc 2): 8 rows per step = 2 ranks x 2 rows x 2 micro-batches" in two.stdout
    )
    assert yaml.safe_load(two.stdout)["training"]["micro_batch_size"] == 2
    bad = runner.invoke(app, ["show", str(EXP7), "--toy", "--nproc", "3"])
    assert bad.exit_code == 2 and "training.batch_size" in bad.output and "nearest: 2 or 4" in bad.output


def _site(tmp_path: Path, processes: int) -> Path:
    site = yaml.safe_load((SPECS / "profiles" / "slurm_example.yaml").read_text())
    site["slurm"]["jobs"]["score"].update(gpus=processes, processes=processes)
    path = tmp_path / f"site{processes}.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def test_show_cluster_gives_the_score_jobs_split_or_refuses(tmp_path):
    runner = CliRunner()
    magic = SPECS / "magic" / "magic_wmdp.yaml"  # batch 4 x 250 steps, as recorded
    shown = runner.invoke(app, ["show", str(magic), "--cluster", str(_site(tmp_path, 4))])
    assert shown.exit_code == 0, shown.output
    assert (
        "jobs.score.processes in" in shown.stdout
        and "4 rows per step = 4 ranks x 1 row x 1 micro-batch" in shown.stdout
    )
    refused = runner.invoke(app, ["show", str(magic), "--cluster", str(_site(tmp_path, 3))])
    assert refused.exit_code == 2
    text = " ".join(refused.output.split())
    assert (
        "batch_size 4 is the global batch" in text
        and "3 ranks (jobs.score.processes in" in text
        and "nearest: 2 or 4" in text
    )


def test_plan_records_each_jobs_split_and_run_nproc_refuses_before_launching(tmp_path):
    runner = CliRunner()
    plan = runner.invoke(
        app, ["plan", str(EXP7), "--toy", "--nproc", "2", "--format", "json", "--out", str(tmp_path / "o")]
    )
    assert plan.exit_code == 0, plan.output
    rows = json.loads(plan.stdout)
    assert rows["world_size"] == 2
    points = [j for j in rows["jobs"] if j["kind"] == "point"]
    assert points and all(
        j["batch"] == {"global_batch": 8, "world_size": 2, "micro_batch_size": 4, "accumulation": 1} for j in points
    )
    assert all(j["batch"] is None for j in rows["jobs"] if j["kind"] == "baseline")
    run = runner.invoke(app, ["run", str(EXP7), "--toy", "--nproc", "3", "--out", str(tmp_path / "r")])
    assert run.exit_code == 2 and "nearest: 2 or 4" in run.output and "[launch]" not in run.output
    assert not (tmp_path / "r").exists()  # nothing started, nothing written


def test_the_whole_study_splits_over_the_example_sites_processes():
    """Every shipped spec keeps its recorded global batch and runs under the example site file as it is."""
    site = yaml.safe_load((SPECS / "profiles" / "slurm_example.yaml").read_text())["slurm"]["jobs"]
    for profile in (None, default_toy_profile()):
        options = PlanOptions(profile=profile, auto_produce=profile is not None, cache_root=Path("/nonexistent-cache"))
        plan = build_plan([SPECS], options)
        layouts = plan_layouts(plan, lambda job: site[job.kind]["processes"], lambda job: job.kind)
        for job in plan.jobs:
            if job.kind == "score":
                assert layouts[job.id].world_size == 4 and layouts[job.id].global_batch == job.spec.training.batch_size
    magic = load_spec(SPECS / "magic" / "magic_wmdp.yaml")
    assert (magic.training.batch_size, magic.training.max_steps, magic.data.select.count) == (4, 250, 1000)  # one epoch
    assert [load_spec(SPECS / f"{n}.yaml").training.batch_size for n in ("exp3_positive_only", "exp7_all_tokens")] == [
        32,
        8,
    ]


def test_slurm_submission_refuses_a_site_whose_processes_cannot_share_the_batch(tmp_path, monkeypatch):
    """Refused before anything is submitted: a stand-in `sbatch` on PATH records any call (none is made)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "sbatch-was-called"
    for tool in ("sbatch", "srun"):  # a SLURM client as a login node has it; any call is recorded
        (bin_dir / tool).write_text(f"#!/bin/sh\ntouch {called}\nexit 99\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(SPECS / "magic" / "magic_wmdp.yaml"),
            "--executor",
            "slurm",
            "--cluster",
            str(_site(tmp_path, 3)),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert (
        "batch_size 4 is the global batch" in text
        and "3 ranks (jobs.score.processes in" in text
        and "nearest: 2 or 4" in text
    )
    assert not called.exists() and not (tmp_path / "out").exists()

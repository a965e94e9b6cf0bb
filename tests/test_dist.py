"""unlearnspec.train.dist: alone (no process group) and on 2 real torchrun CPU ranks (tests/workers/dist_fail.py)."""

from __future__ import annotations

import json

import pytest

from unlearnspec.train import dist

from .dist_util import torchrun


def test_single_process_helpers(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert (dist.world_size(), dist.rank(), dist.local_rank(), dist.is_main(), dist.is_distributed()) == (
        1,
        0,
        0,
        True,
        False,
    )
    assert dist.run_on_main(lambda: 42) == 42
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.gather_objects(3) == [3]
    assert dist.any_rank(True) and not dist.any_rank(False)
    dist.barrier()
    with pytest.raises(ValueError, match="boom"):
        with dist.fail_together():
            raise ValueError("boom")


def test_several_processes_without_a_group_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not dist.is_main()
    with pytest.raises(RuntimeError, match="no process group"):
        dist.barrier()


@pytest.mark.slow
def test_two_ranks_share_results_and_fail_together(tmp_path, toy_world):
    import os

    launch = torchrun(
        "dist_fail.py", str(tmp_path), "agreed", timeout=240, env={"UNLEARNSPEC_CACHE": os.environ["UNLEARNSPEC_CACHE"]}
    )
    assert not launch.timed_out, f"hung (killed after {launch.seconds:.0f}s):\n{launch.output[-4000:]}"
    assert launch.returncode == 0, launch.output[-6000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["is_main"], r1["is_main"], r0["world"]) == (True, False, 2)
    assert r0["shared"] == r1["shared"] == {"metric": 0.25, "by": 0}  # rank 0's result on both
    assert r0["main_failure"] == "own: disk full while writing results.json"
    assert r1["main_failure"] == "RankFailed(0): OSError: disk full while writing results.json"
    assert r0["rank1_failure"] == "RankFailed(1): ValueError: point lr=0.1 failed on rank 1"
    assert r1["rank1_failure"] == "own: point lr=0.1 failed on rank 1"
    assert r0["any_rank"] and r1["any_rank"] and r0["gathered"] == r1["gathered"] == [0, 10]
    # The loss is NaN on rank 1 only; the agreed check stops BOTH ranks at the same step.
    assert r0["training"] == r1["training"] == "diverged at step 1"
    # Evaluation ran once, on rank 0; rank 1 waited and received the same metrics.
    assert r0["eval_calls"] == [0] and r1["eval_calls"] == []
    assert r0["eval"] == r1["eval"] and set(r0["eval"]) == {"toy_wmdp", "toy_mmlu"}
    assert all(0.0 <= acc <= 1.0 for acc in r0["eval"].values())


@pytest.mark.slow
def test_without_agreement_rank0_is_torn_down_not_hung(tmp_path):
    """Mutation: rank 1 raises alone. Rank 0 is left in DDP's all-reduce; the launch still ends (gloo
    reports the closed peer, torchrun stops the rank) but rank 0 never records the reason."""
    launch = torchrun("dist_fail.py", str(tmp_path), "unagreed", timeout=180)
    assert not launch.timed_out, f"hung (killed after {launch.seconds:.0f}s)"
    assert launch.returncode != 0
    assert json.loads((tmp_path / "rank1.json").read_text())["training"] == "diverged at step 1"
    assert not (tmp_path / "rank0.json").exists()

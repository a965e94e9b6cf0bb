"""The objectives under real torchrun (2 CPU ranks, gloo, DDP) equal one process with the same global batch: the
forget/retain divisors are counted over all ranks and the loss carries the world-size factor."""

from __future__ import annotations

import json

import pytest
import torch

from .dist_util import torchrun
from .workers.objective_train import run_case

pytestmark = pytest.mark.slow

OBJECTIVES = {
    "grad_diff": {"name": "grad_diff", "alpha": 1.0},
    "npo": {"name": "npo", "beta": 0.5, "alpha": 1.0},
    "simnpo": {"name": "simnpo", "beta": 0.1, "gamma": 0.2, "alpha": 1.0},
    "rmu": {"name": "rmu", "layer": 1, "steering_coef": 4.0, "alpha": 10.0, "seed": 0},
}
# The same global batch of 8 rows: 2 ranks x 4 rows against one process; `selected` makes the forget count differ
# from the valid tokens, and two forget rows select nothing.
CASES = [{"name": k, "objective": v, "batch_size": 8, "normalizer": "selected"} for k, v in OBJECTIVES.items()]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("objectives_ddp")
    launch = torchrun("objective_train.py", str(out), json.dumps(CASES), timeout=400)
    assert not launch.timed_out, f"torchrun hung (killed after {launch.seconds:.0f}s):\n{launch.output[-4000:]}"
    assert launch.returncode == 0, launch.output[-6000:]
    return {c["name"]: torch.load(out / f"{c['name']}.pt") for c in CASES}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_two_ranks_equal_one_process(two_ranks, tmp_path, name):
    ref = run_case({**CASES[list(OBJECTIVES).index(name)], "name": "ref"}, tmp_path)
    run = two_ranks[name]
    assert torch.equal(run["initial"], ref["initial"])
    update = float((ref["params"] - ref["initial"]).norm())
    assert update > 1e-3
    error = float((run["params"] - ref["params"]).norm()) / update
    print(f"{name}: 2 ranks vs 1 process, |difference| / |update| = {error:.1e}")
    assert error < 1e-5, name

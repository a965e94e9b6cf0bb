"""LDS on a tiny GPT-NeoX in float64: the retraining replays the recorded run exactly, the LDS of exact
scores in a linear regime (tiny LR) is >= 0.99, shuffled scores give an LDS near 0 (the mutation test),
and the subsets, statistics and the step-plan file behave."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_magic import Grid, tiny_model, tiny_query
from unlearnspec.magic import ReferenceRun, TrajectoryRecorder, magic_scores, plan_steps, sgd_train, trainable_params
from unlearnspec.magic.lds import (
    average_ranks,
    drop_set,
    dropped_mask,
    load_trajectory_plan,
    predicted_change,
    query_value,
    retrained_params,
    save_trajectory_plan,
    spearman,
    summarize,
)
from unlearnspec.spec.training import LdsSpec
from unlearnspec.train.loss import IGNORE_INDEX

N, S, VOCAB, STEPS, BATCH = 24, 8, 50, 12, 4


def grid() -> Grid:
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (N, S), generator=gen)
    mask = torch.ones_like(ids)
    mask[3, 5:] = 0
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return Grid(ids, mask, labels)


class Run:
    """A recorded SGD run, its exact scores and theta_0, at learning rate `lr`."""

    def __init__(self, lr: float):
        torch.set_num_threads(1)
        self.model = tiny_model()
        self.grid = grid()
        self.query = tiny_query(self.model)
        self.theta0 = {n: p.detach().clone() for n, p in trainable_params(self.model).items()}
        plan = plan_steps(N, STEPS, BATCH, lr, seed=7)
        recorder = TrajectoryRecorder(len(plan), "all")
        self.trajectory = sgd_train(
            self.model, self.grid, ReferenceRun(plan), recorder=recorder, use_replay_attention=True
        )
        self.final = {n: p.detach().clone() for n, p in trainable_params(self.model).items()}
        self.scores = magic_scores(self.model, self.grid, self.trajectory, self.query, dtype=None)
        self.weights = torch.ones(N, S, dtype=torch.float64)
        self.weights[self.grid.labels == IGNORE_INDEX] = 0

    def retrain(self, weights: torch.Tensor) -> float:
        theta0 = [self.theta0[n] for n in self.trajectory.param_names]
        params = retrained_params(self.model, self.grid, self.trajectory, theta0, weights)
        return query_value(self.model, self.query, params)

    def lds(self, spec: LdsSpec, scores: torch.Tensor) -> dict:
        reference = self.retrain(self.weights)
        actual, predicted = [], []
        for i in range(spec.subsets):
            mask = dropped_mask((N, S), drop_set(spec, self.weights, self.grid.labels, i), spec.unit)
            actual.append(self.retrain(self.weights.masked_fill(mask, 0)) - reference)
            predicted.append(predicted_change(scores, self.weights, mask))
        return summarize(actual, predicted, spec, 0)


@pytest.fixture(scope="module")
def linear() -> Run:
    return Run(lr=1e-3)


def test_retraining_replays_the_recorded_run(linear: Run) -> None:
    theta0 = [linear.theta0[n] for n in linear.trajectory.param_names]
    params = retrained_params(linear.model, linear.grid, linear.trajectory, theta0, linear.weights)
    for name, value in params.items():
        assert torch.allclose(value, linear.final[name], rtol=0, atol=1e-13), name
    dropped = linear.weights.clone()
    dropped[0] = 0
    moved = retrained_params(linear.model, linear.grid, linear.trajectory, theta0, dropped)
    assert max(float((moved[n] - params[n]).abs().max()) for n in params) > 1e-8  # the weights reach the steps


@pytest.mark.parametrize("unit", ["row", "token"])
def test_lds_in_a_linear_regime(linear: Run, unit: str) -> None:
    result = linear.lds(LdsSpec(subsets=20, fraction=0.1, unit=unit, seed=1), linear.scores)
    assert result["spearman"] >= 0.99, result
    assert 0.9 < result["scale_ratio"] < 1.1, result  # the first-order prediction has the right size
    assert result["spearman_ci95"][0] <= result["spearman"] <= result["spearman_ci95"][1]


def test_shuffled_scores_give_lds_near_zero(linear: Run) -> None:
    """The mutation test: scores permuted over the valid tokens keep their distribution, lose their meaning."""
    valid = linear.weights != 0
    gen = torch.Generator().manual_seed(11)
    values = linear.scores[valid]
    shuffled = torch.zeros_like(linear.scores)
    shuffled[valid] = values[torch.randperm(values.numel(), generator=gen)]
    spec = LdsSpec(subsets=40, fraction=0.1, unit="row", seed=2)
    assert abs(linear.lds(spec, shuffled)["spearman"]) < 0.35
    assert linear.lds(spec, linear.scores)["spearman"] >= 0.99  # the same subsets with the real scores


def test_drop_sets_are_deterministic_and_sized() -> None:
    g = grid()
    w = torch.ones(N, S)
    w[5] = 0  # a row with no weight is never a candidate
    spec = LdsSpec(subsets=5, fraction=0.1, unit="row", seed=3)
    a, b = drop_set(spec, w, g.labels, 2), drop_set(spec, w, g.labels, 2)
    assert torch.equal(a, b) and a.numel() == math.ceil(0.1 * (N - 1)) and 5 not in a.tolist()
    assert not torch.equal(a, drop_set(spec, w, g.labels, 3))
    tokens = drop_set(spec.model_copy(update={"unit": "token"}), w, g.labels, 0)
    mask = dropped_mask((N, S), tokens, "token")
    assert int(mask.sum()) == tokens.numel() and not mask[:, 0].any() and not mask[5].any()


def test_statistics() -> None:
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    out = summarize([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0], LdsSpec(subsets=5), 1)
    assert out["spearman"] == pytest.approx(1.0) and out["scale_ratio"] == pytest.approx(2.0)


def test_step_plan_round_trip(linear: Run, tmp_path) -> None:
    save_trajectory_plan(tmp_path, linear.trajectory)
    back = load_trajectory_plan(tmp_path)
    assert back.param_names == linear.trajectory.param_names and back.optimizer == linear.trajectory.optimizer
    assert [s.lr for s in back.steps] == [s.lr for s in linear.trajectory.steps]
    assert all(
        torch.equal(x, y)
        for s, t in zip(back.steps, linear.trajectory.steps)
        for x, y in zip(s.micro_batches, t.micro_batches)
    )


def test_unreadable_step_plan_is_a_user_error(tmp_path) -> None:
    from unlearnspec.errors import UserError

    (tmp_path / "trajectory.json").write_text('{"format": 1, "steps": 3}')
    with pytest.raises(UserError, match="trajectory.json"):
        load_trajectory_plan(tmp_path)
    with pytest.raises(UserError, match="no trajectory.json"):
        load_trajectory_plan(tmp_path / "missing")

"""Exactness of the MAGIC reverse pass in float64 on a tiny GPT-NeoX: against full autograd through
the unrolled run, central finite differences (with a mutation test proving their power), checkpoint
schedules, storage, micro-batch splits, zeros where no loss is, and the T=1 closed form."""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from unlearnspec.magic import (
    DiskStore,
    ReferenceRun,
    ReplayStats,
    TrajectoryRecorder,
    magic_scores,
    plan_steps,
    replay_mode,
    sgd_train,
    split_micro_batches,
    trainable_params,
    unrolled_query,
    unrolled_scores,
)
from unlearnspec.magic.query import QueryBatch, QueryLoss
from unlearnspec.magic.replay import forward_logits
from unlearnspec.train.loss import IGNORE_INDEX, token_nll, weighted_token_loss

N, S, VOCAB = 6, 8, 50
LR = 2.0  # large, so the Hessian term changes the scores by ~90% (asserted below)


@dataclass
class Grid:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def tiny_model(seed: int = 0) -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    return GPTNeoXForCausalLM(config).double()


def tiny_grid() -> Grid:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (N, S), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding
    mask[3, 3:] = 0
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[2, 4] = IGNORE_INDEX  # masked label inside a row
    labels[5, 1] = IGNORE_INDEX
    return Grid(ids, mask, labels)


def tiny_query(model: torch.nn.Module) -> QueryLoss:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 4:] = ids[0, 4:]
    labels[1, 6] = ids[1, 6]
    labels[2, 3:5] = ids[2, 3:5]
    batch = QueryBatch(ids, mask, labels, "tiny", "answer_continuation", 0, ("a", "b", "c"))
    return QueryLoss(model, batch, batch_size=2)  # two parts: exercises the batched gradient


class Setup:
    """A model at theta_0, the grid, a query and a step plan; `record` trains from theta_0."""

    def __init__(self, steps: int = 4, batch_size: int = 3, weight_decay: float | str = 0.0):
        self.model = tiny_model()
        self.grid = tiny_grid()
        self.query = tiny_query(self.model)
        self.theta0 = {n: p.detach().clone() for n, p in trainable_params(self.model).items()}
        self.plan = plan_steps(N, steps, batch_size, [LR * (1 - 0.1 * t) for t in range(steps)], seed=3)
        self.weight_decay: float | dict[str, float] = (
            hf_style_decay(self.theta0, 0.3) if weight_decay == "hf" else float(weight_decay)
        )

    def reset(self) -> None:
        with torch.no_grad():
            for name, p in trainable_params(self.model).items():
                p.copy_(self.theta0[name])

    def record(self, schedule: str = "all", store=None, plan=None):
        self.reset()
        plan = plan if plan is not None else self.plan
        recorder = TrajectoryRecorder(len(plan), schedule, store=store, weight_decay=self.weight_decay)  # type: ignore[arg-type]
        return sgd_train(
            self.model,
            self.grid,
            ReferenceRun(plan, weight_decay=self.weight_decay),
            recorder=recorder,
            use_replay_attention=True,
        )

    def scores(self, schedule: str = "all", store=None, plan=None, **kwargs) -> torch.Tensor:
        trajectory = self.record(schedule, store, plan)
        return magic_scores(self.model, self.grid, trajectory, self.query, dtype=None, **kwargs)

    def q_of_weights(self, weights: torch.Tensor) -> float:
        q = unrolled_query(
            self.model,
            self.grid,
            ReferenceRun(self.plan, weight_decay=self.weight_decay),
            self.query,
            self.theta0,
            weights,
        )
        return q.detach().item()


def hf_style_decay(params: dict[str, torch.Tensor], value: float) -> dict[str, float]:
    """Decay on matrices only, none on biases and LayerNorm weights (what the HF Trainer does)."""
    return {n: (value if p.dim() > 1 else 0.0) for n, p in params.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


@pytest.fixture(scope="module")
def exact(setup: Setup) -> torch.Tensor:
    return setup.scores("all")


@pytest.fixture(scope="module")
def reference(setup: Setup) -> torch.Tensor:
    return unrolled_scores(setup.model, setup.grid, ReferenceRun(setup.plan), setup.query, setup.theta0)


def test_matches_unrolled_autograd(exact: torch.Tensor, reference: torch.Tensor) -> None:
    assert exact.dtype == torch.float64
    assert rel_err(exact, reference) <= 1e-10


def test_hessian_term_matters(setup: Setup, reference: torch.Tensor) -> None:
    first_order = setup.scores("all", hessian=False)
    assert rel_err(first_order, reference) > 0.1


def _valid_tokens(grid: Grid) -> list[tuple[int, int]]:
    valid = grid.labels != IGNORE_INDEX
    valid[:, 0] = False
    return [(int(i), int(p)) for i, p in valid.nonzero()]


def finite_difference_errors(
    setup: Setup, scores_by_name: dict[str, torch.Tensor], h: float = 1e-5
) -> dict[str, float]:
    """Largest relative error of each score tensor against central differences of Q(w).

    Checks 5 single tokens (the largest |score| of the exact scores, so relative errors are meaningful)
    and 3 random directions over the valid tokens.
    """
    base = torch.ones(N, S, dtype=torch.float64)
    exact = scores_by_name["exact"]
    tokens = sorted(_valid_tokens(setup.grid), key=lambda ip: -abs(float(exact[ip])))[:5]
    gen = torch.Generator().manual_seed(4)
    valid = torch.zeros(N, S, dtype=torch.float64)
    for i, p in _valid_tokens(setup.grid):
        valid[i, p] = 1.0
    directions = [torch.randn(N, S, generator=gen, dtype=torch.float64) * valid for _ in range(3)]
    for i, p in tokens:
        e = torch.zeros(N, S, dtype=torch.float64)
        e[i, p] = 1.0
        directions.append(e)
    worst = dict.fromkeys(scores_by_name, 0.0)
    for u in directions:
        fd = (setup.q_of_weights(base + h * u) - setup.q_of_weights(base - h * u)) / (2 * h)
        for name, s in scores_by_name.items():
            predicted = float((s * u).sum())
            worst[name] = max(worst[name], abs(predicted - fd) / abs(fd))
    return worst


@pytest.mark.parametrize("weight_decay", [0.0, 0.3, "hf"])
def test_finite_differences_and_mutation(weight_decay: float | str) -> None:
    """The exact scores pass the FD check; the same check FAILS with the Hessian term removed."""
    setup = Setup(weight_decay=weight_decay)
    scores = {"exact": setup.scores("all"), "no_hessian": setup.scores("all", hessian=False)}
    errors = finite_difference_errors(setup, scores)
    assert errors["exact"] <= 1e-6, errors
    assert errors["no_hessian"] > 1e-2, f"mutation not detected: {errors}"


def test_weight_decay_changes_scores() -> None:
    plain, decayed = Setup(weight_decay=0.0).scores("all"), Setup(weight_decay=0.3).scores("all")
    per_param = Setup(weight_decay="hf")
    assert rel_err(decayed, plain) > 1e-3 and rel_err(per_param.scores("all"), decayed) > 1e-4
    reference = unrolled_scores(
        per_param.model,
        per_param.grid,
        ReferenceRun(per_param.plan, weight_decay=per_param.weight_decay),
        per_param.query,
        per_param.theta0,
    )
    assert rel_err(per_param.scores("sqrt"), reference) <= 1e-10


@pytest.mark.parametrize("steps", [5, 6])
def test_checkpoint_schedules_agree(steps: int) -> None:
    setup = Setup(steps=steps)
    results = {}
    for schedule in ("all", "sqrt", "log"):
        stats = ReplayStats()
        results[schedule] = setup.scores(schedule, stats=stats)
        assert stats.reverse_steps == steps
        if schedule != "all":
            assert stats.recomputed_steps > 0
    for schedule in ("sqrt", "log"):
        assert rel_err(results[schedule], results["all"]) <= 1e-12, schedule


def test_disk_store_matches_ram(setup: Setup, exact: torch.Tensor, tmp_path) -> None:
    for schedule in ("all", "sqrt"):
        store = DiskStore(tmp_path / schedule)
        scores = setup.scores(schedule, store=store)
        assert list((tmp_path / schedule).glob("state_*.safetensors"))
        assert not list((tmp_path / schedule).glob("*.tmp"))
        assert rel_err(scores, exact) <= 1e-12


def test_micro_batch_split_does_not_change_scores(setup: Setup, exact: torch.Tensor) -> None:
    for accum in (2, 3):
        split = split_micro_batches(setup.plan, accum)
        assert all(len(step.micro_batches) == accum for step in split)
        assert rel_err(setup.scores("sqrt", plan=split), exact) <= 1e-12


def test_zero_where_no_loss(exact: torch.Tensor, setup: Setup) -> None:
    no_loss = setup.grid.labels == IGNORE_INDEX
    no_loss[:, 0] = True
    assert torch.all(exact[no_loss] == 0)
    assert torch.all(exact[~no_loss] != 0)  # every trained token has some effect here


def test_default_output_is_float32(setup: Setup, exact: torch.Tensor) -> None:
    scores = magic_scores(setup.model, setup.grid, setup.record("all"), setup.query)
    assert scores.dtype == torch.float32 and scores.shape == (N, S)
    assert torch.allclose(scores.double(), exact, rtol=1e-6, atol=1e-9)


def test_single_step_closed_form() -> None:
    """T=1: s_{i,p} = -eta/D * <grad l_{i,p}(theta_0), grad Q(theta_1)>."""
    setup = Setup(steps=1, batch_size=4)
    scores = setup.scores("all")
    step = setup.plan[0]
    rows = torch.cat(step.micro_batches)
    denom = int((setup.grid.labels[rows][:, 1:] != IGNORE_INDEX).sum())
    names = list(setup.theta0)
    theta1 = {n: p.detach().clone() for n, p in trainable_params(setup.model).items()}  # after record()
    with replay_mode(setup.model):
        p1 = [theta1[n].requires_grad_() for n in names]
        grad_q = torch.autograd.grad(setup.query(dict(zip(names, p1))), p1)
        p0 = [setup.theta0[n].clone().requires_grad_() for n in names]
        logits = forward_logits(
            setup.model, dict(zip(names, p0)), setup.grid.input_ids[rows], setup.grid.attention_mask[rows]
        )
        nll = token_nll(logits, setup.grid.labels[rows])
        checked = 0
        for r, row in enumerate(rows.tolist()):
            for p in range(1, S):
                if setup.grid.labels[row, p] == IGNORE_INDEX:
                    continue
                grads = torch.autograd.grad(nll[r, p - 1], p0, retain_graph=True)
                expected = -step.lr / denom * sum(float((g * q).sum()) for g, q in zip(grads, grad_q))
                assert abs(float(scores[row, p]) - expected) <= 1e-10 * abs(expected)
                checked += 1
    untouched = [i for i in range(N) if i not in rows.tolist()]
    assert checked > 5 and untouched and torch.all(scores[untouched] == 0)


def test_token_nll_keeps_float64_and_dw_is_nll_over_d() -> None:
    """The one loss: d loss/d w = token_nll / D (column 0 never counts); float64 logits stay float64."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    labels[0, 3] = IGNORE_INDEX
    weights = torch.rand(2, 5, generator=gen, dtype=torch.float64).requires_grad_()
    loss = weighted_token_loss(logits, labels, weights, 7.0)
    (dw,) = torch.autograd.grad(loss, weights)
    assert torch.equal(dw[:, 0], torch.zeros(2, dtype=torch.float64))
    nll = token_nll(logits, labels)
    assert nll.dtype == torch.float64 and nll[0, 2] == 0
    expected = torch.nn.functional.cross_entropy(logits[1, 1], labels[1, 2])
    assert abs(float(nll[1, 1] - expected)) < 1e-15
    assert torch.allclose(dw[:, 1:], nll / 7.0, rtol=0, atol=1e-15)

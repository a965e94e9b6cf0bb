"""The unlearning objectives as pure losses: each against a case worked by hand from its paper's formula, NPO's
beta -> 0 limit (gradients), RMU's c = 0 / alpha = 0 case, and GradDiff against PyTorch's own cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unlearnspec.train.loss import normalizer_count, token_nll
from unlearnspec.train.objectives.base import selection, token_logprobs
from unlearnspec.train.objectives.grad_diff import grad_diff_loss
from unlearnspec.train.objectives.npo import active_rows, npo_loss, sequence_logprob
from unlearnspec.train.objectives.rmu import RetainActivations, control_vector, rmu_loss
from unlearnspec.train.objectives.simnpo import simnpo_loss

from .tiny import tiny_model, tiny_texts, tiny_tokenizer


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# --------------------------------------------------------------------------- GradDiff
def test_grad_diff_by_hand():
    # forget token CE [1.0, 2.0, 3.0] (targets 1..3), selection [_, 1, 1, 0]: ascent on 1.0 + 2.0 over D_f = 2 -> -1.5
    # retain token CE [0.5, 0.5, 1.0], D_r = 3 -> 2/3; alpha = 0.6 -> +0.4. Total -1.1.
    loss = grad_diff_loss(t([[1.0, 2.0, 3.0]]), t([[0.0, 1.0, 1.0, 0.0]]), t([[0.5, 0.5, 1.0]]), 0.6, t(2.0), t(3.0))
    assert float(loss) == pytest.approx(-1.1, abs=1e-12)


def test_grad_diff_is_minus_forget_ce_plus_alpha_retain_ce():
    """With every token selected and the `valid` normalizer: -CE(forget) + alpha CE(retain), F.cross_entropy's means."""
    g = torch.Generator().manual_seed(0)
    lf, lr = (
        torch.randn(3, 6, 11, generator=g, dtype=torch.float64),
        torch.randn(2, 6, 11, generator=g, dtype=torch.float64),
    )
    yf, yr = torch.randint(0, 11, (3, 6), generator=g), torch.randint(0, 11, (2, 6), generator=g)
    yf[0, 4:] = -100
    yr[1, 3:] = -100
    w = (yf != -100).double()
    w[:, 0] = 0
    ce_f = F.cross_entropy(lf[:, :-1].reshape(-1, 11), yf[:, 1:].reshape(-1), ignore_index=-100)
    ce_r = F.cross_entropy(lr[:, :-1].reshape(-1, 11), yr[:, 1:].reshape(-1), ignore_index=-100)
    d_f, d_r = normalizer_count(yf, w, "valid"), normalizer_count(yr, torch.ones_like(yr, dtype=torch.float64), "valid")
    loss = grad_diff_loss(token_nll(lf, yf), w, token_nll(lr, yr), 2.5, d_f.double(), d_r.double())
    assert float(loss) == pytest.approx(float(-ce_f + 2.5 * ce_r), rel=1e-12)


# --------------------------------------------------------------------------- NPO
def test_npo_by_hand():
    # beta 0.5; log pi = [-3, -1], log pi_ref = [-2, -2]: r = [-1, 1], -beta r = [0.5, -0.5].
    # log sigmoid(0.5) = -log(1 + e^-0.5) = -0.474077, log sigmoid(-0.5) = -log(1 + e^0.5) = -0.974077.
    # L = -(2/0.5) * (-0.474077 - 0.974077) / 2 = 2.896308.
    loss = npo_loss(t([-3.0, -1.0]), t([-2.0, -2.0]), 0.5, t(2.0))
    assert float(loss) == pytest.approx(2.896308, abs=1e-6)


def test_npo_sequence_logprob_weights_tokens_by_the_selection():
    # token log-probs [-1, -2, -4] (targets 1..3) with selection [_, 1, 0, 0.5] -> -1 + 0 - 2 = -3; row 2 selects nothing
    lp = t([[-1.0, -2.0, -4.0], [-1.0, -1.0, -1.0]])
    w = t([[0.0, 1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    assert sequence_logprob(lp, w).tolist() == [-3.0, 0.0]
    assert active_rows(w).tolist() == [True, False]


def _tiny_batch(dtype=torch.float64):
    from unlearnspec.data import build_grid

    grid = build_grid(tiny_texts(6, seed=4), tiny_tokenizer(), 16, "tiny")
    model = tiny_model(seed=3, dtype=dtype)
    return model, grid


def _npo_grad(model, grid, ref, beta):
    model.zero_grad()
    w = selection(grid.valid_targets.double(), grid.labels)
    lp = token_logprobs(model, grid.input_ids, grid.attention_mask, grid.labels, fused=False)
    rows = active_rows(w)
    npo_loss(sequence_logprob(lp, w)[rows], ref[rows], beta, rows.sum().double()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_npo_gradient_tends_to_gradient_ascent_as_beta_goes_to_zero():
    """dL/dlog pi_i = 2 sigmoid(beta r_i) / R -> 1/R: NPO's gradient -> (D/R) x gradient ascent's (token-mean CE over
    the D valid tokens), at a point where r != 0 (at r = 0 every beta gives the limit, so that would prove nothing)."""
    model, grid = _tiny_batch()
    w = grid.valid_targets.double()
    with torch.no_grad():
        lp = token_logprobs(model, grid.input_ids, grid.attention_mask, grid.labels, fused=False)
    ref = sequence_logprob(lp, w) + torch.linspace(-3.0, 3.0, lp.shape[0], dtype=torch.float64)  # r from +3 to -3
    model.zero_grad()
    nll = token_nll(model(input_ids=grid.input_ids, attention_mask=grid.attention_mask).logits, grid.labels)
    d = normalizer_count(grid.labels, w, "valid").double()
    (-(w[:, 1:] * nll).sum() / d).backward()  # gradient ascent, as `weighted` with w = -1 and normalizer valid
    ga = torch.cat([p.grad.flatten() for p in model.parameters()]) * d / active_rows(w).sum()
    errors = {
        beta: float((_npo_grad(model, grid, ref, beta) - ga).norm() / ga.norm()) for beta in (1.0, 1e-2, 1e-4, 1e-6)
    }
    print(
        "NPO vs (D/R) x gradient ascent, relative gradient error by beta:", {k: f"{v:.2e}" for k, v in errors.items()}
    )
    assert errors[1.0] > 0.05  # far from the limit at beta = 1: the comparison can fail
    assert errors[1e-2] < errors[1.0] and errors[1e-4] < errors[1e-2]
    assert errors[1e-6] < 1e-5


# --------------------------------------------------------------------------- SimNPO
def test_simnpo_by_hand():
    # beta 2, gamma 0.5; rows: log pi -6 over |y| = 3, log pi -2 over |y| = 4.
    # args: -(2/3)(-6) - 0.5 = 3.5 and -(2/4)(-2) - 0.5 = 0.5; log sigmoid: -log(1 + e^-3.5) = -0.0297509,
    # -log(1 + e^-0.5) = -0.4740770. L = -(2/2) * (-0.0297509 - 0.4740770) / 2 = 0.2519140.
    loss = simnpo_loss(t([-6.0, -2.0]), t([3.0, 4.0]), 2.0, 0.5, t(2.0))
    assert float(loss) == pytest.approx(0.2519140, abs=1e-6)


def test_simnpo_is_length_normalised():
    """Doubling a row (twice the tokens, twice the log-likelihood) leaves its term unchanged: |y| divides."""
    one = simnpo_loss(t([-5.0]), t([4.0]), 1.5, 0.0, t(1.0))
    two = simnpo_loss(t([-10.0]), t([8.0]), 1.5, 0.0, t(1.0))
    assert float(one) == pytest.approx(float(two), rel=1e-14)
    assert float(one) == pytest.approx(-(2 / 1.5) * math.log(1 / (1 + math.exp(-1.5 * 5 / 4))), rel=1e-12)


# --------------------------------------------------------------------------- RMU
def test_rmu_by_hand():
    # forget h at positions 0..2 = (9,9), (1,2), (3,5); selection [0, 1, 1]; c*u = (1, 1):
    # ||(0,1)||^2 = 1, ||(2,4)||^2 = 20 -> 21 / D_f = 2 -> 10.5.
    # retain h (0,0), (1,1), (2,2) vs frozen (5,5), (1,0), (2,4), mask [0, 1, 1]: 1 + 4 = 5 / D_r = 2 -> 2.5; alpha 2 -> 5.
    retain = RetainActivations(t([[[0, 0], [1, 1], [2, 2]]]), t([[[5, 5], [1, 0], [2, 4]]]), t([[0, 1, 1]]), t(2.0))
    loss = rmu_loss(t([[[9, 9], [1, 2], [3, 5]]]), t([[0, 1, 1]]), t([1, 1]), t(2.0), retain, 2.0)
    assert float(loss) == pytest.approx(15.5, abs=1e-12)


def test_rmu_with_c_zero_and_alpha_zero_is_the_squared_norm_of_the_activations():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    w = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.float64)
    retain = RetainActivations(h, h + 1, w, w.sum())
    loss = rmu_loss(h, w, control_vector(7, 0.0, seed=3).double(), w.sum(), retain, 0.0)
    expected = sum(float(h[b, s].pow(2).sum()) for b in range(2) for s in range(5) if w[b, s]) / float(w.sum())
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_rmu_control_vector_is_seeded_unit_length_and_non_negative():
    u = control_vector(64, 1.0, seed=7)
    assert float(u.norm()) == pytest.approx(1.0, abs=1e-6) and bool((u >= 0).all())
    assert torch.equal(u, control_vector(64, 1.0, seed=7)) and not torch.equal(u, control_vector(64, 1.0, seed=8))
    assert float(control_vector(64, 6.5, seed=7).norm()) == pytest.approx(6.5, rel=1e-6)


def test_selection_reads_magnitudes_at_targets_only():
    labels = torch.tensor([[5, 6, -100, 7]])
    w = torch.tensor([[3.0, -1.0, 2.0, 0.5]])  # column 0 and the ignored label never count; signs are dropped
    assert selection(w, labels).tolist() == [[0.0, 1.0, 0.0, 0.5]]

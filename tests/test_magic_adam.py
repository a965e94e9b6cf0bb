"""Exactness of the MAGIC reverse pass through Adam and AdamW (and gradient clipping) in float64 on a
tiny GPT-NeoX, warmup + cosine LR, per-parameter weight decay: against an independent functional Adam
unrolled through autograd, against Richardson-extrapolated central finite differences (with mutation
tests proving their power), across checkpoint schedules, storage and micro-batch splits."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from unlearnspec.magic import (
    DiskStore,
    ReferenceRun,
    ReplayStats,
    TrajectoryRecorder,
    magic_scores,
    plan_steps,
    sgd_train,
    split_micro_batches,
    trainable_params,
)
from unlearnspec.magic.adam import AdamHyper, AdamState, AdamStep, adam_adjoint, adam_step
from unlearnspec.magic.optimizers import OptimizerConfig
from unlearnspec.magic.reverse import _Replay
from unlearnspec.magic.trajectory import decay_list, state_key
from unlearnspec.train.loss import IGNORE_INDEX

from .adam_oracle import adam_unrolled_query, adam_unrolled_scores, safe_sqrt
from .test_magic import N, S, _valid_tokens, hf_style_decay, one_thread, rel_err, tiny_grid, tiny_model, tiny_query  # noqa: F401

LR = 1e-2  # Adam moves every parameter by ~lr per step: large enough that the Hessian term matters (asserted)


def warmup_cosine(lr: float, steps: int, warmup: int = 1) -> list[float]:
    """HF's cosine schedule with linear warmup (lr 0 at step 0)."""
    out = []
    for t in range(steps):
        if t < warmup:
            out.append(lr * t / warmup)
        else:
            out.append(lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup))))
    return out


class AdamSetup:
    """A model at theta_0, the grid, a query and a plan trained with stock torch.optim.Adam(W)."""

    def __init__(
        self,
        name: str = "adamw",
        steps: int = 5,
        batch_size: int = 3,
        decay: float = 0.1,
        max_grad_norm: float | None = None,
        eps: float = 1e-8,
    ):
        self.model = tiny_model()
        self.grid = tiny_grid()
        self.query = tiny_query(self.model)
        self.theta0 = {n: p.detach().clone() for n, p in trainable_params(self.model).items()}
        self.plan = plan_steps(N, steps, batch_size, warmup_cosine(LR, steps), seed=3)
        self.weight_decay = hf_style_decay(self.theta0, decay)
        self.decays = decay_list(self.weight_decay, list(self.theta0))
        self.config = OptimizerConfig(name, (0.9, 0.999), eps, max_grad_norm=max_grad_norm)  # type: ignore[arg-type]

    def record(self, schedule: str = "all", store=None, plan=None):
        with torch.no_grad():
            for name, p in trainable_params(self.model).items():
                p.copy_(self.theta0[name])
        plan = plan if plan is not None else self.plan
        recorder = TrajectoryRecorder(
            len(plan), schedule, store=store, weight_decay=self.weight_decay, optimizer=self.config
        )  # type: ignore[arg-type]
        return sgd_train(
            self.model,
            self.grid,
            ReferenceRun(plan, weight_decay=self.weight_decay, optimizer=self.config),
            recorder=recorder,
            use_replay_attention=True,
        )

    def scores(self, schedule: str = "all", store=None, plan=None, **kwargs) -> torch.Tensor:
        return magic_scores(self.model, self.grid, self.record(schedule, store, plan), self.query, dtype=None, **kwargs)

    def oracle_kwargs(self) -> dict:
        c = self.config
        return dict(name=c.name, betas=c.betas, eps=c.eps, decays=self.decays, max_grad_norm=c.max_grad_norm)

    def oracle(self) -> torch.Tensor:
        return adam_unrolled_scores(self.model, self.grid, self.plan, self.query, self.theta0, **self.oracle_kwargs())

    def q_of_weights(self, weights: torch.Tensor) -> float:
        q = adam_unrolled_query(
            self.model, self.grid, self.plan, self.query, self.theta0, weights, **self.oracle_kwargs()
        )
        return q.detach().item()


def richardson(f, u: torch.Tensor, base: torch.Tensor, hs=tuple(1e-3 / 2**i for i in range(10))) -> float:
    """d/de f(base + e u) at 0: central differences at each h, Richardson-extrapolated over h and h/2
    (O(h^4)); the step is searched: the estimate that agrees best with its successor wins. Adam's
    sign-like update is strongly curved, so a single fixed step is not trustworthy (NOTES.md)."""
    central = [(f(base + h * u) - f(base - h * u)) / (2 * h) for h in hs]
    extrap = [(4 * b - a) / 3 for a, b in zip(central, central[1:])]
    gaps = [abs(a - b) for a, b in zip(extrap, extrap[1:])]
    return extrap[min(range(len(gaps)), key=gaps.__getitem__)]


def fd_errors(setup: AdamSetup, scores_by_name: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest relative error of each score tensor against finite differences of Q(w), on the 5 tokens
    of largest |score| and 3 random directions over the valid tokens."""
    base = torch.ones(N, S, dtype=torch.float64)
    exact = scores_by_name["exact"]
    valid_list = _valid_tokens(setup.grid)
    tokens = sorted(valid_list, key=lambda ip: -abs(float(exact[ip])))[:5]
    valid = torch.zeros(N, S, dtype=torch.float64)
    for i, p in valid_list:
        valid[i, p] = 1.0
    gen = torch.Generator().manual_seed(4)
    directions = [torch.randn(N, S, generator=gen, dtype=torch.float64) * valid for _ in range(3)]
    for i, p in tokens:
        e = torch.zeros(N, S, dtype=torch.float64)
        e[i, p] = 1.0
        directions.append(e)
    worst = dict.fromkeys(scores_by_name, 0.0)
    for u in directions:
        fd = richardson(setup.q_of_weights, u, base)
        for name, s in scores_by_name.items():
            worst[name] = max(worst[name], abs(float((s * u).sum()) - fd) / abs(fd))
    return worst


# --------------------------------------------------------------------------- one step, in isolation
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_one_step_adjoint_equals_autograd_including_zero_second_moments(name: str) -> None:
    """adam_adjoint is the VJP of one textbook Adam step, also where v' = 0 (never-seen rows)."""
    gen = torch.Generator().manual_seed(0)
    shape = (5, 4)
    theta = torch.randn(shape, generator=gen, dtype=torch.float64)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64) * 1e-3
    m = torch.randn(shape, generator=gen, dtype=torch.float64) * 1e-3
    v = torch.rand(shape, generator=gen, dtype=torch.float64) * 1e-6
    grad[0], m[0], v[0] = 0.0, 0.0, 0.0  # a row no gradient ever reached: v' = 0
    bars = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3)]
    hyper, lr, k, wd, (b1, b2) = AdamHyper((0.9, 0.999), 1e-8, decoupled=name == "adamw"), 0.01, 3, 0.1, (0.9, 0.999)

    inputs = [x.clone().requires_grad_() for x in (theta, m, v, grad)]
    p, mi, vi, g = inputs
    if name == "adam":
        g = g + wd * p
    else:
        p = p * (1 - lr * wd)
    mi = b1 * mi + (1 - b1) * g
    vi = b2 * vi + (1 - b2) * g * g
    out = p - lr * (mi / (1 - b1**k)) / (safe_sqrt(vi / (1 - b2**k)) + 1e-8)
    expected = torch.autograd.grad([out, mi, vi], inputs, grad_outputs=bars)

    step = AdamStep(lr, k, [wd], hyper)
    g_bar, bar = adam_adjoint(AdamState([theta], [m], [v]), [grad], step, AdamState(*([b] for b in bars)))
    for got, want in zip(
        (bar.theta[0], bar.m[0], bar.v[0], g_bar[0]), (expected[0], expected[1], expected[2], expected[3])
    ):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-300)
    new = adam_step(AdamState([theta], [m], [v]), [grad], step)
    assert bool((new.v[0][0] == 0).all()) == (name == "adamw")  # Adam's L2 term makes g' nonzero
    torch.testing.assert_close(new.theta[0], out.detach(), rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------- exactness through T steps
@pytest.fixture(scope="module", params=["adam", "adamw"])
def adam_case(request):
    setup = AdamSetup(request.param, decay=0.05 if request.param == "adam" else 0.1)
    return setup, setup.scores("all"), setup.oracle()


def test_matches_independent_unrolled_adam(adam_case) -> None:
    setup, exact, oracle = adam_case
    assert exact.dtype == torch.float64 and torch.isfinite(exact).all()
    assert rel_err(exact, oracle) <= 1e-10
    assert setup.plan[0].lr == 0.0 and len({s.lr for s in setup.plan}) == len(setup.plan)  # warmup + cosine


def test_second_moment_trap_is_exercised(adam_case) -> None:
    """AdamW leaves v = 0 on embedding rows of tokens never trained on; the scores stay finite there."""
    setup, exact, _ = adam_case
    trajectory = setup.record("all")
    last = trajectory.store.get(trajectory.total_steps - 1)
    v = last[state_key("exp_avg_sq", "gpt_neox.embed_in.weight")]
    zero_rows = int((v == 0).all(dim=1).sum())
    assert (zero_rows > 0) == (setup.config.name == "adamw")
    assert torch.isfinite(exact).all()


def test_hessian_term_matters(adam_case) -> None:
    setup, exact, oracle = adam_case
    assert rel_err(setup.scores("all", hessian=False), oracle) > 0.1


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_finite_differences_and_second_moment_mutation(name: str) -> None:
    """Exact scores pass finite differences; dropping the v-adjoint (V) fails the same check."""
    setup = AdamSetup(name, steps=4, decay=0.05 if name == "adam" else 0.1)
    scores = {"exact": setup.scores("all"), "no_v_adjoint": setup.scores("all", second_moment=False)}
    errors = fd_errors(setup, scores)
    assert errors["exact"] <= 1e-6, errors
    assert errors["no_v_adjoint"] > 1e-2, f"mutation not detected: {errors}"


@pytest.mark.parametrize("name,steps", [("adamw", 5), ("adam", 6)])
def test_checkpoint_schedules_and_storage_agree(name: str, steps: int, tmp_path) -> None:
    setup = AdamSetup(name, steps=steps)
    results, stats = {}, {}
    for schedule in ("all", "sqrt", "log"):
        stats[schedule] = ReplayStats()
        results[schedule] = setup.scores(schedule, stats=stats[schedule])
        assert stats[schedule].reverse_steps == steps
    assert stats["sqrt"].recomputed_steps > 0 and stats["log"].recomputed_steps > 0
    for schedule in ("sqrt", "log"):
        assert rel_err(results[schedule], results["all"]) <= 1e-12, schedule
    disk = setup.scores("sqrt", store=DiskStore(tmp_path / "states"))
    assert rel_err(disk, results["all"]) <= 1e-12
    keys = setup.record("sqrt", store=DiskStore(tmp_path / "keys")).store.get(0)
    assert {k.split("/")[0] for k in keys if "/" in k} == {"exp_avg", "exp_avg_sq"}
    assert len(keys) == 3 * len(setup.theta0)  # theta, m, v: three copies where SGD keeps one
    assert stats["all"].peak_state_copies == 3 * (steps + 1)


def test_micro_batch_split_does_not_change_scores(adam_case) -> None:
    setup, exact, _ = adam_case
    for accum in (2, 3):
        split = split_micro_batches(setup.plan, accum)
        assert all(len(step.micro_batches) == accum for step in split)
        assert rel_err(setup.scores("all", plan=split), exact) <= 1e-12
        assert rel_err(setup.scores("sqrt", plan=split), exact) <= 1e-12


def test_replay_reproduces_torch_adam(adam_case) -> None:
    """The replay's Adam steps reproduce torch.optim's parameters and moments from theta_0."""
    setup, _, _ = adam_case
    trajectory = setup.record("all")
    replay = _Replay(setup.model, setup.grid, trajectory, hessian=True, stats=ReplayStats())
    state = replay.load(0)
    from unlearnspec.magic.attention import replay_mode

    with replay_mode(setup.model):
        for t in range(trajectory.total_steps):
            if t:
                for ours, theirs in zip(state, replay.load(t)):  # theta, m, v: normwise over all parameters
                    assert rel_err(_flat(ours), _flat(theirs)) <= 1e-12
            state = replay.step(state, t)
    final = trajectory.store.get(trajectory.total_steps)
    assert rel_err(_flat(state[0]), _flat([final[n] for n in trajectory.param_names])) <= 1e-12


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in tensors])


def test_zero_where_no_loss(adam_case) -> None:
    setup, exact, _ = adam_case
    no_loss = setup.grid.labels == IGNORE_INDEX
    no_loss[:, 0] = True
    assert torch.all(exact[no_loss] == 0)
    assert torch.all(exact[~no_loss] != 0)


# --------------------------------------------------------------------------- gradient clipping
def _clipping_setup(name: str) -> AdamSetup:
    """max_grad_norm between the step gradients' norms, so some steps clip and some do not."""
    setup = AdamSetup(name, steps=4)
    norms = []
    trajectory = setup.record("all")
    replay = _Replay(setup.model, setup.grid, trajectory, hessian=True, stats=ReplayStats())
    from unlearnspec.magic.attention import replay_mode

    with replay_mode(setup.model):
        for t in range(trajectory.total_steps):
            g = replay.gradient(replay.load(t)[0], t)
            norms.append(float(torch.sqrt(sum((x * x).sum() for x in g))))
    tau = sorted(norms)[len(norms) // 2]
    tau = tau * 0.97 if min(abs(n - tau * 0.97) for n in norms) > 1e-3 * tau else tau * 0.9
    return AdamSetup(name, steps=4, max_grad_norm=tau)


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_clipping_matches_oracle_and_finite_differences(name: str, monkeypatch) -> None:
    setup = _clipping_setup(name)
    exact = setup.scores("all")
    assert rel_err(exact, setup.oracle()) <= 1e-10
    assert rel_err(setup.scores("log"), exact) <= 1e-12
    import unlearnspec.magic.reverse as reverse

    monkeypatch.setattr(
        reverse, "clip_adjoint", lambda grad, g_bar, max_norm, reduce=None: g_bar
    )  # mutation: ignore the norm's derivative
    mutated = setup.scores("all")
    monkeypatch.undo()
    errors = fd_errors(setup, {"exact": exact, "no_clip_adjoint": mutated})
    assert errors["exact"] <= 1e-6, errors
    assert errors["no_clip_adjoint"] > 1e-3, f"mutation not detected: {errors}"


# --------------------------------------------------------------------------- rounding diagnostics
def test_rounding_diagnostics_and_warning(monkeypatch) -> None:
    """SGD's adjoint gain is exactly its largest lr; Adam's counts only coordinates a gradient reached
    (never-seen rows carry g_bar ~ lr/eps but touch nothing); above the threshold magic_scores warns."""
    from unlearnspec.magic import reverse

    from .test_magic import Setup

    sgd = Setup(steps=4)
    stats = ReplayStats()
    sgd.scores("all", stats=stats)
    assert stats.adjoint_gain == pytest.approx(max(s.lr for s in sgd.plan), rel=1e-12)
    assert stats.adjoint_growth >= 1.0 and stats.unit_roundoff == 2.0**-53
    setup = AdamSetup("adamw")
    stats = ReplayStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float64: no warning
        setup.scores("all", stats=stats)
    assert 0 < stats.adjoint_gain < 1e3 < LR / setup.config.eps  # untouched rows are left out
    monkeypatch.setattr(reverse, "ROUNDING_RISK_WARN", stats.rounding_risk / 2)
    with pytest.warns(UserWarning, match="Raise training.optimizer.eps"):
        setup.scores("all")


def test_sidecar_names_the_adam_regime(tmp_path) -> None:
    import json

    from unlearnspec.magic import ScoreProvenance, write_scores

    setup = AdamSetup("adamw", steps=3, max_grad_norm=1.0)
    trajectory = setup.record("sqrt")
    scores = magic_scores(setup.model, setup.grid, trajectory, setup.query)
    paths = write_scores(
        tmp_path,
        scores,
        trajectory,
        ScoreProvenance("f", {"task": "t", "loss": "answer_continuation", "n_questions": 3}, "float64"),
    )
    meta = json.loads(paths["sidecar"].read_text())["optimizer"]
    assert (
        meta["name"] == "adamw"
        and meta["betas"] == [0.9, 0.999]
        and meta["eps"] == 1e-8
        and meta["max_grad_norm"] == 1.0
    )
    assert meta["weight_decay"]["values"] == [0.0, 0.1] and "momentum" not in meta


@pytest.mark.slow
def test_fixed_adamw_score_spec_runs_on_the_toy_world(toy_world, tmp_path) -> None:
    """`unlearnspec run specs/fixed_adamw/magic_wmdp.yaml --toy`: AdamW + cosine + warmup + clipping end to end."""
    import json
    import os
    import subprocess
    import sys

    from .conftest import REPO

    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        UNLEARNSPEC_CACHE=str(toy_world.root.parents[1]),
    )
    out = tmp_path / "scores"
    # 320 -> 80 toy rows, 40 -> 10 steps (the spec's epochs), 5 LDS subsets: the regime's code path is the point,
    # not the toy world's numbers (suite time, issue 23; the full spec ran 31 steps over 250 rows here).
    small = ["--set", "data.select.count=320", "--set", "training.max_steps=40", "--set", "magic.lds.subsets=5"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unlearnspec",
            "run",
            "specs/fixed_adamw/magic_wmdp.yaml",
            "--toy",
            "--out",
            str(out),
            *small,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    side = json.loads((out / "scores.json").read_text())
    assert side["optimizer"]["name"] == "adamw" and side["optimizer"]["max_grad_norm"] == 1.0
    assert side["lr_schedule"]["first"] == 0.0 and side["steps"] == 10 and side["checkpoints"] == "sqrt"
    assert 0 < side["reverse_pass"]["rounding_risk"] < 1e-4  # below the warning threshold in this regime
    assert side["lds"]["subsets"] == 5
    scores = torch.load(out / "per_token_scores.pt", weights_only=True)
    assert scores.shape == (80, 64) and torch.isfinite(scores).all() and scores.abs().max() > 0

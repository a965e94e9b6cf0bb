"""MagicCallback inside the real WeightedSFTTrainer: the recorded trajectory is the run that happened,
and the scores equal autograd through that run (float64, shuffled batches, accumulation, warmup+decay),
for SGD and for AdamW with HF's weight-decay groups and gradient clipping."""

from __future__ import annotations

import pytest
import torch

from unlearnspec.data import build_grid
from unlearnspec.errors import UserError
from unlearnspec.magic import (
    ReferenceRun,
    ReplayStats,
    magic_scores,
    register_replay_attention,
    replay_mode,
    sgd_train,
    unrolled_scores,
)
from unlearnspec.magic.callback import MagicCallback
from unlearnspec.magic.reverse import _Replay
from unlearnspec.spec import TrainingSpec
from unlearnspec.train.trainer import (
    LossSetup,
    WeightedSFTTrainer,
    build_optimizer,
    build_scheduler,
    decay_parameter_names,
    grid_dataset,
    sft_config,
)

from .adam_oracle import adam_unrolled_scores
from .tiny import tiny_model, tiny_texts, tiny_tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _setup(tmp_path, checkpoints="all", steps=4, **training):
    grid = build_grid(tiny_texts(8, seed=5), tiny_tokenizer(), 10, "tiny")
    fields = dict(
        optimizer={"name": "sgd", "weight_decay": 0.05},
        lr=0.8,
        batch_size=4,
        micro_batch_size=2,
        max_steps=steps,
        schedule="linear",
        warmup_steps=1,
        shuffle=True,
        seed=3,
    )
    spec = TrainingSpec.model_validate({**fields, **training})
    model = tiny_model(layers=2, hidden=16, heads=2, seed=7, dtype=torch.float64, attn=register_replay_attention())
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(spec, model, spec.lrs[0])
    sched = build_scheduler(spec, opt, steps)
    cb = MagicCallback(steps, checkpoints)
    trainer = WeightedSFTTrainer(
        model=model,
        args=sft_config(spec, spec.lrs[0], tmp_path, 8),
        train_dataset=grid_dataset(grid, grid.valid_targets.double()),
        processing_class=tiny_tokenizer(),
        optimizers=(opt, sched),
        callbacks=[cb],
        loss=LossSetup(normalizer="valid", fused_head=False),
    )
    cb.attach(trainer)
    return grid, model, theta0, trainer, cb


def _query(model):
    ids = torch.tensor([[5, 9, 14, 3, 7, 2]])

    def q(params):
        logits = torch.func.functional_call(model, params, (ids,), {"use_cache": False}).logits
        return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])

    return q


def test_recorded_trajectory_is_the_run_that_happened(tmp_path):
    grid, model, theta0, trainer, cb = _setup(tmp_path)
    trainer.train()
    traj = cb.trajectory
    assert traj.total_steps == 4 and all(len(s.micro_batches) == 2 for s in traj.steps)
    # linear warmup (1 step) then linear decay to 0 over 4 steps
    assert traj.lrs == pytest.approx([0.0, 0.8, 0.8 * 2 / 3, 0.8 / 3])
    rows = torch.cat([torch.cat(s.micro_batches) for s in traj.steps[:2]]).tolist()
    assert sorted(rows) == list(range(8)) and rows != list(range(8))  # one shuffled epoch
    replay = tiny_model(layers=2, hidden=16, heads=2, seed=7, dtype=torch.float64)
    replay.load_state_dict(theta0)
    assert traj.weight_decay == {n: (0.05 if p.dim() > 1 else 0.0) for n, p in theta0.items()}  # HF's groups
    sgd_train(replay, grid, ReferenceRun(traj.steps, weight_decay=traj.weight_decay), use_replay_attention=True)
    for name, p in replay.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", ["all", "sqrt"])
def test_trainer_scores_equal_unrolled_autograd(tmp_path, schedule):
    grid, model, theta0, trainer, cb = _setup(tmp_path, schedule)
    trainer.train()
    query = _query(model)
    scores = magic_scores(model, grid, cb.trajectory, query, dtype=None)
    reference = tiny_model(
        layers=2, hidden=16, heads=2, seed=7, dtype=torch.float64
    )  # not a deepcopy: TRL patched forward
    expected = unrolled_scores(
        reference,
        grid,
        ReferenceRun(cb.trajectory.steps, weight_decay=cb.trajectory.weight_decay),
        _query(reference),
        theta0,
    )
    rel = float((scores - expected).norm() / expected.norm())
    assert rel <= 1e-10, rel
    assert float(expected.abs().max()) > 0


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_adamw_trainer_replay_and_scores_equal_unrolled_oracle(tmp_path, max_grad_norm):
    """AdamW through the real trainer (shuffled, accumulation 2, warmup + cosine, decay on matrices only,
    optionally clipping): the replay's Adam steps reproduce the trained parameters, and the scores
    equal autograd through an independent functional AdamW to 1e-10."""
    steps = 5
    grid, model, theta0, trainer, cb = _setup(
        tmp_path,
        "sqrt",
        steps=steps,
        optimizer={"name": "adamw", "weight_decay": 0.1, "betas": [0.9, 0.99], "eps": 1e-8},
        lr=0.01,
        schedule="cosine",
        max_grad_norm=max_grad_norm,
    )
    trainer.train()
    traj = cb.trajectory
    assert (
        traj.optimizer.name == "adamw"
        and traj.optimizer.betas == (0.9, 0.99)
        and traj.optimizer.max_grad_norm == max_grad_norm
    )
    assert traj.lrs[0] == 0.0 and len(set(traj.lrs)) == steps
    assert all(len(s.micro_batches) == 2 for s in traj.steps)
    decayed = decay_parameter_names(model)
    assert traj.weight_decay == {n: (0.1 if n in decayed else 0.0) for n in theta0}
    assert any("layernorm" in n or "bias" in n for n in theta0 if n not in decayed)
    # the replay's Adam arithmetic reproduces the trainer's run from theta_0 and zero moments
    replay = _Replay(model, grid, traj, hessian=True, stats=ReplayStats())
    state = replay.load(0)
    with replay_mode(model):
        for t in range(steps):
            state = replay.step(state, t)
    trained = dict(model.named_parameters())
    flat = lambda xs: torch.cat([x.reshape(-1) for x in xs])  # noqa: E731
    want = flat([trained[n].detach() for n in traj.param_names])
    assert float((flat(state[0]) - want).norm() / want.norm()) <= 1e-12
    if max_grad_norm is not None:
        norms = [float(torch.sqrt(sum((g * g).sum() for g in replay.gradient(replay.load(t)[0], t)))) for t in (0,)]
        assert norms[0] > max_grad_norm  # clipping was active
    scores = magic_scores(model, grid, traj, _query(model), dtype=None)
    reference = tiny_model(layers=2, hidden=16, heads=2, seed=7, dtype=torch.float64)
    expected = adam_unrolled_scores(
        reference,
        grid,
        traj.steps,
        _query(reference),
        theta0,
        name="adamw",
        betas=(0.9, 0.99),
        eps=1e-8,
        decays=traj.decays(),
        max_grad_norm=max_grad_norm,
    )
    rel = float((scores - expected).norm() / expected.norm())
    assert rel <= 1e-10, rel
    assert float(expected.abs().max()) > 0


def test_build_optimizer_groups_match_hf_for_modules_and_bare_parameters():
    spec = TrainingSpec.model_validate(
        dict(optimizer={"name": "adamw", "weight_decay": 0.1}, lr=0.1, batch_size=2, max_steps=2)
    )
    model = tiny_model()
    by_name = build_optimizer(spec, model, 0.1)
    by_list = build_optimizer(spec, list(model.parameters()), 0.1)
    for opt in (by_name, by_list):
        groups = [({id(p) for p in g["params"]}, g["weight_decay"]) for g in opt.param_groups]
        decayed = {id(p) for n, p in model.named_parameters() if n in decay_parameter_names(model)}
        assert groups == [(decayed, 0.1), ({id(p) for p in model.parameters()} - decayed, 0.0)]


def test_callback_refuses_momentum_and_amsgrad_before_training(tmp_path):
    grid = build_grid(tiny_texts(4), tiny_tokenizer(), 8, "tiny")
    spec = TrainingSpec.model_validate(dict(lr=0.1, batch_size=2, max_steps=2, optimizer={"name": "sgd"}))
    for make, match in (
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "momentum"),
        (lambda ps: torch.optim.AdamW(ps, lr=0.1, amsgrad=True), "amsgrad"),
    ):
        model = tiny_model()
        opt = make(model.parameters())
        cb = MagicCallback(2, "all")
        trainer = WeightedSFTTrainer(
            model=model,
            args=sft_config(spec, 0.1, tmp_path, 4),
            train_dataset=grid_dataset(grid, grid.valid_targets.float()),
            processing_class=tiny_tokenizer(),
            optimizers=(opt, build_scheduler(spec, opt, 2)),
            callbacks=[cb],
        )
        cb.attach(trainer)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with pytest.raises(UserError, match=match):
            trainer.train()
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

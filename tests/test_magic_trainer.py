"""MagicCallback inside the real WeightedSFTTrainer: the recorded trajectory is the run that happened,
and the scores equal autograd through that run (float64, shuffled batches, accumulation, warmup+decay)."""

from __future__ import annotations

import pytest
import torch

from unlearnspec.data import build_grid
from unlearnspec.errors import UserError
from unlearnspec.magic import magic_scores, register_replay_attention, sgd_train, unrolled_scores
from unlearnspec.magic.callback import MagicCallback
from unlearnspec.spec import TrainingSpec
from unlearnspec.train.trainer import WeightedSFTTrainer, build_optimizer, build_scheduler, grid_dataset, sft_config

from .tiny import tiny_model, tiny_texts, tiny_tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _setup(tmp_path, schedule="all", **training):
    grid = build_grid(tiny_texts(8, seed=5), tiny_tokenizer(), 10, "tiny")
    spec = TrainingSpec.model_validate(dict(
        optimizer={"name": "sgd", "weight_decay": 0.05}, lr=0.8, batch_size=2, grad_accum=2, max_steps=4,
        schedule="linear", warmup_steps=1, shuffle=True, seed=3, **training))
    model = tiny_model(layers=2, hidden=16, heads=2, seed=7, dtype=torch.float64, attn=register_replay_attention())
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(spec, list(model.parameters()), spec.lrs[0])
    sched = build_scheduler(spec, opt, 4)
    cb = MagicCallback(4, schedule)
    trainer = WeightedSFTTrainer(model=model, args=sft_config(spec, spec.lrs[0], tmp_path, 8), train_dataset=grid_dataset(grid, grid.valid_targets.double()),
                                 processing_class=tiny_tokenizer(), optimizers=(opt, sched), callbacks=[cb], normalizer="valid",
                                 fused_head=False)
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
    sgd_train(replay, grid, traj.steps, weight_decay=0.05, use_replay_attention=True)
    for name, p in replay.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", ["all", "sqrt"])
def test_trainer_scores_equal_unrolled_autograd(tmp_path, schedule):
    grid, model, theta0, trainer, cb = _setup(tmp_path, schedule)
    trainer.train()
    query = _query(model)
    scores = magic_scores(model, grid, cb.trajectory, query, dtype=None)
    reference = tiny_model(layers=2, hidden=16, heads=2, seed=7, dtype=torch.float64)  # not a deepcopy: TRL patched forward
    expected = unrolled_scores(reference, grid, cb.trajectory.steps, _query(reference), theta0, weight_decay=0.05)
    rel = float((scores - expected).norm() / expected.norm())
    assert rel <= 1e-10, rel
    assert float(expected.abs().max()) > 0


def test_callback_refuses_adam_and_clipping_before_training(tmp_path):
    grid = build_grid(tiny_texts(4), tiny_tokenizer(), 8, "tiny")
    for training, match in ((dict(optimizer={"name": "adamw"}), "plain SGD"), (dict(optimizer={"name": "sgd"}, max_grad_norm=1.0), "clipping")):
        spec = TrainingSpec.model_validate(dict(lr=0.1, batch_size=2, max_steps=2, **training))
        model = tiny_model()
        opt = build_optimizer(spec, list(model.parameters()), 0.1)
        cb = MagicCallback(2, "all")
        trainer = WeightedSFTTrainer(model=model, args=sft_config(spec, 0.1, tmp_path, 4), train_dataset=grid_dataset(grid, grid.valid_targets.float()),
                                     processing_class=tiny_tokenizer(), optimizers=(opt, build_scheduler(spec, opt, 2)), callbacks=[cb])
        cb.attach(trainer)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with pytest.raises(UserError, match=match):
            trainer.train()
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

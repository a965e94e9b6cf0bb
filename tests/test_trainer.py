"""WeightedSFTTrainer and the pure loss: parity with TRL/HF, signs, masking, accumulation, divergence, LoRA."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearnspec.data import build_grid
from unlearnspec.spec import LoraSpec, TrainingSpec
from unlearnspec.train.loss import normalizer_count, token_nll, weighted_token_loss
from unlearnspec.train.trainer import (
    GridCollator,
    LossSetup,
    TrainingDiverged,
    WeightedSFTTrainer,
    build_optimizer,
    build_scheduler,
    grid_dataset,
    sft_config,
    total_steps,
)

from .tiny import tiny_model, tiny_texts, tiny_tokenizer

S = 24


def _grid(n=8, seed=0):
    return build_grid(tiny_texts(n, seed), tiny_tokenizer(), S, "tiny")


def _training(**kw) -> TrainingSpec:
    base = dict(optimizer={"name": "sgd"}, lr=0.5, batch_size=8, max_steps=2, seed=0, shuffle=False)
    base.update(kw)
    return TrainingSpec.model_validate(base)


def _trainer(
    model, grid, weights, training: TrainingSpec, normalizer="valid", tmp_path=None, cls=WeightedSFTTrainer, **kw
):
    lr = training.lrs[0]
    steps = total_steps(training, grid.input_ids.shape[0])
    opt = build_optimizer(training, [p for p in model.parameters() if p.requires_grad], lr)
    sched = build_scheduler(training, opt, steps)
    args = sft_config(training, lr, tmp_path, grid.input_ids.shape[0])
    extra = {"loss": LossSetup(normalizer)} if cls is WeightedSFTTrainer else {"data_collator": GridCollator()}
    return cls(
        model=model,
        args=args,
        train_dataset=grid_dataset(grid, weights),
        processing_class=tiny_tokenizer(),
        optimizers=(opt, sched),
        **extra,
        **kw,
    )


def _batch(grid, weights):
    return {
        "input_ids": grid.input_ids,
        "attention_mask": grid.attention_mask,
        "labels": grid.labels.clone(),
        "token_weights": weights.clone(),
        "row_id": torch.arange(len(grid.input_ids)),
    }


def _loss_and_grad(trainer, model, batch):
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def test_all_ones_equals_trl_and_hf_loss(tmp_path):
    grid = _grid()
    ones = grid.valid_targets.float()
    model = tiny_model()
    weighted = _trainer(model, grid, ones, _training(), tmp_path=tmp_path / "w")
    loss_w, grad_w = _loss_and_grad(weighted, weighted.model, _batch(grid, ones))

    from trl import SFTTrainer

    stock_model = tiny_model()
    stock = _trainer(stock_model, grid, ones, _training(), tmp_path=tmp_path / "s", cls=SFTTrainer)
    batch = {k: v for k, v in _batch(grid, ones).items() if k in ("input_ids", "attention_mask", "labels")}
    stock_model.zero_grad()
    loss_s = stock.compute_loss(stock.model, dict(batch))
    loss_s.backward()
    assert abs(float(loss_w - loss_s)) <= 1e-6 * abs(float(loss_s))
    for name, p in stock.model.named_parameters():
        assert _rel(grad_w[name], p.grad) <= 1e-6, name

    hf = tiny_model()(**batch).loss
    assert abs(float(loss_w - hf)) <= 1e-6 * abs(float(hf))


def test_negative_weights_negate_gradient_exactly(tmp_path):
    grid = _grid()
    ones = grid.valid_targets.float()
    model = tiny_model()
    trainer = _trainer(model, grid, ones, _training(), tmp_path=tmp_path)
    _, g_pos = _loss_and_grad(trainer, trainer.model, _batch(grid, ones))
    batch = _batch(grid, -ones)
    model.zero_grad()
    loss = trainer.compute_loss(
        trainer.model, dict(batch), num_items_in_batch=normalizer_count(grid.labels, ones, "valid")
    )
    loss.backward()
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p.grad, -g_pos[name]), name


def test_zero_weight_token_target_does_not_matter(tmp_path):
    grid = _grid()
    w = grid.valid_targets.float()
    w[2, 5] = 0.0
    model = tiny_model()
    trainer = _trainer(model, grid, w, _training(), normalizer="valid", tmp_path=tmp_path)
    _, g1 = _loss_and_grad(trainer, trainer.model, _batch(grid, w))
    altered = _batch(grid, w)
    altered["labels"][2, 5] = (altered["labels"][2, 5] + 7) % 200
    _, g2 = _loss_and_grad(trainer, trainer.model, altered)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name


def test_pure_loss_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, dtype=torch.float64)
    labels = torch.tensor([[1, 2, 3, -100], [4, 0, -100, -100]])
    weights = torch.tensor([[9.0, 1.0, -2.0, 5.0], [9.0, 0.5, 3.0, 3.0]])
    logp = logits.log_softmax(-1)
    expected = -(1.0 * logp[0, 0, 2] - 2.0 * logp[0, 1, 3] + 0.5 * logp[1, 0, 0]) / 3
    got = weighted_token_loss(logits, labels, weights, normalizer_count(labels, weights, "valid"))
    assert torch.allclose(got, expected, rtol=1e-12)
    assert int(normalizer_count(labels, weights, "selected")) == 3
    assert float(normalizer_count(labels, weights, "abs_weight")) == 3.5
    assert int(normalizer_count(labels, weights, "batch_tokens")) == 6
    assert token_nll(logits, labels)[0, 2] == 0


def _train_params(grid, weights, normalizer, bs, ga, tmp_path, optimizer="adamw"):
    training = _training(
        batch_size=bs * ga, micro_batch_size=bs, max_steps=3, lr=1e-2, optimizer={"name": optimizer}, shuffle=True
    )
    model = tiny_model(seed=1)
    trainer = _trainer(model, grid, weights, training, normalizer=normalizer, tmp_path=tmp_path)
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("normalizer", ["selected", "valid", "batch_tokens", "abs_weight"])
def test_gradient_accumulation_invariance(tmp_path, normalizer):
    grid = _grid(n=24, seed=3)
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(grid.input_ids.shape, generator=g).clamp(-1.5, 1.5)
    weights[torch.rand(weights.shape, generator=g) < 0.4] = 0.0
    weights = weights * grid.valid_targets
    a = _train_params(grid, weights, normalizer, 8, 1, tmp_path / "a", optimizer="sgd")
    b = _train_params(grid, weights, normalizer, 4, 2, tmp_path / "b", optimizer="sgd")
    moved = max(float((a[n] - tiny_model(seed=1).state_dict()[n]).abs().max()) for n in a)
    assert moved > 1e-4  # the runs really trained
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), name


def test_diverging_run_stops_with_reason(tmp_path):
    grid = _grid()
    w = grid.valid_targets.float() * -1.0  # pure ascent with a huge LR blows up
    training = _training(lr=1e6, max_steps=40, optimizer={"name": "sgd"})
    trainer = _trainer(tiny_model(), grid, w, training, tmp_path=tmp_path)
    with pytest.raises(TrainingDiverged) as info:
        trainer.train()
    assert "non-finite loss" in str(info.value) and info.value.step >= 1


def test_weights_survive_collation_aligned_with_labels(tmp_path):
    grid = _grid()
    w = torch.arange(grid.input_ids.numel(), dtype=torch.float32).view(grid.input_ids.shape) * grid.valid_targets
    trainer = _trainer(tiny_model(), grid, w, _training(batch_size=3, shuffle=True), tmp_path=tmp_path)
    seen = []
    trainer.batch_listeners.append(lambda batches, count: seen.extend(batches))
    trainer.train()
    assert seen
    for batch in seen:
        for row, rid in enumerate(batch["row_id"].tolist()):
            assert torch.equal(batch["token_weights"][row], w[rid])
            assert torch.equal(batch["labels"][row], grid.labels[rid])


def test_lora_changes_only_adapters_and_lowers_loss(tmp_path):
    from unlearnspec.train.modeling import apply_lora

    grid = _grid(n=16)
    ones = grid.valid_targets.float()
    base = tiny_model()
    before = copy.deepcopy(base.state_dict())
    model = apply_lora(base, LoraSpec(rank=4, alpha=8, target_modules=["query_key_value", "dense_h_to_4h"]))
    training = _training(lr=1e-2, optimizer={"name": "adamw"}, max_steps=15, batch_size=16)
    trainer = _trainer(model, grid, ones, training, tmp_path=tmp_path)
    with torch.no_grad():
        loss0 = float(trainer.compute_loss(trainer.model, dict(_batch(grid, ones))))
    trainer.train()
    with torch.no_grad():
        loss1 = float(trainer.compute_loss(trainer.model, dict(_batch(grid, ones))))
    assert loss1 < loss0 - 0.05
    changed = {
        n
        for n, p in trainer.model.named_parameters()
        if "lora_" not in n
        and not torch.equal(p.detach(), before[n.replace("base_model.model.", "").replace(".base_layer", "")])
    }
    assert changed == set()
    lora_changed = [n for n, p in trainer.model.named_parameters() if "lora_B" in n and p.detach().abs().sum() > 0]
    assert lora_changed
    from unlearnspec.train.modeling import merged_for_eval

    merged = merged_for_eval(trainer.model, LoraSpec())
    with torch.no_grad():
        out = merged(input_ids=grid.input_ids, attention_mask=grid.attention_mask, labels=grid.labels)
    assert not hasattr(merged, "peft_config") and torch.isfinite(out.loss)

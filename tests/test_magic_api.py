"""MAGIC plumbing: misuse refused before training with a fix in the message, the recorder's call
protocol, checkpoint schedule sizes, and the score files (atomic, safe to load, complete sidecar)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from unlearnspec.errors import UserError
from unlearnspec.magic import (
    SCORES_FORMAT_VERSION,
    RamStore,
    ReferenceRun,
    ScoreProvenance,
    TrajectoryRecorder,
    check_model_replayable,
    check_optimizer,
    check_training_args,
    kept_steps,
    magic_scores,
    plan_steps,
    sgd_train,
    write_scores,
)
from unlearnspec.magic.replay import forward_logits
from unlearnspec.train.loss import token_nll


def tiny(dtype=torch.float32, **overrides):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    kwargs = dict(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    kwargs.update(overrides)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**kwargs)).to(dtype)


@dataclass
class Grid:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def grid(n: int = 4, s: int = 6) -> Grid:
    ids = torch.randint(0, 32, (n, s), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    return Grid(ids, mask, ids.masked_fill(mask == 0, -100))


# ---------------------------------------------------------------------------- misuse
def test_refuses_other_optimizers_and_momentum() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(UserError, match="optimizer.name: sgd, adam or adamw"):
        check_optimizer(torch.optim.RMSprop(params))
    with pytest.raises(UserError, match="amsgrad"):
        check_optimizer(torch.optim.Adam(params, amsgrad=True))
    with pytest.raises(UserError, match="betas"):
        check_optimizer(
            torch.optim.Adam(
                [{"params": params[:1], "betas": (0.9, 0.99)}, {"params": [torch.nn.Parameter(torch.zeros(1))]}]
            )
        )
    assert check_optimizer(torch.optim.AdamW(params, weight_decay=0.1)) == 0.1
    with pytest.raises(UserError, match="momentum: 0"):
        check_optimizer(torch.optim.SGD(params, lr=0.1, momentum=0.9))
    assert check_optimizer(torch.optim.SGD(params, lr=0.1, weight_decay=0.01)) == 0.01
    w, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    hf_like = torch.optim.SGD([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=0.1)
    assert check_optimizer(hf_like, {"w": w, "b": b}) == {"w": 0.1, "b": 0.0}


def test_refuses_half_precision_and_dropout() -> None:
    with pytest.raises(UserError, match="float32"):
        check_model_replayable(tiny(torch.bfloat16))
    with pytest.raises(UserError, match="dropout"):
        check_model_replayable(tiny(hidden_dropout=0.1))
    with pytest.raises(UserError, match="dropout"):
        check_model_replayable(tiny(attention_dropout=0.1))
    check_model_replayable(tiny())  # classifier_dropout=0.1 of GPT-NeoX's config is not the LM's


def test_refuses_packing_mixed_precision() -> None:
    with pytest.raises(UserError, match="packing"):
        check_training_args(packing=True)
    with pytest.raises(UserError, match="fp32"):
        check_training_args(precision="bf16")
    check_training_args(packing=False, precision="fp32", dropout=0.0)


def test_reverse_pass_refuses_bf16_model() -> None:
    model, g = tiny(), grid()
    trajectory = sgd_train(model, g, ReferenceRun(plan_steps(4, 2, 2, 0.1)), recorder=TrajectoryRecorder(2, "all"))
    assert trajectory is not None
    with pytest.raises(UserError, match="float32"):
        magic_scores(model.to(torch.bfloat16), g, trajectory, lambda p: torch.zeros(()))


def test_reverse_pass_refuses_a_misspelt_keyword() -> None:
    """The reverse-pass keywords are one typed ReplayOptions (**kwargs): a misspelt one is refused, as an unknown
    keyword argument was when each was a parameter, instead of being ignored."""
    model, g = tiny(), grid()
    trajectory = sgd_train(model, g, ReferenceRun(plan_steps(4, 2, 2, 0.1)), recorder=TrajectoryRecorder(2, "all"))
    assert trajectory is not None
    with pytest.raises(TypeError, match="micro_batch_row\\b"):
        magic_scores(model, g, trajectory, lambda p: torch.zeros(()), micro_batch_row=1)  # type: ignore[call-arg]
    progress: list[tuple[int, int]] = []
    query = lambda p: sum(x.pow(2).sum() for x in p.values())  # noqa: E731
    magic_scores(model, g, trajectory, query, micro_batch_rows=1, progress=lambda d, t: progress.append((d, t)))
    assert progress == [(1, 2), (2, 2)]


def test_the_unrolled_reference_refuses_a_run_that_is_not_plain_sgd() -> None:
    """ReferenceRun carries the optimizer for sgd_train; the unrolled references replay SGD only and say so."""
    from unlearnspec.magic import OptimizerConfig, unrolled_scores

    model, g = tiny(), grid()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = ReferenceRun(plan_steps(4, 2, 2, 0.1), optimizer=OptimizerConfig("adamw"))
    with pytest.raises(ValueError, match="plain SGD, not adamw"):
        unrolled_scores(model, g, run, lambda p: torch.zeros(()), theta0)


def test_replay_mode_restores_attention_and_mode() -> None:
    from unlearnspec.magic import REPLAY_ATTENTION, replay_mode

    model = tiny()
    model.config._attn_implementation = "sdpa"
    model.train()
    with replay_mode(model):
        assert model.config._attn_implementation == REPLAY_ATTENTION and not model.training
        ids = torch.randint(0, 32, (2, 5))
        logits = model(input_ids=ids).logits
        (g,) = torch.autograd.grad(logits.sum(), model.gpt_neox.embed_in.weight, create_graph=True)
        assert g.requires_grad  # double backward is available through the replay kernel
    assert model.config._attn_implementation == "sdpa" and model.training


# ---------------------------------------------------------------------------- recorder
def test_recorder_protocol_errors() -> None:
    params = {"w": torch.zeros(2)}
    rec = TrajectoryRecorder(2, "all")
    with pytest.raises(ValueError, match="before begin_step"):
        rec.add_micro_batch([0])
    rec.begin_step(params, 0.1)
    with pytest.raises(ValueError, match="no micro-batch"):
        rec.begin_step(params, 0.1)
    rec = TrajectoryRecorder(1, "all")
    rec.begin_step(params, 0.1)
    rec.add_micro_batch([0, 1])
    with pytest.raises(ValueError, match="sized for 1"):
        rec.begin_step(params, 0.1)


def test_recorder_keeps_only_scheduled_states() -> None:
    store = RamStore()
    rec = TrajectoryRecorder(10, "sqrt", store=store)
    for t in range(10):
        rec.begin_step({"w": torch.full((2,), float(t))}, 0.1)
        rec.add_micro_batch(torch.tensor([t % 3]))
    trajectory = rec.finish({"w": torch.full((2,), 10.0)})
    assert store.steps() == [0, 4, 8, 10]
    assert torch.equal(store.get(4)["w"], torch.full((2,), 4.0))
    assert trajectory.total_steps == 10 and trajectory.lrs == [0.1] * 10


def test_kept_steps_sizes() -> None:
    for total in (1, 2, 7, 20, 250, 1250):
        assert kept_steps("all", total) == list(range(total))
        sqrt = kept_steps("sqrt", total)
        assert sqrt[0] == 0 and len(sqrt) == math.ceil(total / math.ceil(math.sqrt(total)))
        log = kept_steps("log", total)
        assert log[0] == 0 and log == sorted(set(log)) and len(log) <= math.ceil(math.log2(total)) + 1
    with pytest.raises(ValueError, match="Available"):
        kept_steps("every", 3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- files
def test_write_scores_files(tmp_path) -> None:
    model, g = tiny(), grid()
    plan = plan_steps(4, 3, 2, [0.1, 0.1, 0.05])
    trajectory = sgd_train(
        model, g, ReferenceRun(plan, weight_decay=0.01), recorder=TrajectoryRecorder(3, "sqrt", weight_decay=0.01)
    )
    assert trajectory is not None
    q_ids = g.input_ids[:2]

    def query(params):
        return token_nll(forward_logits(model, params, q_ids, torch.ones_like(q_ids)), q_ids).sum(1).mean()

    scores = magic_scores(model, g, trajectory, query)
    paths = write_scores(
        tmp_path / "out",
        scores,
        trajectory,
        ScoreProvenance(
            fingerprint="abc123",
            query={"task": "toy_wmdp", "loss": "answer_letter", "n_questions": 2},
            dtype="float32",
            lr=0.1,
        ),
    )
    per_token = torch.load(paths["per_token"], weights_only=True)
    per_example = torch.load(paths["per_example"], weights_only=True)
    assert per_token.dtype == torch.float32 and per_token.shape == (4, 6) and torch.equal(per_token, scores)
    assert torch.allclose(per_example, scores.sum(1))
    meta = json.loads(paths["sidecar"].read_text())
    assert meta["format_version"] == SCORES_FORMAT_VERSION
    assert (meta["alignment"], meta["N"], meta["S"], meta["normalizer"]) == ("target", 4, 6, "valid")
    assert meta["data_fingerprint"] == "abc123"
    assert meta["query"] == {"task": "toy_wmdp", "loss": "answer_letter", "n_questions": 2}
    assert meta["optimizer"] == {"name": "sgd", "lr": 0.1, "weight_decay": 0.01, "momentum": 0.0}
    assert meta["lr_schedule"]["first"] == 0.1 and meta["lr_schedule"]["last"] == 0.05
    assert (meta["steps"], meta["batch_size"], meta["micro_batches_per_step"]) == (3, 2, 1)
    assert (meta["dtype"], meta["checkpoints"]) == ("float32", "sqrt")
    assert "unlearnspec_version" in meta
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "per_example_scores.pt",
        "per_token_scores.pt",
        "scores.json",
    ]

"""Exactness of the MAGIC reverse pass when only LoRA adapters train (peft, float64, tiny GPT-NeoX):
the trajectory holds the adapter weights only (the frozen base is never recorded nor replayed as a
variable), and the scores equal autograd through the unrolled LoRA-only run for SGD (with and without
weight decay) and AdamW, pass central finite differences, and a Hessian-free mutation fails both checks;
MagicCallback inside WeightedSFTTrainer records the same adapter-only trajectory from a peft model.

lora_B starts NON-zero (peft initialises it to 0): with B = 0 the adapter's gradient w.r.t. A vanishes at
theta_0 and some second-order terms with it, which would make the exactness check weaker.
"""

from __future__ import annotations

import pytest
import torch

from unlearnspec.errors import UserError
from unlearnspec.magic import (
    ReferenceRun,
    ReplayStats,
    TrajectoryRecorder,
    magic_scores,
    plan_steps,
    sgd_train,
    trainable_params,
    unrolled_query,
    unrolled_scores,
)
from unlearnspec.magic.optimizers import OptimizerConfig
from unlearnspec.magic.trajectory import decay_list
from unlearnspec.spec import LoraSpec
from unlearnspec.train.modeling import apply_lora

from .adam_oracle import adam_unrolled_scores
from .test_magic import (  # noqa: F401 - one_thread: autouse fixture
    N,
    finite_difference_errors,
    hf_style_decay,
    one_thread,
    rel_err,
    tiny_grid,
    tiny_model,
    tiny_query,
)

LORA = LoraSpec(rank=3, alpha=6.0, dropout=0.0, target_modules=["query_key_value", "dense", "dense_h_to_4h"])
SGD_LR = 1.0  # the Hessian term changes the scores by ~90% here (asserted below)
ADAM_LR = 1e-2


def lora_model(
    spec: LoraSpec = LORA, seed: int = 0, b_seed: int = 11, base: torch.nn.Module | None = None
) -> torch.nn.Module:
    """The float64 tiny GPT-NeoX wrapped with peft LoRA, lora_B drawn from a seeded normal (not peft's zeros)."""
    model = apply_lora(base if base is not None else tiny_model(seed), spec)
    gen = torch.Generator().manual_seed(b_seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


class LoraSetup:
    """A LoRA model at theta_0 (adapters), the grid, a query and a plan; `record` trains the adapters from theta_0."""

    def __init__(self, optimizer: str = "sgd", steps: int = 4, weight_decay: float | str = 0.0):
        self.model = lora_model()
        self.grid = tiny_grid()
        self.query = tiny_query(self.model)
        self.theta0 = {n: p.detach().clone() for n, p in trainable_params(self.model).items()}
        self.base0 = {n: p.detach().clone() for n, p in self.model.named_parameters() if not p.requires_grad}
        lr = SGD_LR if optimizer == "sgd" else ADAM_LR
        self.plan = plan_steps(N, steps, 3, [lr * (1 - 0.1 * t) for t in range(steps)], seed=3)
        self.weight_decay: float | dict[str, float] = (
            hf_style_decay(self.theta0, 0.3) if weight_decay == "hf" else float(weight_decay)
        )
        self.config = (
            OptimizerConfig(optimizer) if optimizer == "sgd" else OptimizerConfig(optimizer, (0.9, 0.999), 1e-8)
        )  # type: ignore[arg-type]

    def record(self, schedule: str = "all"):
        with torch.no_grad():
            for name, p in trainable_params(self.model).items():
                p.copy_(self.theta0[name])
        recorder = TrajectoryRecorder(len(self.plan), schedule, weight_decay=self.weight_decay, optimizer=self.config)  # type: ignore[arg-type]
        return sgd_train(
            self.model,
            self.grid,
            ReferenceRun(self.plan, weight_decay=self.weight_decay, optimizer=self.config),
            recorder=recorder,
            use_replay_attention=True,
        )

    def scores(self, schedule: str = "all", **kwargs) -> torch.Tensor:
        return magic_scores(self.model, self.grid, self.record(schedule), self.query, dtype=None, **kwargs)

    def oracle(self) -> torch.Tensor:
        """dQ/dw by autograd (create_graph) through the unrolled adapter-only run."""
        if self.config.name == "sgd":
            return unrolled_scores(
                self.model, self.grid, ReferenceRun(self.plan, weight_decay=self.weight_decay), self.query, self.theta0
            )
        return adam_unrolled_scores(
            self.model,
            self.grid,
            self.plan,
            self.query,
            self.theta0,
            name=self.config.name,
            betas=self.config.betas,
            eps=self.config.eps,
            decays=decay_list(self.weight_decay, list(self.theta0)),
        )

    def q_of_weights(self, weights: torch.Tensor) -> float:
        """Q(theta_T(w)) of the SGD run (for `finite_difference_errors`)."""
        q = unrolled_query(
            self.model,
            self.grid,
            ReferenceRun(self.plan, weight_decay=self.weight_decay),
            self.query,
            self.theta0,
            weights,
        )
        return q.detach().item()


@pytest.fixture(scope="module")
def sgd() -> LoraSetup:
    return LoraSetup("sgd")


def test_trajectory_holds_only_the_adapters(sgd: LoraSetup) -> None:
    """param_names are exactly the trainable lora_A/lora_B weights; no frozen base weight is recorded,
    stored or changed by training; the adapters themselves do change."""
    trajectory = sgd.record("all")
    names = set(trajectory.param_names)
    assert names == set(sgd.theta0) and names == {n for n, p in sgd.model.named_parameters() if p.requires_grad}
    assert len(names) == 2 * 2 * 3  # A and B of 3 target modules in each of 2 layers
    assert all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(sgd.base0) > len(names) and not names & set(sgd.base0)
    for base in (
        "base_model.model.gpt_neox.embed_in.weight",  # tied with embed_out in this config
        "base_model.model.gpt_neox.layers.0.attention.query_key_value.base_layer.weight",
        "base_model.model.gpt_neox.layers.1.mlp.dense_h_to_4h.base_layer.bias",
    ):
        assert base in sgd.base0 and base not in names
    assert set(trajectory.store.get(0)) == names and set(trajectory.store.get(trajectory.total_steps)) == names
    assert all(p.dtype == torch.float64 for p in sgd.model.parameters())
    params = dict(sgd.model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in sgd.base0.items())
    assert all(not torch.equal(params[n], p) for n, p in sgd.theta0.items())


@pytest.mark.parametrize("weight_decay", [0.0, "hf"])
def test_sgd_matches_unrolled_autograd_and_hessian_mutation_fails(weight_decay: float | str) -> None:
    """Measured (float64): decay 0: rel 8.4e-14, max abs 4.6e-15 (max |score| 4.8e-2); decay 0.3 on the
    adapter matrices: rel 7.5e-15, max abs 4.2e-16. The first-order scores (hessian=False) are off by
    rel 0.89 and 0.92."""
    setup = LoraSetup("sgd", weight_decay=weight_decay)
    exact, reference = setup.scores("all"), setup.oracle()
    assert exact.dtype == torch.float64 and float(reference.abs().max()) > 1e-3
    assert rel_err(exact, reference) <= 1e-10, rel_err(exact, reference)
    assert max_abs(exact, reference) <= 1e-10 * float(reference.abs().max())
    first_order = setup.scores("all", hessian=False)
    assert rel_err(first_order, reference) > 0.1  # the mutation is detected (would fail the 1e-10 bound above)


def test_finite_differences_and_mutation(sgd: LoraSetup) -> None:
    """Independent of autograd-through-training: central differences of Q(w) agree with the exact scores
    and reject the Hessian-free ones. The error falls as h^2 (3.9e-6 at h=1e-5, 3.6e-7 at 3e-6): measured
    5.5e-8 at h=1e-6 for the exact scores, 1.10 for the Hessian-free ones."""
    scores = {"exact": sgd.scores("all"), "no_hessian": sgd.scores("all", hessian=False)}
    errors = finite_difference_errors(sgd, scores, h=1e-6)
    assert errors["exact"] <= 1e-6, errors
    assert errors["no_hessian"] > 1e-2, f"mutation not detected: {errors}"


def test_checkpoint_schedules_recompute_the_adapter_run(sgd: LoraSetup) -> None:
    exact = sgd.scores("all")
    for schedule in ("sqrt", "log"):
        stats = ReplayStats()
        assert rel_err(sgd.scores(schedule, stats=stats), exact) <= 1e-12, schedule
        assert stats.recomputed_steps > 0 and stats.reverse_steps == len(sgd.plan)


def test_adamw_matches_independent_unrolled_oracle() -> None:
    """AdamW (decay 0.3 on the adapter matrices, lr 1e-2, 5 steps) against `adam_oracle`. Measured: rel 2.0e-15,
    max abs 7.8e-18 (max |score| 3.1e-3); hessian=False is off by rel 0.48, second_moment=False by 1.86."""
    setup = LoraSetup("adamw", steps=5, weight_decay="hf")
    trajectory = setup.record("all")
    assert set(trajectory.param_names) == set(setup.theta0)
    assert {k.split("/")[0] for k in trajectory.store.get(1) if "/" in k} == {"exp_avg", "exp_avg_sq"}
    exact = magic_scores(setup.model, setup.grid, trajectory, setup.query, dtype=None)
    oracle = setup.oracle()
    assert torch.isfinite(exact).all() and float(oracle.abs().max()) > 0
    assert rel_err(exact, oracle) <= 1e-10, rel_err(exact, oracle)
    assert rel_err(setup.scores("all", hessian=False), oracle) > 0.1
    assert rel_err(setup.scores("all", second_moment=False), oracle) > 0.1


def test_adapter_dropout_is_refused() -> None:
    spec = LORA.model_copy(update={"dropout": 0.1})
    model = lora_model(spec)
    grid, query = tiny_grid(), tiny_query(model)
    trajectory = sgd_train(
        model,
        grid,
        ReferenceRun(plan_steps(N, 1, 3, 0.1, seed=3)),
        recorder=TrajectoryRecorder(1, "all"),
        use_replay_attention=True,
    )
    with pytest.raises(UserError, match="lora_dropout"):
        magic_scores(model, grid, trajectory, query)


# --------------------------------------------------------------------------- MagicCallback in the real trainer
def _trainer_lora_model() -> torch.nn.Module:
    """test_magic_trainer's model (the tiny tokenizer's vocabulary, replay attention) with the LoRA adapters."""
    from unlearnspec.magic import register_replay_attention

    from . import tiny

    base = tiny.tiny_model(layers=2, hidden=16, heads=2, seed=7, dtype=torch.float64, attn=register_replay_attention())
    return lora_model(base=base)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_callback_records_only_adapters_and_scores_equal_unrolled(tmp_path, optimizer: str) -> None:
    """MagicCallback in WeightedSFTTrainer on a peft model (shuffled, accumulation 2, warmup + decay, HF
    decay groups): the trajectory holds the adapters only, training leaves the base untouched, and the
    scores equal autograd through the recorded adapter-only run. Measured: rel 5.8e-16 (SGD), 7.1e-16 (AdamW)."""
    from unlearnspec.data import build_grid
    from unlearnspec.magic.callback import MagicCallback
    from unlearnspec.spec import TrainingSpec
    from unlearnspec.train.trainer import (
        LossSetup,
        WeightedSFTTrainer,
        build_optimizer,
        build_scheduler,
        grid_dataset,
        sft_config,
    )

    from .test_magic_trainer import _query
    from .tiny import tiny_texts, tiny_tokenizer

    steps = 4
    grid = build_grid(tiny_texts(8, seed=5), tiny_tokenizer(), 10, "tiny")
    fields = (
        dict(lr=0.8, optimizer={"name": "sgd", "weight_decay": 0.05})
        if optimizer == "sgd"
        else dict(lr=0.01, optimizer={"name": "adamw", "weight_decay": 0.1, "betas": [0.9, 0.99], "eps": 1e-8})
    )
    spec = TrainingSpec.model_validate(
        dict(
            batch_size=4,
            micro_batch_size=2,
            max_steps=steps,
            schedule="linear",
            warmup_steps=1,
            shuffle=True,
            seed=3,
            **fields,
        )
    )
    model = _trainer_lora_model()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    base0 = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = build_optimizer(spec, model, spec.lrs[0])
    cb = MagicCallback(steps, "sqrt")
    trainer = WeightedSFTTrainer(
        model=model,
        args=sft_config(spec, spec.lrs[0], tmp_path, 8),
        train_dataset=grid_dataset(grid, grid.valid_targets.double()),
        processing_class=tiny_tokenizer(),
        optimizers=(opt, build_scheduler(spec, opt, steps)),
        callbacks=[cb],
        loss=LossSetup(normalizer="valid", fused_head=False),
    )
    cb.attach(trainer)
    trainer.train()
    traj = cb.trajectory
    assert traj is not None and traj.total_steps == steps and traj.optimizer.name == optimizer
    assert set(traj.param_names) == set(theta0) and all(".lora_" in n for n in traj.param_names)
    assert set(traj.store.get(0)) >= set(theta0) and not set(traj.store.get(0)) & set(base0)
    decay = fields["optimizer"]["weight_decay"]  # type: ignore[index]
    assert traj.decays() == [decay] * len(theta0)  # every adapter weight is a matrix: all in HF's decayed group
    trained = dict(model.named_parameters())
    assert all(torch.equal(trained[n], p) for n, p in base0.items())

    scores = magic_scores(model, grid, traj, _query(model), dtype=None)
    reference = _trainer_lora_model()  # same seeds: same base and adapters (not a deepcopy: TRL patched forward)
    ref_params = dict(reference.named_parameters())
    assert all(torch.equal(ref_params[n], p) for n, p in {**base0, **theta0}.items())
    if optimizer == "sgd":
        expected = unrolled_scores(
            reference, grid, ReferenceRun(traj.steps, weight_decay=traj.weight_decay), _query(reference), theta0
        )
    else:
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
        )
    assert float(expected.abs().max()) > 0
    assert rel_err(scores, expected) <= 1e-10, rel_err(scores, expected)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_per_question_scores_through_lora_equal_the_unrolled_oracle_per_question(optimizer: str) -> None:
    """Batched adjoints over adapter-sized parameters (the 7B use of `per: question`): every question's
    scores equal autograd through the unrolled LoRA-only run of that question's own loss."""
    from unlearnspec.magic.per_question import QuestionChunks, per_question_scores
    from unlearnspec.magic.query import QueryLoss

    setup = LoraSetup(optimizer)
    trajectory = setup.record("sqrt")
    out = per_question_scores(setup.model, setup.grid, trajectory, setup.query, QuestionChunks(2), dtype=None)
    full = setup.query
    for q in range(full.batch.n_questions):
        setup.query = QueryLoss(setup.model, full.batch.subset([q], "q"), 1)
        ref = setup.oracle()
        assert rel_err(out.scores[q], ref) < 1e-10, f"question {q}"
    setup.query = full
    assert rel_err(out.scores.mean(0), setup.oracle()) < 1e-10

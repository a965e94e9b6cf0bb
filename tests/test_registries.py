"""The extension points of issue 24: each registry names every member the spec allows, and what it says of a
member is true of the library (checked against torch, not restated)."""

from __future__ import annotations

from typing import get_args

import torch

from unlearnspec.magic.checks import optimizer_config
from unlearnspec.magic.optimizers import OPTIMIZERS, make_adjoint, optimizer_name
from unlearnspec.spec.training import OptimizerName


def test_every_spec_optimizer_has_one_replay_entry():
    assert tuple(OPTIMIZERS) == get_args(OptimizerName)


def test_each_optimizer_entry_matches_torch():
    """The state the recorder keeps is exactly torch's per-parameter state; the hyperparameters are param-group
    keys; the class maps back to the name; the adjoint rule carries the same state."""
    for name, kind in OPTIMIZERS.items():
        p = torch.nn.Parameter(torch.ones(3))
        opt = kind.torch_class([p], lr=0.1)
        p.grad = torch.full((3,), 0.5)
        opt.step()
        assert set(opt.state[p]) - {"step", "momentum_buffer"} == set(kind.state_names), name
        assert all(key in opt.param_groups[0] for key in kind.hyperparameters), name
        assert optimizer_name(opt) == name
        config = optimizer_config(kind.torch_class([torch.nn.Parameter(torch.ones(2))], lr=0.1))
        assert config.name == name and config.state_names == kind.state_names
        assert make_adjoint(config, [0.0]).state_names == kind.state_names
    assert optimizer_name(torch.optim.RMSprop([torch.nn.Parameter(torch.ones(1))], lr=0.1)) is None


def test_every_token_mode_has_traits_and_one_weight_function():
    from unlearnspec.scores.weights import WEIGHTS
    from unlearnspec.spec.token_modes import TOKEN_MODES, TokenMode

    assert tuple(TOKEN_MODES) == get_args(TokenMode) == tuple(WEIGHTS)


def test_token_mode_traits_are_what_the_spec_checks():
    """`reads_source` and `where` decide which fields a rule of each mode needs and refuses."""
    import pytest
    from pydantic import ValidationError

    from unlearnspec.spec import TokenRuleSpec
    from unlearnspec.spec.token_modes import TOKEN_MODES

    top = {"k": 1, "order": "most_negative", "selected": "ascend", "rest": "mask"}
    for mode, traits in TOKEN_MODES.items():
        base = {
            "mode": mode,
            **(top if mode == "top" else {}),
            **({"where": "s > 0"} if traits.where == "required" else {}),
        }
        with_source, without = {**base, "source": "s"}, base
        ok, refused = (with_source, without) if traits.reads_source else (without, with_source)
        TokenRuleSpec.model_validate(ok)
        with pytest.raises(ValidationError, match="source"):
            TokenRuleSpec.model_validate(refused)
        if traits.where == "no":
            with pytest.raises(ValidationError, match="where"):
                TokenRuleSpec.model_validate({**ok, "where": "s > 0"})


def test_token_mode_traits_match_the_weight_functions():
    """Checked against the implementation, not the spec checks built from the traits: a mode reads `source`
    iff its weight function fails without one, and is `signed` iff it gives both signs on mixed scores."""
    from unlearnspec.scores.weights import WEIGHTS
    from unlearnspec.spec import TokenRuleSpec
    from unlearnspec.spec.token_modes import TOKEN_MODES

    scores = {"s": torch.tensor([[-2.0, -1.0, 0.5, 3.0]])}
    valid = torch.ones(1, 4, dtype=torch.bool)
    top = {"k": 2, "order": "most_negative", "selected": "ascend", "rest": "mask"}
    for mode, traits in TOKEN_MODES.items():
        fields = {"mode": mode, "where": "s > -10" if traits.where != "no" else None, **(top if mode == "top" else {})}
        weights = WEIGHTS[mode](TokenRuleSpec.model_construct(**fields, source="s"), scores, valid)
        assert bool((weights < 0).any() and (weights > 0).any()) == traits.signed, mode
        try:
            WEIGHTS[mode](TokenRuleSpec.model_construct(**fields, source=None), scores, valid)
            reads = False
        except (AssertionError, KeyError):
            reads = True
        assert reads == traits.reads_source, mode

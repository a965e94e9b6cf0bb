"""The `objective` section and `data.retain`: a spec without them keeps its hash and dump, every rule names its
field and fix, MAGIC specs refuse other objectives, and the toy profile maps the retain set."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unlearnspec.errors import UserError
from unlearnspec.run.plan import spec_hash
from unlearnspec.spec import json_schema
from unlearnspec.spec.load import dump_spec, load_spec, validate_data
from unlearnspec.spec.profile import apply_profile, default_toy_profile

from .conftest import SPECS

FIXED = SPECS / "fixed" / "all_tokens.yaml"
RETAIN = {
    "hub": {"path": "cais/wmdp-corpora", "name": "bio-retain-corpus"},
    "select": {"count": 1000, "min_chars": 100},
}
# spec_hash of shipped specs recorded on main at 80cd80e, before `objective` existed (plain, then through --toy).
SHIPPED = ("fixed/all_tokens.yaml", "controls/oracle.yaml", "magic/magic_wmdp.yaml")
"""Specs that name no objective: their hash payload must be what it was before the field existed."""


def _base() -> dict:
    return yaml.safe_load(FIXED.read_text())


def _problems(data: dict) -> list[tuple[str, str]]:
    try:
        validate_data(data, None, "x.yaml")
    except UserError as exc:
        return [(p.loc, p.message) for p in exc.problems]
    return []


@pytest.mark.parametrize("rel", SHIPPED)
def test_a_spec_without_objective_keeps_its_hash(rel):
    """The default objective is left out of the dump the hash reads (as the spec was before `objective`
    existed), plainly and through the toy profile: the hash equals the hash of the payload without the key."""
    import hashlib
    import json

    from unlearnspec.run.plan import RESULT_NEUTRAL_FIELDS, drop_fields

    for profile in (None, default_toy_profile()):
        spec = load_spec(SPECS / rel, profile=profile, check_refs=False)
        payload = spec.model_dump(mode="json", exclude_none=True)
        assert "objective" not in payload and spec.objective.name == "weighted"
        if spec.magic is None:
            payload["training"].pop("lr")
        drop_fields(payload, RESULT_NEUTRAL_FIELDS)
        assert spec_hash(spec) == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def test_writing_the_default_objective_changes_nothing(tmp_path):
    data = _base()
    data["objective"] = {"name": "weighted"}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    explicit, implicit = load_spec(tmp_path / "w.yaml", check_refs=False), load_spec(FIXED, check_refs=False)
    assert spec_hash(explicit) == spec_hash(implicit)
    assert dump_spec(explicit) == dump_spec(implicit) and "objective" not in dump_spec(implicit)


def test_an_unlearning_objective_is_dumped_hashed_and_reloaded(tmp_path):
    data = _base()
    data["objective"] = {"name": "npo", "beta": 0.1, "alpha": 1.0}
    data["data"]["retain"] = RETAIN
    (tmp_path / "n.yaml").write_text(yaml.safe_dump(data))
    spec = load_spec(tmp_path / "n.yaml", check_refs=False)
    assert spec.objective.name == "npo" and spec.data.retain.hub.name == "bio-retain-corpus"
    assert spec_hash(spec) != spec_hash(load_spec(FIXED, check_refs=False))
    (tmp_path / "again.yaml").write_text(dump_spec(spec))
    assert load_spec(tmp_path / "again.yaml", check_refs=False) == spec
    jsonschema.Draft202012Validator(json_schema()).validate(data)
    data["objective"]["name"] = "npo2"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(json_schema()).validate(data)


RMU = {"name": "rmu", "layer": 7, "steering_coef": 6.5, "alpha": 1200.0, "seed": 0}
RULES = [
    ({"objective": {"name": "npo2", "beta": 1}}, "objective.name", "Did you mean: npo? Available: weighted, grad_diff"),
    ({"objective": {"beta": 1}}, "objective.name", "needs `name`"),
    (
        {"objective": {"name": "npo", "betta": 1}},
        "objective.betta",
        "Did you mean `beta`? Valid keys here: alpha, beta, name",
    ),
    ({"objective": {"name": "npo"}}, "objective.beta", "required field is missing"),
    ({"objective": {"name": "npo", "beta": 0}}, "objective.beta", "greater than 0"),
    ({"objective": {"name": "grad_diff", "alpha": 1.0}}, "data.retain", "`data.retain` is not set"),
    (
        {"objective": {"name": "grad_diff", "alpha": 0.0}, "retain": True},
        "data.retain",
        "objective.alpha is 0 (grad_diff)",
    ),
    ({"retain": True}, "data.retain", "`objective: weighted` has no retain term"),
    (
        {
            "objective": {"name": "npo", "beta": 1},
            "tokens": {"mode": "sign", "source": "s"},
            "scores": {"s": {"path": "a.pt"}},
        },
        "tokens.mode",
        "whose sign would be dropped",
    ),
    (
        {
            "objective": {"name": "npo", "beta": 1},
            "tokens": {
                "mode": "top",
                "source": "s",
                "k": 5,
                "order": "most_negative",
                "selected": "ascend",
                "rest": "descend",
            },
            "scores": {"s": {"path": "a.pt"}},
        },
        "tokens.rest",
        "Set `rest: mask`",
    ),
    (
        {"objective": {"name": "simnpo", "beta": 1}, "loss": {"normalizer": "selected"}},
        "loss.normalizer",
        "Write `normalizer: valid`",
    ),
    ({"objective": RMU, "retain": True, "lora": {"rank": 4}}, "lora", "delete `lora`"),
    ({"objective": RMU, "retain": True, "parallel": {"strategy": "fsdp"}}, "parallel.strategy", "Use `strategy: ddp`"),
    (
        {"objective": {**RMU, "train_layers": [8]}, "retain": True},
        "objective.train_layers",
        "Keep layers <= 7 (unset: [5, 6, 7])",
    ),
    ({"objective": {**RMU, "train_layers": [6, 6]}, "retain": True}, "objective.train_layers", "names a layer twice"),
    ({"objective": {**RMU, "train_params": "attn"}, "retain": True}, "objective.train_params", "'mlp' or 'layer'"),
]


@pytest.mark.parametrize("change,loc,text", RULES, ids=[f"{i}-{r[1]}" for i, r in enumerate(RULES)])
def test_rules_name_the_field_and_the_fix(change, loc, text):
    data = _base()
    change = copy.deepcopy(change)
    if change.pop("retain", False):
        data["data"]["retain"] = RETAIN
    data.update(change)
    problems = _problems(data)
    assert any(p_loc == loc and text in msg for p_loc, msg in problems), problems


def test_valid_unlearning_specs_pass():
    for objective, retain in (
        (RMU, True),
        ({"name": "grad_diff", "alpha": 0.0}, False),
        ({"name": "simnpo", "beta": 2.5, "gamma": 0.0}, False),
    ):
        data = _base()
        data["objective"] = objective
        if objective is RMU:
            data.pop("parallel")  # fixed/all_tokens.yaml shards (FSDP) over the example site's 2 GPUs; RMU refuses it
        if retain:
            data["data"]["retain"] = RETAIN
        assert _problems(data) == []


def test_a_magic_spec_refuses_other_objectives():
    data = yaml.safe_load((SPECS / "magic" / "magic_wmdp.yaml").read_text())
    data["objective"] = {"name": "grad_diff", "alpha": 0.0}
    assert any(loc == "objective" and "scores the `weighted` loss" in msg for loc, msg in _problems(data))
    data["objective"] = {"name": "weighted"}
    assert _problems(data) == []


def test_the_toy_profile_maps_the_retain_set():
    data = _base()
    data["objective"] = {"name": "grad_diff", "alpha": 1.0}
    data["data"]["retain"] = RETAIN
    mapped = apply_profile(data, default_toy_profile(), spec_path=FIXED)
    assert mapped["data"]["retain"] == {"toy": {"corpus": "bio_retain"}, "select": {"count": 250, "min_chars": 20}}
    assert validate_data(mapped, None, "x.yaml").data.retain.toy.corpus == "bio_retain"
    data["data"]["retain"] = {**RETAIN, "hub": {"path": "nobody/unknown"}}
    with pytest.raises(UserError) as info:
        apply_profile(data, default_toy_profile(), spec_path=FIXED)
    assert info.value.problems[0].loc == "data.retain.hub"


_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.lists(st.integers(-1, 9), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_keys = st.sampled_from(
    ["name", "alpha", "beta", "gamma", "layer", "steering_coef", "seed", "train_layers", "train_params", "x"]
)
_names = st.one_of(st.sampled_from(["weighted", "grad_diff", "npo", "simnpo", "rmu", "rmuu"]), _junk)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_junk, st.dictionaries(_keys, _junk, max_size=5)), _names, st.booleans())
def test_random_objectives_raise_only_clean_errors(objective, name, retain):
    data = _base()
    if isinstance(objective, dict):
        objective = {**objective, "name": name}
    data["objective"] = objective
    if retain:
        data["data"]["retain"] = RETAIN
    try:
        validate_data(data, None, "mutant.yaml")
    except UserError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        for p in exc.problems:
            p.render()

"""Score sources the run builds itself (`random: {seed}`, `produced_by: toy:truth`) and the control specs that
use them: random scores are deterministic by seed and 0 off the grid's targets; the truth built by the plan's
`prepare` equals what `unlearnspec toy truth` writes; misuse is refused by `validate` (exit 2, naming the field,
no traceback); specs/controls/ validates, plans (sharing the fixed pair's baseline) and passes the doctor's
score-source rules without noise about provenance, alignment or LDS of a source that has no file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.doctor import diagnose
from unlearnspec.scores import token_weights
from unlearnspec.scores.builtin import random_scores
from unlearnspec.spec import TokenRuleSpec, json_schema
from unlearnspec.spec.sections import RandomScoresSpec

from .conftest import SPECS
from .fixtures.reportkit import spec_project, validate_data

CONTROLS = SPECS / "controls"
ORACLE, RANDOM = CONTROLS / "oracle.yaml", CONTROLS / "random.yaml"


# --------------------------------------------------------------------------- random scores
def _valid(n: int = 6, s: int = 9) -> torch.Tensor:
    valid = torch.ones((n, s), dtype=torch.bool)
    valid[:, 0] = False
    valid[1, 5:] = False  # a padded row
    valid[4] = False  # an all-pad row
    return valid


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_random_scores_are_deterministic_by_seed_and_zero_off_the_targets(distribution):
    valid = _valid()
    a = random_scores(RandomScoresSpec(seed=7, distribution=distribution), valid)
    assert a.dtype == torch.float32 and a.shape == valid.shape
    assert torch.equal(a, random_scores(RandomScoresSpec(seed=7, distribution=distribution), valid))
    assert not torch.equal(a, random_scores(RandomScoresSpec(seed=8, distribution=distribution), valid))
    assert (a[~valid] == 0).all() and (a[valid] != 0).all()
    # a position's value does not depend on which other positions are valid (drawn for the full grid)
    assert torch.equal(
        a[valid], random_scores(RandomScoresSpec(seed=7, distribution=distribution), torch.ones_like(valid))[valid]
    )
    if distribution == "uniform":
        assert a.min() >= -1.0 and a.max() < 1.0
    assert (a[valid] < 0).any() and (a[valid] > 0).any()  # both signs: `sign`/`where` rules see proponents too


def test_top_k_on_random_scores_picks_k_distinct_valid_tokens_reproducibly():
    valid = _valid()
    labels = torch.where(valid, torch.tensor(5), torch.tensor(-100))
    rule = TokenRuleSpec(mode="top", source="rand", k=10, order="most_negative", selected="ascend", rest="mask")
    w = token_weights(rule, {"rand": random_scores(RandomScoresSpec(seed=0), valid)}, labels)
    assert int((w == -1).sum()) == 10 and int((w != 0).sum()) == 10 and (w[~valid] == 0).all()
    again = token_weights(rule, {"rand": random_scores(RandomScoresSpec(seed=0), valid)}, labels)
    other = token_weights(rule, {"rand": random_scores(RandomScoresSpec(seed=1), valid)}, labels)
    assert torch.equal(w, again) and not torch.equal(w, other)


# --------------------------------------------------------------------------- truth through the plan
def test_truth_built_by_prepare_equals_the_toy_truth_command(toy_world, tmp_path):
    from unlearnspec.data import SpecGrid
    from unlearnspec.run.context import toy_context
    from unlearnspec.run.plan import PlanOptions, build_plan
    from unlearnspec.run.steps import prepare
    from unlearnspec.scores.builtin import builtin_score_file
    from unlearnspec.spec.profile import default_toy_profile

    out = tmp_path / "truth"
    done = CliRunner().invoke(app, ["toy", "truth", str(ORACLE), "--out", str(out)])
    assert done.exit_code == 0, done.output
    written = torch.load(out / "per_token_scores.pt", weights_only=True)
    side = json.loads((out / "scores.json").read_text())
    ctx = toy_context(default_toy_profile(), say=lambda _m: None)
    plan = build_plan([ORACLE], PlanOptions(profile=default_toy_profile(), cache_root=tmp_path / "cache"), ctx.assets)
    job = next(j for j in plan.jobs if j.id == "point:controls_oracle/lr_0.05")
    assert job.inputs == () and job.after == ()  # no file, no score job: built when the grid is prepared
    prep = prepare(job, ctx)
    on = SpecGrid(job.spec, job.spec_path, ctx.assets, prep.grid, prep.tokenizer)
    built = builtin_score_file("truth", job.spec.scores["truth"], on)
    assert torch.equal(built.scores, written) and built.sidecar["data_fingerprint"] == side["data_fingerprint"]
    # the oracle rule ascends on exactly the truth tokens: all 60 of them, nothing else
    assert side["forget_tokens"] == 60 and prep.stats.selected_tokens == 60 == prep.stats.ascending_tokens
    assert torch.equal(prep.weights == -1, written < 0) and int((prep.weights != 0).sum()) == 60


# --------------------------------------------------------------------------- validation
@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root holding copies of specs/fixed/ and specs/controls/."""
    return spec_project(tmp_path, "fixed", "controls")


def _validate(project: Path, base: Path, **changes):
    data = yaml.safe_load(base.read_text())
    data.update(changes)
    return validate_data(project, data)


TRUTH_TOKENS = {
    "mode": "top",
    "source": "truth",
    "where": "truth < 0",
    "k": 60,
    "order": "most_negative",
    "selected": "ascend",
    "rest": "mask",
}
MISUSE = [
    (
        RANDOM,
        {"scores": {"truth": {"produced_by": "toy:truth"}}, "tokens": TRUTH_TOKENS},
        "scores.truth.produced_by",
        "does not run on the toy world",
    ),
    (
        ORACLE,
        {"scores": {"truth": {"produced_by": "toy:facts"}}},
        "scores.truth.produced_by",
        "unknown built-in producer 'toy:facts'; available: toy:truth",
    ),
    (RANDOM, {"scores": {"rand": {"random": {}}}}, "scores.rand.random.seed", "required field is missing"),
    (RANDOM, {"scores": {"rand": {"random": {"seed": -1}}}}, "scores.rand.random.seed", "greater than or equal to 0"),
    (
        RANDOM,
        {"scores": {"rand": {"random": {"seed": 0, "distribution": "gauss"}}}},
        "scores.rand.random.distribution",
        "'uniform' or 'normal'",
    ),
    (
        RANDOM,
        {"scores": {"rand": {"random": {"seed": 0, "sede": 1}}}},
        "scores.rand.random.sede",
        "Did you mean `seed`?",
    ),
    (RANDOM, {"scores": {"rand": {"random": 0}}}, "scores.rand.random", "valid dictionary"),
    (RANDOM, {"scores": {"rand": {"random": {"seed": 0}, "path": "x.pt"}}}, "scores.rand.random", "exactly one of"),
    (
        RANDOM,
        {"scores": {"rand": {"random": {"seed": 0}, "task": "toy_wmdp"}}},
        "scores.rand.task",
        "only read with `produced_by: toy:truth`",
    ),
    (
        RANDOM,
        {"scores": {"rand": {"random": {"seed": 0}, "alignment": "input"}}},
        "scores.rand.alignment",
        "target alignment",
    ),
    (
        RANDOM,
        {"scores": {"rand": {"random": {"seed": 0}, "columns": 64}}},
        "scores.rand.columns",
        "describes a score file",
    ),
    (
        ORACLE,
        {"scores": {"truth": {"produced_by": "toy:truth", "task": "wmdp"}}},
        "scores.truth.task",
        "not a toy task name",
    ),
    (ORACLE, {"tokens": {**TRUTH_TOKENS, "where": "truth.toxin < 0"}}, "tokens", "has no leaf tasks"),
]


@pytest.mark.parametrize("base,changes,field,text", MISUSE, ids=[f"{i}-{m[2]}" for i, m in enumerate(MISUSE)])
def test_misuse_of_built_in_sources_is_refused_with_exit_2_naming_the_field(project, base, changes, field, text):
    result = _validate(project, base, **changes)
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert f" {field}: " in flat and text in flat, result.output


def test_the_random_source_is_valid_on_the_real_model_and_truth_on_the_toy_world(project):
    assert _validate(project, RANDOM).exit_code == 0
    assert (
        _validate(project, ORACLE, scores={"truth": {"produced_by": "toy:truth", "retain_task": "toy_mmlu"}}).exit_code
        == 0
    )
    props = json_schema()["$defs"]["ScoreSourceSpec"]["properties"]
    assert {"random", "task", "retain_task"} <= set(props) and "toy:truth" in props["produced_by"]["description"]


def test_plan_refuses_truth_on_the_real_model_and_takes_it_once_mapped_onto_the_toy_world(project, tmp_path):
    from unlearnspec.errors import UserError
    from unlearnspec.run.plan import PlanOptions, build_plan
    from unlearnspec.spec.profile import default_toy_profile

    data = yaml.safe_load(RANDOM.read_text())
    data.update(scores={"truth": {"produced_by": "toy:truth"}}, tokens=TRUTH_TOKENS)
    path = project / "specs" / "controls" / "truth_real.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(UserError) as err:
        build_plan([path], PlanOptions(cache_root=tmp_path / "cache"))
    (problem,) = err.value.problems
    assert problem.loc == "scores.truth.produced_by" and "does not run on the toy world" in problem.message
    plan = build_plan(
        [path], PlanOptions(profile=default_toy_profile(), cache_root=tmp_path / "cache")
    )  # --toy: a toy spec now
    assert [j.id for j in plan.jobs if j.kind == "point"] == [
        f"point:controls_random/lr_{x}" for x in ("0.01", "0.05", "0.2")
    ]


# --------------------------------------------------------------------------- the control specs
def test_control_specs_validate_and_are_matched_and_labelled():
    result = CliRunner().invoke(app, ["validate", str(CONTROLS)])
    assert result.exit_code == 0, result.output
    from unlearnspec.spec.load import load_spec
    from unlearnspec.spec.profile import default_toy_profile

    toy = default_toy_profile()
    specs = {p.stem: load_spec(p, profile=toy) for p in sorted(CONTROLS.glob("*.yaml"))}
    assert set(specs) == {"oracle", "random", "magic_topk", "magic_topk_not_mmlu", "magic_q_min", "magic_q_union"}
    assert specs["oracle"].role == "positive_control" and specs["random"].role == "negative_control"
    assert all(
        specs[name].role is None for name in ("magic_topk", "magic_topk_not_mmlu", "magic_q_min", "magic_q_union")
    )
    assert (
        specs["magic_q_min"].tokens.source == "min_q(wmdp)" and specs["magic_q_union"].tokens.source == "rank_q(wmdp)"
    )
    control = load_spec(SPECS / "fixed" / "all_tokens.yaml", profile=toy)
    assert control.training.lrs == (0.01, 0.05, 0.2)
    for name, spec in specs.items():
        assert spec.control == "specs/fixed/all_tokens.yaml", name
        # magic_topk diverged at 0.2: left out, and the per-question selections sweep the same two LRs
        lrs = (0.01, 0.05) if name.startswith("magic_") and name != "magic_topk_not_mmlu" else control.training.lrs
        assert spec.training == control.training.model_copy(update={"lr": list(lrs)}), name
        assert spec.data == control.data and spec.eval == control.eval, name
        assert spec.model == control.model and spec.loss.normalizer == "selected", name
        assert (spec.tokens.mode, spec.tokens.k, spec.tokens.selected, spec.tokens.rest) == (
            "top",
            60,
            "ascend",
            "mask",
        ), name


def test_plan_lists_the_control_jobs_sharing_the_fixed_baseline():
    # a control is not added to the plan by the specs naming it (`run specs/ --toy` holds both)
    result = CliRunner().invoke(
        app, ["plan", str(CONTROLS), str(SPECS / "fixed" / "all_tokens.yaml"), "--toy", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    jobs = json.loads(result.stdout)["jobs"]
    ids = [j["id"] for j in jobs]
    for name in ("oracle", "random", "magic_topk", "magic_topk_not_mmlu", "fixed/all_tokens"):
        stem = name.replace("fixed/", "fixed_") if "/" in name else f"controls_{name}"
        expected = [True, True, name != "magic_topk"]  # magic_topk's sweep leaves out 0.2 (it diverged there)
        assert [f"point:{stem}/lr_{lr}" in ids for lr in ("0.01", "0.05", "0.2")] == expected, (name, ids)
    assert sum(j["kind"] == "baseline" for j in jobs) == 1  # every control and the fixed control: one baseline
    assert {"score:fixed_magic_wmdp", "score:fixed_magic_mmlu"} <= set(ids)


def test_doctor_on_the_controls_is_quiet_about_sources_without_a_file():
    from unlearnspec.spec.profile import default_toy_profile

    findings, count = diagnose([CONTROLS], profile=default_toy_profile())
    assert count == 6
    built = [f for f in findings if f.spec.endswith(("oracle.yaml", "random.yaml"))]
    assert not [f for f in built if f.code in ("D0", "D1", "D2", "D3", "D5", "D10", "D11")], built
    assert not [f for f in findings if f.code == "D1"], findings  # every control matches specs/fixed/all_tokens.yaml
    result = CliRunner().invoke(app, ["doctor", str(CONTROLS), "--toy"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "controls/oracle.yaml" in " ".join(result.output.split())

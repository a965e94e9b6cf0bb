"""Scores per query task (`magic.query.per: task`): the leaf scores add up to the mean-query scores weighted by
each leaf's share of the questions; rules name leaves as `source.leaf`; the loader refuses a missing leaf."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from unlearnspec.errors import UserError
from unlearnspec.magic import (
    ReferenceRun,
    ScoreProvenance,
    TrajectoryRecorder,
    magic_scores,
    plan_steps,
    sgd_train,
    write_scores,
)
from unlearnspec.magic.output import write_task_scores
from unlearnspec.magic.per_task import leaf_names, per_task_scores
from unlearnspec.magic.query import build_query
from unlearnspec.scores import checked_scores, leaf_score_path, load_score_file
from unlearnspec.spec import QuerySpec
from unlearnspec.spec.load import load_spec, validate_data
from unlearnspec.spec.rules import RuleSyntaxError, parse_rule, sources, split_source
from unlearnspec.train.loss import IGNORE_INDEX

from .conftest import SPECS
from .test_query import FIXTURES, GROUP, _docs, model, tokenizer  # noqa: F401 - fixtures

S = 24


@dataclass
class Grid:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


@pytest.fixture(scope="module")
def trained(model, tokenizer):  # noqa: F811 - the fixtures imported above
    """A float64 SGD run (3 steps, lr large enough that the Hessian term matters) on the fixture questions'
    texts, its trajectory, and the query of the two-leaf fixture group (6 + 4 questions)."""
    model = copy.deepcopy(model)
    texts = [d["question"] + " " + d["choices"][d["answer"]] for d in _docs()][:6]
    ids = torch.full((len(texts), S), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, text in enumerate(texts):
        tokens = tokenizer.encode(text)[:S]
        ids[r, : len(tokens)] = torch.tensor(tokens)
        mask[r, : len(tokens)] = 1
    grid = Grid(ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX))
    recorder = TrajectoryRecorder(3, "all")
    trajectory = sgd_train(
        model, grid, ReferenceRun(plan_steps(6, 3, 2, 0.5)), recorder=recorder, use_replay_attention=True
    )
    query = build_query(QuerySpec(task=GROUP, batch_size=4), model, tokenizer, include_path=str(FIXTURES))
    return model, grid, trajectory, query


def test_leaf_scores_weighted_by_question_share_sum_to_the_mean_scores(trained):
    model, grid, trajectory, query = trained
    mean = magic_scores(model, grid, trajectory, query, dtype=None)
    ticks: list[tuple[int, int]] = []
    per = per_task_scores(model, grid, trajectory, query, mean, dtype=None, progress=lambda d, t: ticks.append((d, t)))
    assert ticks == [(d, 6) for d in range(1, 7)]  # reverse steps over both leaves' passes (2 x 3 steps)
    assert mean.dtype == torch.float64
    assert {k: v.questions for k, v in per.items()} == {"fixture_mcq_a": 6, "fixture_mcq_b": 4}
    assert {v.task for v in per.values()} == {"fixture_mcq_a", "fixture_mcq_b"}
    n = query.batch.n_questions
    combined = sum(v.questions / n * v.scores for v in per.values())
    assert float(mean.abs().max()) > 1e-4  # not vacuous: the scores are far from zero ...
    a, b = per["fixture_mcq_a"].scores, per["fixture_mcq_b"].scores
    assert float((a - b).abs().max()) > 1e-4  # ... and the two leaves' scores differ
    assert float((combined - mean).abs().max()) <= 1e-10
    # each leaf's query is the mean over its own questions
    theta = dict(model.named_parameters())
    losses = query.per_question(theta)
    leaves = query.per_task()
    for leaf, rows in query.batch.leaves().items():
        assert torch.allclose(leaves[leaf](theta), losses[rows].mean(), rtol=1e-12)


def test_a_single_leaf_query_reuses_the_mean_pass(trained, tokenizer):  # noqa: F811
    model, grid, trajectory, _ = trained
    query = build_query(QuerySpec(task="fixture_mcq_b", batch_size=4), model, tokenizer, include_path=str(FIXTURES))
    mean = magic_scores(model, grid, trajectory, query, dtype=None)
    (only,) = per_task_scores(model, grid, trajectory, query, mean, dtype=None).values()
    assert only.seconds == 0.0 and torch.equal(only.scores, mean)


def test_leaf_files_load_through_the_sidecar_like_the_mean_file(trained, tmp_path):
    model, grid, trajectory, query = trained
    mean = magic_scores(model, grid, trajectory, query)
    per = per_task_scores(model, grid, trajectory, query, mean)
    block = write_task_scores(tmp_path, per)
    paths = write_scores(
        tmp_path,
        mean,
        trajectory,
        ScoreProvenance("fp", query.batch.info(), "float64"),
        extra={"per_task": block},
    )
    side = json.loads(paths["sidecar"].read_text())
    entry = dict(side["per_task"]["fixture_mcq_a"])
    assert entry.pop("reverse_seconds") > 0
    assert entry == {"file": "per_token_scores.fixture_mcq_a.pt", "task": "fixture_mcq_a", "questions": 6}
    path = leaf_score_path(paths["per_token"], "wmdp", "fixture_mcq_b")
    assert path == tmp_path / "per_token_scores.fixture_mcq_b.pt"
    loaded = load_score_file(path)
    assert torch.equal(loaded.scores, per["fixture_mcq_b"].scores.float()) and loaded.sidecar == side
    source = yaml_source()
    checked = checked_scores(loaded, source, "wmdp.fixture_mcq_b", grid.labels, "fp", lambda s: "other")
    assert checked.shape == grid.labels.shape
    with pytest.raises(UserError, match="data fingerprint mismatch"):
        checked_scores(loaded, source, "wmdp.fixture_mcq_b", grid.labels, "another-fp", lambda s: "other")


def yaml_source():
    from unlearnspec.spec.sections import ScoreSourceSpec

    return ScoreSourceSpec(path="x/per_token_scores.pt")


# --------------------------------------------------------------------------- the loader refuses
def _score_dir(tmp_path: Path, per_task: object) -> Path:
    torch.save(torch.zeros(2, 3), tmp_path / "per_token_scores.pt")
    side = {"alignment": "target", "N": 2, "S": 3}
    if per_task is not None:
        side["per_task"] = per_task
    (tmp_path / "scores.json").write_text(json.dumps(side))
    return tmp_path / "per_token_scores.pt"


def test_a_missing_leaf_names_it_and_lists_the_available_ones(tmp_path):
    mean = _score_dir(
        tmp_path,
        {
            "dual_use_virology": {"file": "per_token_scores.dual_use_virology.pt"},
            "viral_vector_research": {"file": "per_token_scores.viral_vector_research.pt"},
        },
    )
    with pytest.raises(UserError) as err:
        leaf_score_path(mean, "wmdp", "virology")
    text = str(err.value)
    assert "'wmdp.virology'" in text and "no leaf task 'virology'" in text
    assert "Available: wmdp.dual_use_virology, wmdp.viral_vector_research." in text


def test_mean_only_scores_and_unsafe_files_are_refused(tmp_path):
    mean = _score_dir(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path, None)
    with pytest.raises(UserError, match="per: task"):
        leaf_score_path(mean, "wmdp", "dual_use_virology")
    (tmp_path / "b").mkdir()
    bad = _score_dir(tmp_path / "b", {"x": {"file": "../a/per_token_scores.pt"}})
    with pytest.raises(UserError, match="must be a file name beside the sidecar"):
        leaf_score_path(bad, "wmdp", "x")
    (tmp_path / "c").mkdir()
    gone = _score_dir(tmp_path / "c", {"x": {"file": "per_token_scores.x.pt"}})
    with pytest.raises(UserError, match="score file not found"):
        load_score_file(leaf_score_path(gone, "wmdp", "x"))


def test_leaf_names_drop_the_group_prefix_and_refuse_collisions():
    leaves = ["wmdp_bio_robust_dual_use_virology", "wmdp_bio_robust_viral_vector_research", "other-task"]
    assert leaf_names("wmdp_bio_robust", leaves) == {
        "wmdp_bio_robust_dual_use_virology": "dual_use_virology",
        "wmdp_bio_robust_viral_vector_research": "viral_vector_research",
        "other-task": "other_task",
    }
    assert leaf_names("toy_wmdp", ["toy_wmdp"]) == {"toy_wmdp": "toy_wmdp"}
    with pytest.raises(UserError, match="both get the rule name 'a_b'"):
        leaf_names("g", ["g_a-b", "g_a_b"])


# --------------------------------------------------------------------------- rules and validation
def test_rules_parse_one_dot_leaf_names():
    expr = parse_rule("wmdp.dual_use_virology < 0 and not (mmlu > 0 or wmdp >= 1e-3)")
    assert sources(expr) == {"wmdp.dual_use_virology", "mmlu", "wmdp"}
    assert split_source("wmdp.dual_use_virology") == ("wmdp", "dual_use_virology") and split_source("wmdp") == (
        "wmdp",
        None,
    )
    for bad in ("wmdp.a.b < 0", "wmdp. < 0", ".x < 0", "wmdp..x < 0", "wmdp.x-y < 0"):
        with pytest.raises(RuleSyntaxError):
            parse_rule(bad)


def _selective(where: str | None = None, source: str | None = None) -> dict:
    data = yaml.safe_load((SPECS / "fixed" / "selective.yaml").read_text())
    data["tokens"] = {"mode": "where", "where": where} if where else {"mode": "sign", "source": source}
    return data


def test_validation_accepts_leaf_sources_and_refuses_unknown_ones():
    spec = validate_data(_selective("wmdp.dual_use_virology < 0 and mmlu <= 0"), None, "x.yaml")
    assert spec.tokens.referenced_sources() == {"wmdp.dual_use_virology", "mmlu"}
    assert (
        validate_data(_selective(source="wmdp.dual_use_virology"), None, "x.yaml").tokens.source
        == "wmdp.dual_use_virology"
    )
    with pytest.raises(UserError, match="leaf task 'x' of score source 'forget'.*declared: mmlu, wmdp"):
        validate_data(_selective("forget.x < 0"), None, "x.yaml")
    with pytest.raises(UserError, match="not a score source name"):
        validate_data(_selective(source="wmdp.a.b"), None, "x.yaml")
    with pytest.raises(UserError, match="cannot parse the selection"):
        validate_data(_selective("wmdp.a.b < 0"), None, "x.yaml")


def test_query_per_field_default_stays_out_of_dumps_and_hashes():
    mean, task = QuerySpec(task="t"), QuerySpec(task="t", per="task")
    assert mean.per == "mean" and "per" not in mean.model_dump() and task.model_dump()["per"] == "task"
    with pytest.raises(Exception):
        QuerySpec(task="t", per="leaf")


def test_a_leaf_rule_on_a_mean_only_producer_is_refused_at_validate_time(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    producer = yaml.safe_load((SPECS / "fixed" / "magic_wmdp.yaml").read_text())
    (tmp_path / "magic_wmdp.yaml").write_text(yaml.safe_dump(producer))
    exp = _selective("wmdp.dual_use_virology < 0")
    exp.pop("control")
    exp["scores"] = {"wmdp": {"produced_by": "magic_wmdp.yaml", "alignment": "target"}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    with pytest.raises(UserError) as err:
        load_spec(tmp_path / "exp.yaml")
    assert "wmdp.dual_use_virology" in str(err.value) and "`per: task`" in str(err.value)
    producer["magic"]["query"]["per"] = "task"
    (tmp_path / "magic_wmdp.yaml").write_text(yaml.safe_dump(producer))
    assert load_spec(tmp_path / "exp.yaml").tokens.where == "wmdp.dual_use_virology < 0"

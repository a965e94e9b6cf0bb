"""Aggregations over the leaf tasks of a `magic.query.per: task` producer: `min_t(x)`, `rank_t(x)`, `wsum_t(x)`.
The same functions as `min_q`, ... on the leaf files stacked [T, N, S] in sorted leaf order; the grammar and
validation against the producer (`per: task` for `_t`, `per: question` for `_q`), the loader's refusals, one
run through `prepare` on the toy world, and doctor's D15 on near-zero leaves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unlearnspec.doctor import Thresholds, diagnose
from unlearnspec.errors import UserError
from unlearnspec.magic.output import write_task_scores
from unlearnspec.magic.per_task import TaskScores
from unlearnspec.scores import token_weights
from unlearnspec.scores.aggregate import AGGREGATES, checked_task_scores, min_q, rank_q, source_aggregates, wsum_q
from unlearnspec.spec import ScoreSourceSpec, TokenRuleSpec
from unlearnspec.spec.rules import AGGREGATIONS, RuleSyntaxError, parse_rule, parse_source, sources

from .fixtures.aggregates import doctor_spec, expected_min_top, prepare_top, truth_folder
from .test_question_rules import LABELS, PER_Q, SRC, TOP, VALID, _validate, project  # noqa: F401 - project: a fixture

LEAVES = ["zeta", "alpha", "mid"]
"""The leaves of the hand-made folder, written in this (unsorted) order; leaf i holds PER_Q[i]."""
STACK = torch.stack([PER_Q[LEAVES.index(leaf)] for leaf in sorted(LEAVES)])
"""What the `_t` aggregations read: the leaf matrices in sorted leaf order."""
ALL = ["min_t(wmdp)", "rank_t(wmdp)", "wsum_t(wmdp)"]


def _folder(tmp: Path, leaves: dict[str, torch.Tensor], side: dict | None = None, block: bool = True) -> Path:
    """A `per: task` score folder as the score job writes it: mean file, one file per leaf, sidecar."""
    tmp.mkdir(parents=True, exist_ok=True)
    first = next(iter(leaves.values()))
    torch.save(torch.stack(list(leaves.values())).mean(0), tmp / "per_token_scores.pt")
    entries = {leaf: TaskScores(f"toy_wmdp_by_attribute_{leaf}", 60, t, 0.5) for leaf, t in leaves.items()}
    per_task = write_task_scores(tmp, entries)
    sidecar = {
        "alignment": "target",
        "N": first.shape[0],
        "S": first.shape[1],
        "data_fingerprint": "fp",
        **(side or {}),
    }
    if block:
        sidecar["per_task"] = per_task
    (tmp / "scores.json").write_text(json.dumps(sidecar))
    return tmp / "per_token_scores.pt"


def _hand(tmp: Path, **kw) -> Path:
    return _folder(tmp, {leaf: PER_Q[i] for i, leaf in enumerate(LEAVES)}, **kw)


def _load(mean: Path, *fulls: str, src: ScoreSourceSpec = SRC) -> dict:
    return source_aggregates(fulls or ("min_t(wmdp)",), mean, src, LABELS, "fp", lambda w: f"fp{w}")


# --------------------------------------------------------------------------- the aggregations
def test_each_task_aggregate_is_its_question_function_on_the_sorted_leaf_stack(tmp_path):
    mean = _hand(tmp_path)
    assert torch.equal(checked_task_scores(mean, SRC, "min_t(wmdp)", LABELS, "fp", str), STACK.masked_fill(~VALID, 0.0))
    got = _load(mean, *ALL)
    assert set(got) == set(ALL)
    assert torch.equal(got["min_t(wmdp)"], min_q(STACK, VALID))
    assert torch.equal(got["rank_t(wmdp)"], rank_q(STACK, VALID))
    assert torch.equal(got["wsum_t(wmdp)"], wsum_q(STACK, VALID))
    assert set(AGGREGATES) == {"min", "rank", "wsum"}
    rule = TokenRuleSpec.model_validate({**TOP, "source": "min_t(wmdp)", "k": 2})
    assert token_weights(rule, got, LABELS).flatten().nonzero().squeeze(1).tolist() == [1, 2]


def test_both_families_of_one_source_load_side_by_side(tmp_path):
    from .test_question_rules import _folder as question_folder

    mean = question_folder(tmp_path, PER_Q)
    _hand(tmp_path, side={"per_question": json.loads((tmp_path / "scores.json").read_text())["per_question"]})
    got = _load(mean, "min_q(wmdp)", "min_t(wmdp)")
    assert torch.equal(got["min_q(wmdp)"], got["min_t(wmdp)"])  # the same matrices, in another order


def test_leaf_files_are_checked_like_a_leaf_rule_reads_them(tmp_path):
    mean = _hand(tmp_path)
    side = json.loads((tmp_path / "scores.json").read_text())
    (tmp_path / "scores.json").write_text(json.dumps({**side, "data_fingerprint": "other"}))
    with pytest.raises(UserError, match="score source 'wmdp.alpha': data fingerprint mismatch") as err:
        _load(mean)
    assert str(tmp_path / "per_token_scores.alpha.pt") in str(err.value)
    (tmp_path / "scores.json").write_text(json.dumps(side))
    torch.save(torch.full((2, 4), float("nan")), tmp_path / "per_token_scores.mid.pt")
    with pytest.raises(UserError, match="'wmdp.mid': 8 NaN/inf values"):
        _load(mean)


def test_all_zero_leaves_name_the_leaf_tasks():
    with pytest.raises(UserError, match="every one of the 1 leaf tasks has score 0"):
        min_q(PER_Q[2:], VALID, "min_t(wmdp)")
    with pytest.raises(UserError, match="no leaf task of 2 has a proponent.*Use `min_t` or `rank_t`"):
        wsum_q(PER_Q[1:].abs(), VALID, "wsum_t(wmdp)")


@pytest.mark.parametrize(
    "case,match",
    [
        (
            "no-block",
            "scores.json.*hold no per-task scores \\(produced with `magic.query.per: mean`\\). Set `per: task`",
        ),
        ("per-question", "hold no per-task scores \\(produced with `magic.query.per: question`\\)"),
        ("no-sidecar", "per_token_scores.pt.*no scores.json lies beside the scores.*`magic.query.per: task`"),
        ("outside", "per_task.zeta.file must be a file name beside the sidecar"),
    ],
)
def test_a_folder_without_usable_leaves_is_a_user_error_naming_the_file_and_fix(tmp_path, case, match):
    mean = _hand(
        tmp_path,
        block=case not in ("no-block", "per-question"),
        side={"per_question": {"file": "x.pt", "questions": 3}} if case == "per-question" else None,
    )
    if case == "no-sidecar":
        (tmp_path / "scores.json").unlink()
    if case == "outside":
        side = json.loads((tmp_path / "scores.json").read_text())
        side["per_task"]["zeta"]["file"] = "../per_token_scores.zeta.pt"
        (tmp_path / "scores.json").write_text(json.dumps(side))
    with pytest.raises(UserError, match=match) as err:
        _load(mean, *ALL)
    assert str(tmp_path) in str(err.value) and "'min_t(wmdp)'" in str(err.value) or case == "outside"


# --------------------------------------------------------------------------- grammar and validation
def test_task_aggregates_parse_wherever_question_ones_do():
    assert list(AGGREGATIONS) == ["min_q", "rank_q", "wsum_q", "min_t", "rank_t", "wsum_t"]
    expr = parse_rule("min_t(wmdp) < -1 and not (rank_t(wmdp) >= 3 or wsum_q(wmdp) > 0)")
    assert sources(expr) == {"min_t(wmdp)", "rank_t(wmdp)", "wsum_q(wmdp)"}
    assert parse_source("wsum_t(wmdp)") == ("wsum_t", "wmdp", None)
    with pytest.raises(
        RuleSyntaxError,
        match="aggregates one leaf task; an aggregation reads the per-task scores.*write `min_t\\(wmdp\\)`",
    ):
        parse_rule("min_t(wmdp.toxin) < 0")


SIX = "the aggregations are min_q, rank_q, wsum_q (over the questions of a `per: question` producer) and min_t"


@pytest.mark.parametrize(
    "tokens,per,text",
    [
        ({**TOP, "source": "max_t(wmdp)", "k": 60}, None, "unknown aggregation 'max_t'"),
        ({"mode": "where", "where": "max_t(wmdp) < 0"}, None, "unknown aggregation 'max_t'"),
        ({**TOP, "source": "min_t(wmdp.toxin)", "k": 60}, None, "aggregates one leaf task"),
        (
            {**TOP, "source": "min_t(mmlu)", "k": 60},
            None,
            "score source 'mmlu' (through min_t(...)), which is not declared",
        ),
        (
            {**TOP, "source": "min_t(wmdp)", "k": 60},
            None,
            "writes no per-task scores (`magic.query.per: mean`). Set `per: task` under magic.query there",
        ),
        (
            {**TOP, "source": "rank_t(wmdp)", "k": 60},
            "question",
            "writes no per-task scores (`magic.query.per: question`). Set `per: task` under magic.query there",
        ),
        (
            {**TOP, "source": "min_q(wmdp)", "k": 60},
            "task",
            "writes no per-question scores (`magic.query.per: task`). Set `per: question` under magic.query there",
        ),
    ],
)
def test_bad_task_aggregate_rules_exit_2_without_a_traceback(project, tokens, per, text):
    result = _validate(project, tokens, per)
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and text in output, result.output
    if "max_t" in str(tokens):
        assert SIX in output and "min_t, rank_t, wsum_t (over the leaf tasks" in output


def test_a_task_aggregate_validates_against_a_per_task_producer(project):
    result = _validate(project, {**TOP, "source": "min_t(wmdp)", "k": 60, "where": "wsum_t(wmdp) < 0"}, per="task")
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- one run's grid (toy world)
def test_prepare_reads_min_t_from_the_leaf_files(toy_world, tmp_path):
    out, truth = truth_folder(tmp_path)
    gen = torch.Generator().manual_seed(1)
    leaves = {"toxin": truth, "host": torch.randn(truth.shape, generator=gen), "origin": torch.zeros_like(truth)}
    side = json.loads((out / "scores.json").read_text())
    side["per_task"] = write_task_scores(out, {k: TaskScores(k, 60, t, 0.0) for k, t in leaves.items()})
    (out / "scores.json").write_text(json.dumps(side))
    prep = prepare_top(tmp_path, out, "min_t(wmdp)", 25)
    expected = expected_min_top([leaves["host"], truth], prep.grid.labels, 25)  # origin: 0, left out
    assert set(prep.weights.flatten().nonzero().squeeze(1).tolist()) == expected
    assert prep.stats.selected_tokens == 25 == prep.stats.ascending_tokens


# --------------------------------------------------------------------------- doctor D15
def _doctor_spec(tmp: Path, folder: Path, source: str = "min_t(wmdp)") -> Path:
    return doctor_spec(tmp, folder, source)


def _toy_leaves(tmp: Path, peaks: dict[str, float], **kw) -> Path:
    """250 x 64 leaf files (forget_toxin's grid), leaf l's max |score| = peaks[l]."""
    gen = torch.Generator().manual_seed(0)
    leaves = {}
    for leaf, peak in peaks.items():
        t = torch.rand(250, 64, generator=gen) * 2 - 1
        t[:, 0] = 0.0
        leaves[leaf] = t / t.abs().max() * peak
    _folder(tmp / "scores", leaves, **kw)
    return tmp / "scores"


def test_doctor_warns_on_near_zero_leaves_and_not_on_healthy_ones(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()
    peaks = {"host": 1.0, "transmission": 0.5, "technique": 2e-4, "origin": 0.0, "toxin": 0.8}
    bad = _doctor_spec(tmp_path / "bad", _toy_leaves(tmp_path / "bad", peaks))
    (d15,) = [f for f in diagnose([bad])[0] if f.code == "D15"]
    assert d15.severity == "warning" and "2 of 5 leaf tasks have near-zero scores" in d15.message
    assert "`min_t(wmdp)`" in d15.message and "for: origin, technique" in d15.evidence[0]
    assert "scores.json" in d15.evidence[1] and "wsum_t(wmdp)" in d15.fix and "min_t and rank_t" in d15.fix
    assert (
        "1 of 5 leaf tasks" in [f for f in diagnose([bad], Thresholds(near_zero=0.0))[0] if f.code == "D15"][0].message
    )
    good = _doctor_spec(tmp_path / "good", _toy_leaves(tmp_path / "good", {"a": 1.0, "b": 0.4}), "rank_t(wmdp)")
    assert not [f for f in diagnose([good])[0] if f.code == "D15"]


def test_doctor_reports_a_folder_without_leaves_as_an_error(tmp_path):
    spec = _doctor_spec(tmp_path, _toy_leaves(tmp_path, {"a": 1.0}, block=False), "wsum_t(wmdp)")
    (d15,) = [f for f in diagnose([spec])[0] if f.code == "D15"]
    assert d15.severity == "error" and "the leaf-task scores of `wmdp` cannot be used" in d15.message
    assert "no per-task scores" in d15.evidence[0] and "`per: task`" in d15.fix

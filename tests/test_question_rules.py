"""Aggregations of per-question scores (`magic.query.per: question`): `min_q(x)`, `rank_q(x)`, `wsum_q(x)` as
score sources of `where` expressions and `mode: top` rules. Known answers on hand-made tensors, the grammar, the
loader's refusals of bad files (UserError, exit 2 through the CLI), validation against the producer, one run
through `prepare` on the toy world, and doctor's D15 on near-zero questions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.doctor import Thresholds, diagnose
from unlearnspec.errors import UserError
from unlearnspec.scores import token_weights
from unlearnspec.scores.aggregate import QUESTIONS_FILE, min_q, near_zero_questions, rank_q, source_aggregates, wsum_q
from unlearnspec.spec import ScoreSourceSpec, TokenRuleSpec
from unlearnspec.spec.rules import RuleSyntaxError, parse_rule, parse_source, sources, split_source

from .conftest import SPECS
from .fixtures.aggregates import TOP, doctor_spec, expected_min_top, prepare_top, truth_folder
from .fixtures.reportkit import spec_project, validate_data

# 2 rows x 4 columns; row 1 is padded from column 2. Valid targets (column 0 never is one): flat 1, 2, 3, 5.
LABELS = torch.tensor([[5, 6, 7, 8], [5, 6, -100, -100]])
VALID = torch.tensor([[False, True, True, True], [False, True, False, False]])
# q0: valid -2, 1, 0, -1: scale 1. q1: valid 4, -8, 4, 0: scale 4. q2: 0 on every valid token (junk elsewhere):
# scale 0, left out by every aggregation.
PER_Q = torch.tensor(
    [
        [[9.0, -2.0, 1.0, 0.0], [9.0, -1.0, -50.0, 3.0]],
        [[-9.0, 4.0, -8.0, 4.0], [9.0, 0.0, 7.0, -7.0]],
        [[7.0, 0.0, 0.0, 0.0], [-3.0, 0.0, -50.0, 1.0]],
    ]
)
SRC = ScoreSourceSpec(path="x/per_token_scores.pt", alignment="target")


def _grid(values: dict[int, float], fill: float = 0.0) -> torch.Tensor:
    out = torch.full((2, 4), fill)
    for flat, v in values.items():
        out.view(-1)[flat] = v
    return out


# --------------------------------------------------------------------------- the aggregations, by hand
def test_min_q_is_the_min_of_the_per_question_normalised_scores():
    assert torch.equal(min_q(PER_Q, VALID), _grid({1: -2.0, 2: -2.0, 3: 0.0, 5: -1.0}))


def test_rank_q_is_the_best_rank_over_questions_ties_by_grid_position():
    # q0 ascending: flat 1 (-2), 5 (-1), 3 (0), 2 (1); q1: 2 (-8), 5 (0), 1 (4), 3 (4: tie, after flat 1)
    got = rank_q(PER_Q, VALID)
    assert got.is_floating_point() and torch.equal(got, _grid({1: 0.0, 2: 0.0, 3: 2.0, 5: 1.0}, fill=8.0).double())


def test_wsum_q_weights_questions_by_their_strongest_proponent():
    # a = (2, 8, 0) / 10; 0.2 * q0 / 1 + 0.8 * q1 / 4
    assert torch.allclose(wsum_q(PER_Q, VALID), _grid({1: 0.4, 2: -1.4, 3: 0.8, 5: -0.2}))


def test_all_zero_questions_and_no_proponents_are_user_errors():
    with pytest.raises(UserError, match="every one of the 1 questions has score 0"):
        min_q(PER_Q[2:], VALID, "min_q(wmdp)")
    with pytest.raises(UserError, match="score source 'rank_q\\(wmdp\\)'"):
        rank_q(PER_Q[2:], VALID, "rank_q(wmdp)")
    with pytest.raises(UserError, match="no question of 2 has a proponent"):
        wsum_q(PER_Q[1:].abs(), VALID, "wsum_q(wmdp)")


def test_top_k_by_rank_q_is_the_union_of_the_per_question_top_lists():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(1, 50, (5, 9), generator=gen)
    labels[1, 6:] = labels[3, 2:] = -100
    valid = (labels != -100) & (torch.arange(9) > 0)
    per_q = torch.randn(6, 5, 9, generator=gen).round(decimals=1)  # rounding: ties inside a question
    flat = valid.flatten().nonzero().squeeze(1)
    tops = [flat[torch.sort(per_q[q].flatten()[flat], stable=True).indices] for q in range(6)]
    for j in range(1, 5):
        union = {int(i) for t in tops for i in t[:j]}
        rule = TokenRuleSpec.model_validate({**TOP, "source": "rank_q(wmdp)", "k": len(union)})
        w = token_weights(rule, {"rank_q(wmdp)": rank_q(per_q, valid)}, labels)
        assert set(w.flatten().nonzero().squeeze(1).tolist()) == union


# --------------------------------------------------------------------------- the grammar
def test_aggregates_parse_as_source_names_and_grouping_still_works():
    expr = parse_rule("(min_q(wmdp) < -1)and not(rank_q(wmdp)>=3 or wsum_q(mmlu) > 0) or wmdp.toxin < 0")
    assert sources(expr) == {"min_q(wmdp)", "rank_q(wmdp)", "wsum_q(mmlu)", "wmdp.toxin"}
    assert parse_source("min_q(wmdp)") == ("min_q", "wmdp", None) and split_source("rank_q(wmdp)") == ("wmdp", None)
    assert parse_source("wmdp.toxin") == (None, "wmdp", "toxin") and parse_source("wmdp") == (None, "wmdp", None)


@pytest.mark.parametrize(
    "text,match",
    [
        (
            "max_q(wmdp) < 0",
            "unknown aggregation 'max_q'; the aggregations are min_q, rank_q, wsum_q \\(over the questions.*"
            "min_t, rank_t, wsum_t \\(over the leaf tasks",
        ),
        ("min_q(wmdp.toxin) < 0", "aggregates one leaf task.*write `min_q\\(wmdp\\)`"),
        ("min_q() < 0", "needs a score source name inside"),
        ("min_q (wmdp) < 0", "no space before its parenthesis"),
        ("min_q(wmdp)", "comparison operator"),
        ("not(wmdp) < 0", "comparison operator"),
    ],
)
def test_bad_aggregates_are_syntax_errors_naming_the_allowed_ones(text, match):
    with pytest.raises(RuleSyntaxError, match=match):
        parse_rule(text)


def test_where_expressions_read_aggregates_with_the_mean_scores():
    scores = {"min_q(wmdp)": min_q(PER_Q, VALID), "wmdp": PER_Q.mean(0)}
    rule = TokenRuleSpec.model_validate({"mode": "where", "where": "min_q(wmdp) < -1.5 or wmdp > 2"})
    # mean scores at flat 1, 2, 3, 5: 2/3, -7/3, 4/3, -1/3; min_q: -2, -2, 0, -1
    assert torch.equal(token_weights(rule, scores, LABELS), _grid({1: 1.0, 2: 1.0}))
    top = TokenRuleSpec.model_validate({**TOP, "source": "min_q(wmdp)", "k": 2, "where": "wmdp >= -1"})
    assert torch.equal(token_weights(top, scores, LABELS), _grid({1: -1.0, 5: -1.0}))  # flat 2 fails the filter


# --------------------------------------------------------------------------- files
def _folder(tmp: Path, per_q: torch.Tensor | object, **block) -> Path:
    """A score folder: mean file, per-question file and a sidecar with the keys the run reads."""
    tmp.mkdir(parents=True, exist_ok=True)
    q, n, s = per_q.shape if isinstance(per_q, torch.Tensor) and per_q.ndim == 3 else (3, 2, 4)
    torch.save(PER_Q.mean(0), tmp / "per_token_scores.pt")
    torch.save(per_q, tmp / QUESTIONS_FILE)
    entry = {
        "file": QUESTIONS_FILE,
        "questions": q,
        "doc_keys": [f"t/{i}" for i in range(q)],
        "weights": [1 / q] * q,
        "chunk": 2,
        "reverse_seconds": 0.5,
        **block,
    }
    side = {"alignment": "target", "N": n, "S": s, "data_fingerprint": "fp", "per_question": entry}
    (tmp / "scores.json").write_text(json.dumps({k: v for k, v in side.items() if v is not None}))
    return tmp / "per_token_scores.pt"


def _load(mean: Path, *fulls: str, src: ScoreSourceSpec = SRC, labels: torch.Tensor = LABELS) -> dict:
    return source_aggregates(fulls or ("min_q(wmdp)",), mean, src, labels, "fp", lambda w: f"fp{w}")


def test_a_score_folder_loads_into_every_aggregate_under_its_rule_name(tmp_path):
    got = _load(_folder(tmp_path, PER_Q), "min_q(wmdp)", "rank_q(wmdp)", "wsum_q(wmdp)")
    assert set(got) == {"min_q(wmdp)", "rank_q(wmdp)", "wsum_q(wmdp)"}
    assert torch.equal(got["min_q(wmdp)"], min_q(PER_Q, VALID)) and torch.equal(
        got["rank_q(wmdp)"], rank_q(PER_Q, VALID)
    )
    rule = TokenRuleSpec.model_validate({**TOP, "source": "min_q(wmdp)", "k": 2})
    assert torch.equal(token_weights(rule, got, LABELS), _grid({1: -1.0, 2: -1.0}))


def test_input_alignment_and_wider_files_are_handled_like_the_mean_file(tmp_path):
    wide = torch.cat([PER_Q, torch.full((3, 2, 2), 5.0)], dim=2)  # 6 columns, 4 used
    shifted = torch.zeros_like(wide)
    shifted[..., :-1] = wide[..., 1:]  # input alignment: column t holds the loss of token t + 1
    mean = _folder(tmp_path, shifted, file=QUESTIONS_FILE)
    side = json.loads((tmp_path / "scores.json").read_text())
    (tmp_path / "scores.json").write_text(json.dumps({**side, "alignment": "input", "S": 6}))
    with pytest.raises(UserError, match="truncate_columns: true"):
        _load(mean)
    src = ScoreSourceSpec(path="x/per_token_scores.pt", truncate_columns=True)
    with pytest.raises(UserError, match="data fingerprint mismatch"):  # recorded "fp", the grid at width 6 is "fp6"
        _load(mean, src=src)
    (tmp_path / "scores.json").write_text(json.dumps({**side, "alignment": "input", "S": 6, "data_fingerprint": "fp6"}))
    assert torch.equal(_load(mean, src=src)["min_q(wmdp)"], min_q(PER_Q, VALID))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


BAD = [
    (
        "wrong-q",
        lambda t: _folder(t, PER_Q, questions=4, doc_keys=None),
        "holds 3 questions but scores.json says per_question.questions = 4",
    ),
    ("2-d", lambda t: _folder(t, PER_Q[0]), "expected per-question scores \\[Q, N, S\\]"),
    ("nan", lambda t: _folder(t, _with_nan()), "1 NaN/inf values \\(first at question 1, row 0, column 2\\)"),
    ("no-block", lambda t: _folder(t, PER_Q, file=None) and _drop_block(t), "no per-question scores.*`per: question`"),
    ("pickle", lambda t: _folder(t, {"scores": PER_Q, "payload": _Exploit()}), "refused to load"),
    ("int", lambda t: _folder(t, PER_Q.long()), "must be floating point"),
    ("wrong-n", lambda t: _folder(t, torch.zeros(3, 5, 4)), "5 rows of scores but 2 training rows"),
    (
        "outside",
        lambda t: _folder(t, PER_Q, file="../per_question_scores.pt"),
        "must be a file name beside the sidecar",
    ),
    ("bad-count", lambda t: _folder(t, PER_Q, questions="3"), "per_question.questions must be"),
    ("keys", lambda t: _folder(t, PER_Q, doc_keys=["a"]), "per_question.doc_keys must list one key per question"),
    ("gone", lambda t: _folder(t, PER_Q, file="other.pt"), "score file not found"),
    (
        "no-sidecar",
        lambda t: _folder(t, PER_Q) and (t / "scores.json").unlink() or t / "per_token_scores.pt",
        "no scores.json lies beside",
    ),
]


def _with_nan() -> torch.Tensor:
    out = PER_Q.clone()
    out[1, 0, 2] = float("nan")
    return out


def _drop_block(folder: Path) -> Path:
    side = json.loads((folder / "scores.json").read_text())
    side.pop("per_question")
    (folder / "scores.json").write_text(json.dumps(side))
    return folder / "per_token_scores.pt"


@pytest.mark.parametrize("make,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_per_question_files_are_user_errors_naming_the_file(tmp_path, make, match):
    mean = make(tmp_path / "s")
    with pytest.raises(UserError, match=match) as err:
        _load(mean)
    assert str(tmp_path / "s") in str(err.value)


# --------------------------------------------------------------------------- validation through the CLI
TOPK = SPECS / "controls" / "magic_topk.yaml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return spec_project(tmp_path, "fixed")


def _validate(project: Path, tokens: dict, per: str | None = None):
    if per is not None:
        producer = project / "specs" / "fixed" / "magic_wmdp.yaml"
        data = yaml.safe_load(producer.read_text())
        data["magic"]["query"]["per"] = per
        producer.write_text(yaml.safe_dump(data))
    data = yaml.safe_load(TOPK.read_text())
    data["tokens"] = tokens
    return validate_data(project, data)


@pytest.mark.parametrize(
    "tokens,text",
    [
        (
            {**TOP, "source": "max_q(wmdp)", "k": 60},
            "unknown aggregation 'max_q'; the aggregations are min_q, rank_q, wsum_q",
        ),
        ({"mode": "where", "where": "max_q(wmdp) < 0"}, "unknown aggregation 'max_q'"),
        ({**TOP, "source": "min_q(wmdp.toxin)", "k": 60}, "aggregates one leaf task"),
        ({**TOP, "source": "min_q(mmlu)", "k": 60}, "score source 'mmlu' (through min_q(...)), which is not declared"),
        (
            {**TOP, "source": "min_q(wmdp)", "k": 60},
            "writes no per-question scores (`magic.query.per: mean`). Set `per: question`",
        ),
    ],
)
def test_bad_aggregate_rules_exit_2_without_a_traceback(project, tokens, text):
    result = _validate(project, tokens)
    assert result.exit_code == 2 and text in result.output, result.output


def test_an_aggregate_rule_validates_against_a_per_question_producer(project):
    assert (
        _validate(
            project, {**TOP, "source": "min_q(wmdp)", "k": 60, "where": "rank_q(wmdp) < 100"}, per="question"
        ).exit_code
        == 0
    )
    result = _validate(project, {**TOP, "source": "wmdp.x", "k": 60}, per="question")  # a leaf needs `per: task`
    assert result.exit_code == 2 and "`per: task`" in result.output


@pytest.mark.parametrize(
    "rule, message",
    [
        ("min_q(rand) < 0", "has no per-question scores"),
        ("rank_t(rand) < 0", "has no per-task scores.*`magic.query.per: task`"),
    ],
)
def test_built_in_sources_have_no_per_question_or_per_task_scores(rule: str, message: str):
    data = yaml.safe_load((SPECS / "fixed" / "selective.yaml").read_text())
    data["scores"] = {"rand": {"random": {"seed": 0}}}
    data["tokens"] = {"mode": "where", "where": rule}
    from unlearnspec.spec.load import validate_data as validate

    with pytest.raises(UserError, match=message):
        validate(data, None, "x.yaml")


# --------------------------------------------------------------------------- one run's grid (toy world)
def test_prepare_reads_min_q_from_the_per_question_file(toy_world, tmp_path):
    out, truth = truth_folder(tmp_path)
    gen = torch.Generator().manual_seed(1)
    per_q = torch.stack([truth, torch.randn(truth.shape, generator=gen), torch.zeros_like(truth)])
    torch.save(per_q, out / QUESTIONS_FILE)
    side = json.loads((out / "scores.json").read_text())
    side["per_question"] = {
        "file": QUESTIONS_FILE,
        "questions": 3,
        "doc_keys": ["a/0", "a/1", "a/2"],
        "weights": [1 / 3] * 3,
        "chunk": 3,
        "reverse_seconds": 0.0,
    }
    (out / "scores.json").write_text(json.dumps(side))
    prep = prepare_top(tmp_path, out, "min_q(wmdp)", 25)
    assert set(prep.weights.flatten().nonzero().squeeze(1).tolist()) == expected_min_top(
        list(per_q[:2]), prep.grid.labels, 25
    )
    assert prep.stats.selected_tokens == 25 == prep.stats.ascending_tokens  # q2 is 0 everywhere: left out


# --------------------------------------------------------------------------- doctor D15
def _doctor_spec(tmp: Path, folder: Path, source: str = "min_q(wmdp)") -> Path:
    return doctor_spec(tmp, folder, source)


def _toy_folder(tmp: Path, peaks: list[float]) -> Path:
    """250 x 64 scores (forget_toxin's grid) for len(peaks) questions, question q's max |score| = peaks[q]."""
    gen = torch.Generator().manual_seed(0)
    per_q = torch.rand(len(peaks), 250, 64, generator=gen) * 2 - 1
    per_q[:, :, 0] = 0.0
    per_q = per_q / per_q.abs().amax(dim=(1, 2), keepdim=True) * torch.tensor(peaks).view(-1, 1, 1)
    folder = tmp / "scores"
    folder.mkdir()
    torch.save(per_q.mean(0), folder / "per_token_scores.pt")
    torch.save(per_q, folder / QUESTIONS_FILE)
    side = {
        "alignment": "target",
        "N": 250,
        "S": 64,
        "per_question": {
            "file": QUESTIONS_FILE,
            "questions": len(peaks),
            "doc_keys": [f"toy_wmdp/{i}" for i in range(len(peaks))],
            "weights": [1 / len(peaks)] * len(peaks),
            "chunk": 1,
            "reverse_seconds": 1.0,
        },
    }
    (folder / "scores.json").write_text(json.dumps(side))
    return folder


def test_near_zero_questions_against_the_median():
    per_q = torch.zeros(4, 2, 4)
    for q, peak in enumerate([1.0, 2.0, 1e-5, 0.0]):
        per_q[q, 0, 1] = -peak
    per_q[3, 1, 2] = 9.0  # an invalid token: not counted
    assert near_zero_questions(per_q, VALID, 1e-3) == ([2, 3], pytest.approx(0.500005))
    assert near_zero_questions(per_q, VALID, 0.0)[0] == [3]


def test_doctor_warns_on_near_zero_questions_and_not_on_healthy_ones(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()
    bad = _doctor_spec(tmp_path / "bad", _toy_folder(tmp_path / "bad", [1.0, 0.5, 2e-4, 0.0, 0.8]))
    findings, _ = diagnose([bad])
    (d15,) = [f for f in findings if f.code == "D15"]
    assert d15.severity == "warning" and d15.rule == "per-question-scores"
    assert "2 of 5 questions have near-zero scores" in d15.message and "`min_q(wmdp)`" in d15.message
    assert "q2 (toy_wmdp/2), q3 (toy_wmdp/3)" in d15.evidence[0] and "contribute its own top tokens" in d15.fix
    assert not [f for f in diagnose([bad], Thresholds(near_zero=1e-4))[0] if f.code == "D15" and "2 of 5" in f.message]
    good = _doctor_spec(tmp_path / "good", _toy_folder(tmp_path / "good", [1.0, 0.5, 0.3, 0.8]), "wsum_q(wmdp)")
    assert not [f for f in diagnose([good])[0] if f.code == "D15"]
    result = CliRunner().invoke(app, ["doctor", str(bad), "--format", "json", "--near-zero", "0"])
    found = [f for f in json.loads(result.output)["findings"] if f["code"] == "D15"]
    assert "1 of 5 questions" in found[0]["message"]
    wrong = CliRunner().invoke(app, ["doctor", str(bad), "--near-zero", "2"])
    assert wrong.exit_code == 2 and "--near-zero" in wrong.output and "Traceback" not in wrong.output


def test_doctor_reports_unusable_per_question_scores_as_an_error(tmp_path):
    folder = _toy_folder(tmp_path, [1.0, 0.5])
    _drop_block(folder)
    findings, _ = diagnose([_doctor_spec(tmp_path, folder, "rank_q(wmdp)")])
    (d15,) = [f for f in findings if f.code == "D15"]
    assert d15.severity == "error" and "no per-question scores" in d15.evidence[0]
    assert "`per: question`" in d15.evidence[0]

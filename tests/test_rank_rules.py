"""Rank-based token rules (`tokens.mode: top`, issue 16 item 2): the k (or fraction) strongest valid tokens
of one score source get the `selected` weight, every other valid token the `rest` weight; an optional `where`
filters the candidates before ranking. Weights on hand-made grids, ties, counts, validation through the CLI,
token stats and the doctor's shares. No training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.doctor import diagnose
from unlearnspec.doctor.top_share import top_ranked_share, top_selected_share
from unlearnspec.errors import UserError
from unlearnspec.scores import token_stats, token_weights
from unlearnspec.spec import TokenRuleSpec, json_schema
from unlearnspec.spec.load import load_spec
from unlearnspec.spec.sections import top_count

from .conftest import SPECS
from .fixtures.reportkit import make_project, spec_project, validate_data, write_json_atomic, write_run

TOPK = SPECS / "controls" / "magic_topk.yaml"

# 2 rows x 6 columns. Column 0 never counts (target alignment) and row 1 is padded from column 4, so the
# very negative scores there (-99) must never be ranked. Valid: row 0 cols 1-5, row 1 cols 1-3 (8 tokens).
LABELS = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, -100, -100]])
WMDP = torch.tensor([[-99.0, -1.0, 3.0, -2.0, -1.0, 0.0], [-99.0, 2.0, -1.0, -5.0, -99.0, -99.0]])
# Valid WMDP scores, flat index (row * 6 + col): 1:-1, 2:3, 3:-2, 4:-1, 5:0, 7:2, 8:-1, 9:-5.
MMLU = torch.tensor([[0.0, 1.0, 1.0, -1.0, 1.0, 1.0], [0.0, 1.0, 1.0, -3.0, 0.0, 0.0]])
SCORES = {"wmdp": WMDP, "mmlu": MMLU}
VALID = int(((LABELS != -100) & (torch.arange(6) > 0)).sum())


def _rule(**kw) -> TokenRuleSpec:
    base = {"mode": "top", "source": "wmdp", "order": "most_negative", "selected": "ascend", "rest": "mask"}
    return TokenRuleSpec.model_validate({**base, **kw})


def _grid(cells: dict[tuple[int, int], float], rest: float = 0.0) -> torch.Tensor:
    """Expected weights: `rest` on every valid token, `cells` overriding, 0 on invalid ones."""
    valid = (LABELS != -100) & (torch.arange(6) > 0)
    w = valid.float() * rest
    for (r, c), v in cells.items():
        w[r, c] = v
    return w


# --------------------------------------------------------------------------- selection and weights
def test_top_k_most_negative_selects_exactly_the_k_strongest_valid_proponents_ties_by_flat_index():
    assert VALID == 8
    # ranking: -5 (1,3), -2 (0,3), then three tokens at -1: (0,1) (0,4) (1,2) in flat-index order
    assert torch.equal(token_weights(_rule(k=2), SCORES, LABELS), _grid({(1, 3): -1, (0, 3): -1}))
    assert torch.equal(token_weights(_rule(k=3), SCORES, LABELS), _grid({(1, 3): -1, (0, 3): -1, (0, 1): -1}))
    assert torch.equal(
        token_weights(_rule(k=4), SCORES, LABELS), _grid({(1, 3): -1, (0, 3): -1, (0, 1): -1, (0, 4): -1})
    )
    w = token_weights(_rule(k=3), SCORES, LABELS)
    assert w[:, 0].eq(0).all() and w[1, 4:].eq(0).all()  # the -99 at column 0 and under padding never count


def test_top_k_most_positive_and_ties_by_flat_index():
    # ranking: 3 at (0,2), 2 at (1,1), then 0 at (0,5)
    assert torch.equal(
        token_weights(_rule(k=2, order="most_positive"), SCORES, LABELS), _grid({(0, 2): -1, (1, 1): -1})
    )
    tied = torch.tensor([[0.0, 1.0, 2.0, 2.0, -0.0, 0.0], [0.0, 2.0, 0.0, 1.0, 0.0, 0.0]])
    got = token_weights(_rule(k=4, order="most_positive", selected="descend"), {"wmdp": tied}, LABELS)
    assert torch.equal(got, _grid({(0, 2): 1, (0, 3): 1, (1, 1): 1, (0, 1): 1}))  # 2,2,2 by index, then the first 1
    # -0.0 and 0.0 are one value: ties among them go by index in both directions
    zeros = torch.tensor([[0.0, -0.0, 0.0, -0.0, 0.0, 0.0], [0.0, 0.0, -0.0, 0.0, 0.0, 0.0]])
    for order in ("most_negative", "most_positive"):
        got = token_weights(_rule(k=3, order=order), {"wmdp": zeros}, LABELS)
        assert torch.equal(got, _grid({(0, 1): -1, (0, 2): -1, (0, 3): -1}))


def test_fraction_is_of_all_valid_tokens_rounded_half_up_at_least_one():
    assert [top_count(None, f, 8) for f in (0.25, 0.3, 0.3125, 0.01, 1.0)] == [2, 2, 3, 1, 8]  # 2.5 -> 3: halves up
    assert torch.equal(token_weights(_rule(fraction=0.25), SCORES, LABELS), _grid({(1, 3): -1, (0, 3): -1}))
    assert torch.equal(token_weights(_rule(fraction=1.0), SCORES, LABELS), _grid({}, rest=-1.0))


def test_selected_and_rest_weights():
    top2 = {(1, 3): 1.0, (0, 3): 1.0}
    assert torch.equal(token_weights(_rule(k=2, selected="descend"), SCORES, LABELS), _grid(top2))
    half = token_weights(_rule(k=2, selected=-0.5, rest="descend"), SCORES, LABELS)
    assert torch.equal(half, _grid({(1, 3): -0.5, (0, 3): -0.5}, rest=1.0))
    assert torch.equal(
        token_weights(_rule(k=2, selected=2, rest="mask"), SCORES, LABELS), _grid({(1, 3): 2.0, (0, 3): 2.0})
    )


def test_combined_rule_ranks_among_tokens_that_pass_where():
    """Top-2 WMDP proponents that are not MMLU proponents: (1,3) and (0,3) are MMLU proponents (< 0), so
    the two strongest WMDP proponents among the rest are the -1 ties (0,1) and (0,4), by flat index.
    Every token outside the selection (filtered out or not ranked high enough) gets `rest`."""
    rule = _rule(k=2, where="mmlu >= 0")
    assert rule.referenced_sources() == {"wmdp", "mmlu"}
    assert torch.equal(token_weights(rule, SCORES, LABELS), _grid({(0, 1): -1, (0, 4): -1}))
    with_rest = token_weights(_rule(k=2, where="mmlu >= 0", rest="descend"), SCORES, LABELS)
    assert torch.equal(with_rest, _grid({(0, 1): -1, (0, 4): -1}, rest=1.0))  # (1,3), (0,3) descend: filtered out
    # `fraction` stays a share of ALL valid tokens under a filter: 0.25 x 8 = 2 tokens again
    assert torch.equal(
        token_weights(_rule(fraction=0.25, where="mmlu >= 0"), SCORES, LABELS), _grid({(0, 1): -1, (0, 4): -1})
    )


def test_leaf_source_is_ranked_like_a_mean_source():
    leaf = {"wmdp": torch.zeros_like(WMDP), "wmdp.toxin": WMDP}
    rule = _rule(k=2, source="wmdp.toxin")
    assert rule.referenced_sources() == {"wmdp.toxin"}
    assert torch.equal(token_weights(rule, leaf, LABELS), _grid({(1, 3): -1, (0, 3): -1}))
    both = _rule(k=1, source="wmdp.toxin", where="wmdp.toxin > -5 and mmlu >= 0")
    assert torch.equal(token_weights(both, {**leaf, "mmlu": MMLU}, LABELS), _grid({(0, 1): -1}))


def test_k_larger_than_the_candidates_is_an_error_naming_k_and_the_counts():
    with pytest.raises(UserError) as err:
        token_weights(_rule(k=9), SCORES, LABELS)
    text = err.value.problems[0].render()
    assert "k = 9" in text and "8 valid target tokens" in text and "tokens.k" in text and "never clamped" in text
    token_weights(_rule(k=8), SCORES, LABELS)  # exactly the valid count is fine
    with pytest.raises(UserError) as err:  # 6 candidates pass the filter; k counts candidates
        token_weights(_rule(k=7, where="mmlu >= 0"), SCORES, LABELS)
    assert "6 valid target tokens pass `where: mmlu >= 0` (of 8 valid)" in err.value.problems[0].render()


def test_token_stats_count_ascent_descent_and_the_selected_share():
    s = token_stats(token_weights(_rule(k=3), SCORES, LABELS), LABELS, "selected")
    assert (s.valid_tokens, s.selected_tokens, s.ascending_tokens, s.descending_tokens) == (8, 3, 3, 0)
    assert s.selected_fraction == pytest.approx(3 / 8) and s.per_token_lr_factor == pytest.approx(8 / 3)
    s = token_stats(token_weights(_rule(k=3, rest="descend"), SCORES, LABELS), LABELS, "selected")
    assert (s.selected_tokens, s.ascending_tokens, s.descending_tokens, s.selected_fraction) == (8, 3, 5, 1.0)


# --------------------------------------------------------------------------- validation through the CLI
@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root holding copies of specs/fixed/ and specs/per_task/ (producers and controls)."""
    return spec_project(tmp_path, "fixed", "per_task")


def _validate(project: Path, tokens: dict, base: Path = TOPK, scores: dict | None = None):
    data = yaml.safe_load(base.read_text())
    data["tokens"] = tokens
    if scores is not None:
        data["scores"] = scores
    return validate_data(project, data)


TOP = {"mode": "top", "source": "wmdp", "k": 60, "order": "most_negative", "selected": "ascend", "rest": "mask"}
MMLU_SRC = {
    "wmdp": {"produced_by": "specs/fixed/magic_wmdp.yaml", "alignment": "target"},
    "mmlu": {"produced_by": "specs/fixed/magic_mmlu.yaml", "alignment": "target"},
}


def test_the_shipped_rank_spec_validates_and_shows_its_fields():
    result = CliRunner().invoke(app, ["validate", str(TOPK)])
    assert result.exit_code == 0, result.output
    spec = load_spec(TOPK)
    assert (spec.tokens.mode, spec.tokens.k, spec.tokens.order, spec.tokens.selected, spec.tokens.rest) == (
        "top",
        60,
        "most_negative",
        "ascend",
        "mask",
    )
    shown = CliRunner().invoke(app, ["show", str(TOPK)])
    assert shown.exit_code == 0 and yaml.safe_load(shown.stdout)["tokens"] == TOP
    props = json_schema()["$defs"]["TokenRuleSpec"]["properties"]
    assert {"k", "fraction", "order", "selected", "rest"} <= set(props)
    assert "top" in props["mode"]["enum"] and all(
        props[f].get("description") for f in ("k", "fraction", "order", "selected", "rest")
    )


def test_combined_and_leaf_rules_validate(project):
    assert _validate(project, {**TOP, "where": "mmlu >= 0"}, scores=MMLU_SRC).exit_code == 0
    leaf = {**TOP, "source": "wmdp.toxin", "k": 5}
    assert _validate(project, leaf, base=SPECS / "per_task" / "forget_toxin.yaml").exit_code == 0


MISUSE = [
    ({**TOP, "k": 0}, "tokens.k", "`k: 0` selects no token"),
    ({**TOP, "k": -3}, "tokens.k", "`k: -3` selects no token"),
    ({**TOP, "fraction": 0.1}, "tokens.fraction", "mutually exclusive"),
    ({**{k: v for k, v in TOP.items() if k != "k"}}, "tokens.k", "needs `k`"),
    ({**{k: v for k, v in TOP.items() if k != "k"}, "fraction": 1.5}, "tokens.fraction", "outside (0, 1]"),
    ({**{k: v for k, v in TOP.items() if k != "k"}, "fraction": 0.0}, "tokens.fraction", "outside (0, 1]"),
    ({**TOP, "k": 2.5}, "tokens.k", "valid integer"),
    ({**{k: v for k, v in TOP.items() if k != "source"}}, "tokens.source", "needs `source`"),
    ({**TOP, "source": "mlu"}, "tokens", "(`tokens.source`) reads score source 'mlu', which is not declared"),
    ({**TOP, "where": "mmlu >= 0"}, "tokens", "(`tokens.where`) reads score source 'mmlu', which is not declared"),
    ({**TOP, "source": "rank(wmdp)"}, "tokens.source", "not a score source name"),
    ({**TOP, "source": "wmdp.toxin"}, "tokens", "writes only mean-query scores"),
    ({**{k: v for k, v in TOP.items() if k != "order"}}, "tokens.order", "needs `order`"),
    ({**TOP, "order": "biggest"}, "tokens.order", "'most_negative' or 'most_positive'"),
    ({**TOP, "selected": "up"}, "tokens.selected", "`selected: up` is not a weight"),
    ({**TOP, "selected": 0}, "tokens.selected", "`selected: 0` masks"),
    ({**TOP, "selected": "descend", "rest": "descend"}, "tokens.selected", "same weight"),
    ({**TOP, "rest": "ascend"}, "tokens.rest", "'mask' or 'descend'"),
    ({"mode": "where", "where": "wmdp < 0", "k": 60}, "tokens.k", "only read with `mode: top`"),
    ({"mode": "sign", "source": "wmdp", "order": "most_negative"}, "tokens.order", "only read with `mode: top`"),
]


@pytest.mark.parametrize("tokens,field,text", MISUSE, ids=[f"{i}-{m[1]}" for i, m in enumerate(MISUSE)])
def test_misuse_is_refused_with_exit_2_naming_the_field(project, tokens, field, text):
    result = _validate(project, tokens)
    assert result.exit_code == 2, result.output
    assert f" {field}: " in result.output and text in result.output, result.output


# --------------------------------------------------------------------------- doctor
def test_doctor_selected_share_d6_and_changed_share():
    spec = load_spec(TOPK)
    share = top_selected_share(spec)  # k = 60 of at most 1000 x 1023 valid tokens: a bound, said so
    assert not share.exact and share.fraction == pytest.approx(60 / 1_023_000) and "known only once" in share.text
    by_fraction = spec.model_copy(update={"tokens": _rule(fraction=0.01)})
    assert top_selected_share(by_fraction).fraction == 0.01 and top_selected_share(by_fraction).exact
    descend_rest = spec.model_copy(update={"tokens": _rule(k=60, rest="descend")})
    assert top_selected_share(descend_rest).fraction == 1.0
    # ranked share: what the scores pick (k / V), whatever the rule does to the rest (issue 22: not "100% changed")
    assert top_ranked_share(_rule(k=60), None) is None  # k / V unknown before a run
    share, what = top_ranked_share(_rule(k=60), 6000)
    assert share == pytest.approx(0.01) and "trains the selected tokens alone" in what
    assert top_ranked_share(_rule(k=60, selected=0.5, rest="descend"), 6000)[0] == pytest.approx(0.01)
    assert top_ranked_share(_rule(fraction=0.02, selected="descend"), None)[0] == pytest.approx(0.02)
    findings, _ = diagnose([TOPK])
    (d6,) = [f for f in findings if f.code == "D6"]
    assert d6.severity == "warning" and "up to x17050" in d6.message and "tokens.k: 60" in d6.evidence[0]
    assert not [f for f in findings if f.code in ("D0", "D1", "D2")]  # matched to specs/fixed/ field by field


def test_doctor_lds_compares_the_ranked_share_of_ascend_and_mask(tmp_path):
    topk = yaml.safe_load(TOPK.read_text())
    topk["output"]["dir"] = "runs/fixed/topk"
    specs = make_project(tmp_path, extra={"topk": topk})
    for name in ("magic_wmdp", "magic_mmlu"):
        side = {
            "alignment": "target",
            "dtype": "float32",
            "N": 1000,
            "S": 1024,
            "lds": {
                "spearman": 0.97,
                "pearson": 0.97,
                "spearman_ci95": [0.95, 0.99],
                "subsets": 30,
                "fraction": 0.01,
                "unit": "row",
            },
        }
        write_json_atomic(tmp_path / "runs" / "fixed" / name / "scores.json", side)
    stats = token_stats(token_weights(_rule(k=3), SCORES, LABELS), LABELS, "selected")
    write_run(
        tmp_path / "runs" / "fixed" / "topk",
        "controls_magic_topk",
        {"wmdp_bio_robust": 0.42, "mmlu": 0.45},
        [{"lr": 1e-4, "values": {"wmdp_bio_robust": 0.41, "mmlu": 0.45}, "stats": stats}],
        control="fixed_all_tokens",
        control_path="specs/fixed/all_tokens.yaml",
    )
    findings, _ = diagnose([specs / "fixed" / "topk.yaml"])
    (warn,) = [f for f in findings if f.code == "D11" and f.severity == "warning"]
    assert (
        "37.5% of valid tokens change weight by the scores" in warn.evidence[0]
        and "trains the selected tokens alone" in warn.evidence[0]
    )
    assert "--unit token --fraction 0.375" in warn.fix and "0.90" not in warn.fix  # the share picked, not a 90% drop
    (d6,) = [f for f in findings if f.code == "D6"]  # measured now: 3 of 8 selected -> x2.67, an error
    assert d6.severity == "error" and "x2.67" in d6.message

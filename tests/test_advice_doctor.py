"""Advice of the doctor's findings (issue 22): each fix is right for the case at hand (D1, D3, D6, D11)."""

from __future__ import annotations

from unlearnspec.doctor import diagnose
from unlearnspec.doctor.rescore import rescore_refusals
from unlearnspec.spec.load import load_spec

from .conftest import SPECS
from .fixtures.reportkit import make_project


def codes(findings, code: str, spec: str = ""):
    return [f for f in findings if f.code == code and spec in f.spec]


def _both(edit):
    return {"selective": edit, "all_tokens": edit}


# --------------------------------------------------------------------------- D3: rescoring where MAGIC cannot
def test_d3_with_sgd_momentum_says_no_rescoring_exists_and_names_the_nearest_design(tmp_path):
    findings, _ = diagnose([make_project(tmp_path, _both(lambda d: d["training"]["optimizer"].update(momentum=0.9)))])
    d3 = codes(findings, "D3", "selective")
    assert d3
    for f in d3:
        assert "momentum: 0 (scores) vs 0.9 (steered run)" in f.evidence
        assert "or rescore in the steered regime" not in f.fix  # the old advice: impossible here
        assert "not possible" in f.fix and "training.optimizer.momentum: 0.9" in f.fix
        assert "`momentum: 0`" in f.fix and "Adam/AdamW" in f.fix  # the nearest designs MAGIC accepts


def test_d3_names_every_refusal_of_the_magic_rules(tmp_path):
    def edit(d):
        d["training"]["dropout"] = 0.1
        d["model"]["dtype"] = "bfloat16"

    findings, _ = diagnose([make_project(tmp_path, _both(edit))])
    fix = codes(findings, "D3", "selective")[0].fix
    assert "model.dtype: bfloat16" in fix and "training.dropout: 0.1" in fix
    assert "`dropout: 0`" in fix and "`model.dtype: float32`" in fix


def test_d3_keeps_the_rescore_advice_where_magic_can_replay(tmp_path):
    def edit(d):
        d["training"]["optimizer"] = {"name": "adamw"}
        d["training"]["lr"] = 5.0e-5

    findings, _ = diagnose([make_project(tmp_path, _both(edit))])
    for f in codes(findings, "D3", "selective"):
        assert "or rescore in the steered regime" in f.fix and "not possible" not in f.fix


def test_rescore_refusals_follow_the_magic_rules():
    """The recorded bf16 experiments cannot be rescored as run; the fixed ones can."""
    (exp1,) = rescore_refusals(load_spec(SPECS / "exp1_value_weighted.yaml", check_refs=False))
    assert exp1.field.startswith("model.dtype: bfloat16") and "float32" in exp1.nearest
    assert rescore_refusals(load_spec(SPECS / "fixed" / "selective.yaml", check_refs=False)) == []
    assert rescore_refusals(load_spec(SPECS / "fixed_adamw" / "selective.yaml", check_refs=False)) == []

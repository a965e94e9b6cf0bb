"""The cross-report study table (unlearnspec.report.study_table): selectivity against the baseline, the oracle's
fraction, and the attack column, from committed report JSONs."""

from __future__ import annotations

import pytest

from unlearnspec.report.model import load_report
from unlearnspec.report.study_table import markdown, oracle_best, selectivity_vs_base

from .conftest import REPO


def test_selectivity_vs_baseline_oracle_fraction_and_attack_column(tmp_path):
    oracle = load_report(REPO / "reports" / "controls_oracle.json")
    npo = load_report(REPO / "reports" / "comparators" / "comparators_npo.json")
    base, run = next(r for r in npo.rows if r.kind == "baseline"), [r for r in npo.rows if r.kind == "run"][-1]
    h, g = "toy_wmdp", "toy_mmlu"
    expected = (base.cells[h].acc - run.cells[h].acc) - (base.cells[g].acc - run.cells[g].acc)
    value, se = selectivity_vs_base(run, base, h, g)
    assert run.cells[g].acc != base.cells[g].acc  # both terms matter
    assert value == pytest.approx(expected) and 0 < se < 0.1
    best, lr = oracle_best(oracle)
    assert lr == "0.05" and best == pytest.approx(0.4333, abs=1e-4)
    topk = load_report(REPO / "reports" / "controls_magic_topk.json")
    topk = topk.model_copy(update={"rows": [r.model_copy(update={"attack": []}) for r in topk.rows]})  # no attack run
    text = markdown([oracle, npo, topk], oracle, "s", None)
    line = next(x for x in text.splitlines() if x.startswith(f"| comparators_npo | {run.label} |"))
    assert f"| {expected / best:.2f} |" in line and f"{run.attack[0].steps}: {run.attack[0].acc:.3f}" in line
    topk_lines = [x for x in text.splitlines() if x.startswith("| controls_magic_topk |")]
    assert topk_lines and all("| not run |" in x for x in topk_lines)


def test_a_failed_point_says_why_not_no_matched_control():
    """controls_magic_topk_not_mmlu at toy LR 0.2 diverged (non-finite loss): its row names that."""
    oracle = load_report(REPO / "reports" / "controls_oracle.json")
    table = load_report(REPO / "reports" / "controls_magic_topk_not_mmlu.json")
    failed = [r for r in table.rows if r.kind == "run" and r.status != "ok"]
    assert failed, "the committed report has a failed point"
    text = markdown([oracle, table], oracle, "s", None)
    line = next(x for x in text.splitlines() if x.startswith(f"| controls_magic_topk_not_mmlu | {failed[0].label} |"))
    assert "failed" in line and "non-finite" in line and "no matched control" not in line

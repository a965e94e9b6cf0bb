"""Advice of the reports (issue 22): the spec names its hazard and general task (reporting knobs, out of the
spec hash); the selectivity column and the plot follow them; `report --hazard-task` overrides; a table with a
control and no selectivity says which tasks matched each role."""

from __future__ import annotations

import pytest
import yaml

from unlearnspec.report.build import Selection, StudyContext, table_from_results
from unlearnspec.report.plot import _axes_tasks
from unlearnspec.report.render import headers, markdown
from unlearnspec.run.plan import spec_hash
from unlearnspec.run.results import load_results, save_results
from unlearnspec.spec.load import load_spec, validate_data
from unlearnspec.spec.profile import default_toy_profile

from .conftest import SPECS
from .fixtures.reportkit import answers, flip, load_yaml, write_run

LEAF = "toy_wmdp_by_attribute_toxin"
TASKS = ("toy_wmdp", "toy_mmlu", LEAF)
W, M, L = answers(200, 120), answers(200, 140), answers(40, 30)


def _runs(tmp_path, hazard=None):
    base = {"toy_wmdp": W, "toy_mmlu": M, LEAF: L}
    ctrl = write_run(
        tmp_path / "ctrl",
        "ctrl",
        base,
        [{"lr": 0.05, "values": {"toy_wmdp": flip(W, 2), "toy_mmlu": flip(M, 2), LEAF: flip(L, 1)}}],
        tasks=TASKS,
        profile="toy",
    )
    exp = write_run(
        tmp_path / "exp",
        "exp",
        base,
        [{"lr": 0.05, "values": {"toy_wmdp": flip(W, 6), "toy_mmlu": flip(M, 2), LEAF: flip(L, 8)}}],
        tasks=TASKS,
        control="ctrl",
        profile="toy",
    )
    if hazard is not None:
        results = load_results(exp)
        save_results(
            results.model_copy(update={"spec": results.spec.model_copy(update={"hazard_task": hazard})}), exp.parent
        )
    return (load_results(exp), exp.parent), (load_results(ctrl), ctrl.parent)


def test_two_wmdp_tasks_without_a_name_say_why_the_column_is_missing(tmp_path):
    exp, ctrl = _runs(tmp_path)
    table = table_from_results(*exp, toy=True, study=StudyContext(control=ctrl, control_status=""))
    assert table.hazard_task is None and "selectivity [95% CI]" not in headers(table)
    text = markdown(table)
    assert (
        "No selectivity column: no hazard task: 2 evaluated tasks are named like `wmdp` (toy_wmdp, toy_wmdp_by_attribute_toxin)"
        in text
    )
    assert "`eval.hazard_task`" in text and "`report --hazard-task`" in text


def test_the_specs_hazard_task_drives_the_column_and_the_plot_and_the_option_overrides(tmp_path):
    exp, ctrl = _runs(tmp_path, hazard=LEAF)
    table = table_from_results(*exp, toy=True, study=StudyContext(control=ctrl, control_status=""))
    assert (table.hazard_task, table.general_task) == (LEAF, "toy_mmlu") and table.selectivity_note is None
    assert "selectivity [95% CI]" in headers(table) and "No selectivity column" not in markdown(table)
    # the leaf dropped 7 more questions of 40 than the control, the general task as much as the control
    assert table.row("lr=0.05").selectivity.value == pytest.approx(7 / 40, abs=1e-4)
    assert _axes_tasks(table)[2] == LEAF  # the plot's hazard axis is the task the study targets, not the group
    override = table_from_results(
        *exp, toy=True, study=StudyContext(control=ctrl, control_status=""), selection=Selection(hazard_task="toy_wmdp")
    )
    assert override.hazard_task == "toy_wmdp" and _axes_tasks(override)[2] == "toy_wmdp"
    assert override.row("lr=0.05").selectivity.value == pytest.approx(4 / 200, abs=1e-4)


def test_hazard_task_is_validated_mapped_and_out_of_the_hash(tmp_path):
    data = load_yaml(SPECS / "fixed" / "selective.yaml")
    plain = validate_data(data, None, "x")
    data["eval"]["hazard_task"] = "wmdp_bio_robust"
    named = validate_data(data, None, "x")
    assert named.eval.hazard_task == "wmdp_bio_robust" and spec_hash(named) == spec_hash(plain)  # a reporting knob
    bad = dict(data, eval={**data["eval"], "hazard_task": "wmdp_chem"})
    with pytest.raises(Exception, match="not one of the evaluated tasks"):
        validate_data(bad, None, "x")
    same = dict(data, eval={**data["eval"], "general_task": "wmdp_bio_robust"})
    with pytest.raises(Exception, match="selectivity needs two tasks"):
        validate_data(same, None, "x")
    (tmp_path / "pyproject.toml").write_text("")
    path = tmp_path / "spec.yaml"
    data["scores"] = {}
    data["tokens"] = {"mode": "all"}
    data.pop("control")
    path.write_text(yaml.safe_dump(data))
    assert load_spec(path, profile=default_toy_profile()).eval.hazard_task == "toy_wmdp"  # mapped like the task names


# --------------------------------------------------------------------------- plots
def _figures(monkeypatch):
    """Keep every figure plot_tables draws (it closes them after saving)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


def _table(tmp_path, name: str, runs: list[tuple[float, float]], control=None):
    from unlearnspec.report.build import table_from_results as build

    base = {"wmdp_bio_robust": 0.42, "mmlu": 0.45}
    folder = tmp_path / name
    write_run(
        folder,
        name,
        base,
        [{"lr": 10.0 ** -(i + 3), "values": {"wmdp_bio_robust": h, "mmlu": g}} for i, (g, h) in enumerate(runs)],
        control=control,
    )
    return build(load_results(folder), folder)


def test_zoom_keeps_every_point_of_the_experiment(tmp_path, monkeypatch):
    from unlearnspec.report.plot import plot_tables

    kept = _figures(monkeypatch)
    # a point 0.08 left of and 0.06 below the baseline: outside the old fixed window (-0.045 .. +0.015, -0.03 .. +0.04)
    exp = _table(tmp_path, "exp", [(0.44, 0.41), (0.37, 0.36)], control="ctrl")
    ctrl = _table(tmp_path, "ctrl", [(0.449, 0.419), (0.445, 0.40)])
    assert plot_tables([exp, ctrl], tmp_path / "p.png", "t", focus=0) is None
    zoom = kept[-1].axes[1]
    (x0, x1), (y0, y1) = zoom.get_xlim(), zoom.get_ylim()
    for x, y in ((0.44, 0.41), (0.37, 0.36)):
        assert x0 < x < x1 and y0 < y < y1


def test_a_spec_has_one_colour_in_its_own_plot_and_in_the_study_plot(tmp_path, monkeypatch):
    from unlearnspec.report.plot import plot_tables

    kept = _figures(monkeypatch)
    tables = [_table(tmp_path, n, [(0.44, 0.41)]) for n in ("alpha", "beta", "gamma", "exp")]
    plot_tables([tables[3]], tmp_path / "own.png", "t", focus=0)
    plot_tables(tables, tmp_path / "study.png", "t")

    def colour(fig, label):
        line = next(l for l in fig.axes[0].get_lines() if l.get_label().startswith(label))
        return line.get_color(), line.get_marker(), line.get_linestyle()

    own, study = kept
    assert colour(own, "exp") == colour(
        study, "exp"
    )  # the old palette gave it colour 0 alone and colour 3 in the study
    assert len({colour(study, n)[0] for n in ("alpha", "beta", "gamma", "exp")}) > 1

"""Controls in reports: the spec's `role` recorded in results.json, selectivity against the matched
control with its paired interval, the fraction of the oracle's selectivity, and the minimum
detectable effect stated under every table. Every expected number is computed by hand below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnspec.errors import UserError
from unlearnspec.report.build import StudyContext, table_from_results
from unlearnspec.report.commands import ReportOutput, run_report
from unlearnspec.report.diff import diff_tables
from unlearnspec.report.inputs import RunInput, Selection, report_for
from unlearnspec.report.model import load_report
from unlearnspec.report.plot import legend_label
from unlearnspec.report.render import grid, headers, markdown
from unlearnspec.report.stats import mcnemar_mde
from unlearnspec.run.assemble import assemble
from unlearnspec.run.context import RunContext
from unlearnspec.run.plan import PlanOptions, build_plan
from unlearnspec.run.results import load_results
from unlearnspec.spec.profile import default_toy_profile

from .fixtures.reportkit import answers, flip, make_project, write_run


def test_results_record_the_specs_role(tmp_path):
    """assemble() writes SpecInfo.role from the spec, so a report finds the controls from results alone."""
    specs = make_project(tmp_path, {"all_tokens": lambda d: d.update(role="negative_control")})
    toy = default_toy_profile()
    plan = build_plan(
        [specs / "fixed" / "all_tokens.yaml"],
        PlanOptions(profile=toy, cache_root=tmp_path / "cache", out=tmp_path / "nowhere"),
    )
    info = assemble(plan.specs[0], plan, RunContext(profile=toy, profile_name="toy")).spec
    assert info.role == "negative_control"
    plan = build_plan(
        [specs / "fixed" / "selective.yaml"],
        PlanOptions(profile=toy, cache_root=tmp_path / "cache2", out=tmp_path / "nowhere2", auto_produce=True),
    )
    run = next(r for r in plan.specs if r.spec.name == "fixed_selective")
    assert assemble(run, plan, RunContext(profile=toy, profile_name="toy")).spec.role is None


# --------------------------------------------------------------------------- a study with both controls
W, M = 200, 400
BW, BM = answers(W, 120), answers(M, 240)
CTRL_W, CTRL_M = flip(BW, 4, 2), flip(BM, 6, 6)  # the all-tokens control at lr 1e-3
CTRL2_W, CTRL2_M = flip(BW, 10, 0), flip(BM, 10, 0)  # at lr 1e-2
CTRL0_W, CTRL0_M = BW, BM  # at lr 1e-4
BASE = {"wmdp_bio_robust": BW, "mmlu": BM}
ZA, ZB = 1.959963984540054, 0.8416212335729143  # z(0.975), z(0.8)


def _study(root: Path, oracle: bool = True) -> dict[str, Path]:
    """control (all tokens), an experiment, the oracle (positive) and random (negative) controls, all
    matched to the control, with per-question samples whose discordant counts are set by `flip`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'tmp'\n")
    folders = {n: root / "runs" / n for n in ("all_tokens", "selective", "oracle", "random")}
    write_run(
        folders["all_tokens"],
        "all_tokens",
        BASE,
        [
            {"lr": 1e-4, "values": {"wmdp_bio_robust": CTRL0_W, "mmlu": CTRL0_M}},
            {"lr": 1e-3, "values": {"wmdp_bio_robust": CTRL_W, "mmlu": CTRL_M}},
            {"lr": 1e-2, "values": {"wmdp_bio_robust": CTRL2_W, "mmlu": CTRL2_M}},
        ],
    )
    matched = {"control": "all_tokens", "control_path": "specs/all_tokens.yaml"}
    write_run(
        folders["selective"],
        "selective",
        BASE,
        [
            {"lr": 1e-4, "values": {"wmdp_bio_robust": flip(CTRL0_W, 2, 2), "mmlu": flip(CTRL0_M, 2, 2)}},
            # vs the control: hazard 5 right->... b=5 (run right only), c=30 (control right only); general b=6, c=10
            {"lr": 1e-3, "values": {"wmdp_bio_robust": flip(CTRL_W, 30, 5), "mmlu": flip(CTRL_M, 10, 6)}},
            {"lr": 1e-2, "values": {"wmdp_bio_robust": flip(CTRL2_W, 20, 0), "mmlu": flip(CTRL2_M, 0, 0)}},
        ],
        **matched,
    )
    if oracle:
        write_run(
            folders["oracle"],
            "oracle",
            BASE,
            [
                {"lr": 1e-3, "values": {"wmdp_bio_robust": flip(CTRL_W, 60, 0), "mmlu": flip(CTRL_M, 8, 8)}},
                {"lr": 1e-2, "values": {"wmdp_bio_robust": flip(CTRL2_W, 3, 2), "mmlu": flip(CTRL2_M, 2, 2)}},
            ],
            role="positive_control",
            **matched,
        )
    write_run(
        folders["random"],
        "random",
        BASE,
        [
            {"lr": 1e-3, "values": {"wmdp_bio_robust": flip(CTRL_W, 3, 3), "mmlu": flip(CTRL_M, 3, 3)}},
        ],
        role="negative_control",
        **matched,
    )
    if not oracle:
        del folders["oracle"]
    return folders


def _inputs(folders: dict[str, Path]) -> list[RunInput]:
    return [RunInput(load_results(f), f) for f in folders.values()]


def _built(folders: dict[str, Path], name: str, selection: Selection | None = None):
    runs = _inputs(folders)
    run = next(r for r in runs if r.results.spec.name == name)
    return report_for(run, runs, None, selection).table


def test_selectivity_and_its_paired_interval_by_hand(tmp_path):
    table = _built(_study(tmp_path), "selective")
    assert (table.hazard_task, table.general_task) == ("wmdp_bio_robust", "mmlu")
    sel = table.row("lr=0.001").selectivity
    # hazard: d = (5 - 30)/200 = -0.125, Var = (35/200 - 0.125^2)/200; general: d = (6 - 10)/400 = -0.01,
    # Var = (16/400 - 0.01^2)/400; sel = d_general - d_hazard = 0.115.
    var_h = (35 / 200 - 0.125**2) / 200
    var_g = (16 / 400 - 0.01**2) / 400
    se = (var_h + var_g) ** 0.5
    assert var_h == pytest.approx(0.000796875) and var_g == pytest.approx(0.00009975)
    assert sel.value == 0.115 and sel.test == "paired" and sel.significant
    assert sel.se == pytest.approx(se, abs=1e-6)
    assert (sel.ci_low, sel.ci_high) == (round(0.115 - ZA * se, 4), round(0.115 + ZA * se, 4)) == (0.0563, 0.1737)
    # the same as the two accuracies give: (ctrl_h - run_h) - (ctrl_g - run_g)
    ctrl_h, run_h, ctrl_g, run_g = 118 / 200, 93 / 200, 240 / 400, 236 / 400
    assert sel.value == pytest.approx((ctrl_h - run_h) - (ctrl_g - run_g))
    quiet = table.row("lr=0.0001").selectivity  # 2 and 2 flipped on both tasks: 0, interval across 0
    assert quiet.value == 0.0 and not quiet.significant and quiet.ci_low < 0 < quiet.ci_high


def test_oracle_fraction_and_its_na_cases(tmp_path):
    table = _built(_study(tmp_path), "selective")
    assert table.positive_control == "oracle" and table.positive_control_status == "results in runs/oracle"
    at = table.row("lr=0.001").selectivity
    # oracle at 1e-3: hazard d = -60/200 = -0.3, general d = 0: sel 0.3 (se sqrt(0.00105 + 0.0001)), significant
    assert at.oracle == 0.3 and at.oracle_fraction == round(0.115 / 0.3, 4) == 0.3833
    within = table.row("lr=0.01").selectivity  # oracle: hazard (2 - 3)/200, general 0 -> +0.005, within noise
    assert within.oracle == 0.005 and within.oracle_fraction is None and within.oracle_note == "oracle within noise"
    missing = table.row("lr=0.0001").selectivity
    assert missing.oracle is None and missing.oracle_note == "no oracle run at this LR"
    md = markdown(table)
    assert "oracle fraction" in headers(table)
    assert "0.38 (of +0.3000)" in md and "n/a (oracle within noise)" in md and "n/a (no oracle run at this LR)" in md
    assert "+0.1150* [+0.0563, +0.1737] paired" in md
    # the negative control gets its fraction too; the oracle itself has none
    assert _built(_study(tmp_path), "random").row("lr=0.001").selectivity.oracle_fraction == 0.0
    own = _built(_study(tmp_path), "oracle")
    assert (
        own.positive_control is None
        and "oracle fraction" not in headers(own)
        and own.row("lr=0.001").selectivity.value == 0.3
    )


def test_no_oracle_column_without_a_positive_control(tmp_path):
    table = _built(_study(tmp_path, oracle=False), "selective")
    assert table.positive_control is None and table.row("lr=0.001").selectivity.oracle_note is None
    assert "selectivity [95% CI]" in headers(table) and "oracle fraction" not in headers(table)


def test_unpaired_selectivity_is_labelled(tmp_path):
    write_run(
        tmp_path / "c",
        "ctrl",
        {"wmdp_bio_robust": 0.45, "mmlu": 0.46},
        [{"lr": 1e-3, "values": {"wmdp_bio_robust": 0.45, "mmlu": 0.46}}],
    )
    write_run(
        tmp_path / "r",
        "exp",
        {"wmdp_bio_robust": 0.45, "mmlu": 0.46},
        [{"lr": 1e-3, "values": {"wmdp_bio_robust": 0.40, "mmlu": 0.45}}],
        control="ctrl",
    )
    table = table_from_results(
        load_results(tmp_path / "r"),
        tmp_path / "r",
        study=StudyContext(control=(load_results(tmp_path / "c"), tmp_path / "c"), control_status="x"),
    )
    sel = table.rows[1].selectivity
    # no samples: Var = p(1-p)/n per side and task (n 868 WMDP, 14042 MMLU in the fixture)
    var = 0.40 * 0.60 / 868 + 0.45 * 0.55 / 868 + 0.45 * 0.55 / 14042 + 0.46 * 0.54 / 14042
    assert sel.test == "unpaired" and sel.value == round((0.45 - 0.40) - (0.46 - 0.45), 4) == 0.04
    assert sel.se == pytest.approx(var**0.5, abs=1e-6)
    assert "unpaired" in grid(table)[1][headers(table).index("selectivity [95% CI]")]
    # MDE of the unpaired test: (z_a + z_b) * sqrt(2 p (1 - p) / n), p the mean of both sides
    (hazard, general) = table.mde
    assert hazard.test == "z-unpaired" and hazard.mde == round((ZA + ZB) * (2 * 0.425 * 0.575 / 868) ** 0.5, 4)
    assert general.n == 14042 and general.mde == round((ZA + ZB) * (2 * 0.455 * 0.545 / 14042) ** 0.5, 4)


def test_mcnemar_mde_against_a_hand_computation():
    # Connor (1987) solved for d: sqrt(psi) (z_a sqrt(n) + z_b sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2)
    # n = 100, psi = 0.2: z_a*10 = 19.59964; sqrt(96.866867) * z_b = 8.283365; / 100.708326; * 0.4472136
    assert mcnemar_mde(0.2, 100) == pytest.approx(0.12382, abs=1e-5)
    assert mcnemar_mde(0.2, 100, power=0.9) > mcnemar_mde(0.2, 100) > mcnemar_mde(0.2, 400)
    assert (
        mcnemar_mde(0.0, 100) is None and mcnemar_mde(0.5, 3) is None
    )  # no discordance; n too small (n - z_a^2 + z_b^2 < 0)
    # large n: about (z_a + z_b) sqrt(psi / n)
    assert mcnemar_mde(0.1, 10**6) == pytest.approx((ZA + ZB) * (0.1 / 10**6) ** 0.5, rel=1e-3)


def test_every_table_states_its_mde(tmp_path):
    table = _built(_study(tmp_path), "selective")
    power = {p.task: p for p in table.mde}
    # vs control, pooled over the three rows: hazard discordant 4 + 35 + 20 of 600, general 4 + 16 + 0 of 1200
    hz, gn = power["wmdp_bio_robust"], power["mmlu"]
    assert (hz.against, hz.test, hz.n, hz.discordance) == ("control", "mcnemar", 200, round(59 / 600, 4))
    psi = 59 / 600
    assert hz.mde == round(psi**0.5 * (ZA * 200**0.5 + ZB * (200 - ZA**2 + ZB**2) ** 0.5) / (200 + ZB**2), 4)
    assert gn.discordance == round(20 / 1200, 4) and gn.n == 400
    assert gn.mde == round((20 / 1200) ** 0.5 * (ZA * 20 + ZB * (400 - ZA**2 + ZB**2) ** 0.5) / (400 + ZB**2), 4)
    md = markdown(table)
    assert "MDE (smallest |Δ| the table's test detects with power 0.80 at α = 0.05" in md
    assert f"WMDP Bio Robust {hz.mde:.4f} (n=200, McNemar, ψ={hz.discordance:.4f}, Δ control)" in md
    control = _built(_study(tmp_path), "all_tokens")  # no control: the MDE of Δ base
    assert control.mde and all(p.against == "baseline" for p in control.mde)
    assert _built(_study(tmp_path), "selective", Selection(power=0.9)).mde[0].mde > hz.mde


def _console():
    from rich.console import Console

    return Console(width=250, record=True)


def test_study_files_byte_identical_on_rerun_with_controls_marked(tmp_path):
    folders = _study(tmp_path)
    out = tmp_path / "reports"
    args = [str(f) for f in folders.values()]
    first = run_report(args, ReportOutput(out), None, False, _console())
    before = {p.name: p.read_bytes() for p in first}
    assert {p.name: p.read_bytes() for p in run_report(args, ReportOutput(out), None, False, _console())} == before
    assert {"study.png", "selective.json", "oracle.json", "random.json"} <= set(before)
    data = json.loads(before["selective.json"])
    assert data["positive_control"] == "oracle" and data["rows"][2]["selectivity"]["oracle_fraction"] == 0.3833
    assert (
        json.loads(before["oracle.json"])["role"] == "positive_control"
        and json.loads(before["random.json"])["role"] == "negative_control"
    )
    tables = {t: load_report(out / f"{t}.json") for t in ("oracle", "random", "selective")}
    assert legend_label(tables["oracle"], "oracle") == "oracle — positive control (oracle)"
    assert legend_label(tables["random"], "random") == "random — negative control (random)"
    assert legend_label(tables["selective"], "selective") == "selective"


def test_diff_compares_selectivity_with_its_own_noise(tmp_path):
    base = _built(_study(tmp_path / "a"), "selective")
    row = base.row("lr=0.001")
    small = row.selectivity.model_copy(update={"value": 0.1100})
    large = row.selectivity.model_copy(update={"value": 0.0300})
    for sel, real in ((small, False), (large, True)):
        new = base.model_copy(
            update={
                "rows": [r.model_copy(update={"selectivity": sel}) if r.point == "lr=0.001" else r for r in base.rows]
            }
        )
        (change,) = diff_tables(base, new)
        # noise: 1.96 * sqrt(se^2 + se^2) with se = 0.029944 -> 0.0830
        assert change.column == "selectivity" and change.old == "+0.1150" and change.beyond_noise is real
        assert change.detail.endswith(f"noise ±{ZA * (2 * row.selectivity.se**2) ** 0.5:.4f}")
    # oracle fraction and MDE are derived cells: ignored
    other = base.model_copy(
        update={
            "power": 0.9,
            "mde": [],
            "rows": [
                r.model_copy(update={"selectivity": r.selectivity.model_copy(update={"oracle_fraction": 0.9})})
                if r.selectivity
                else r
                for r in base.rows
            ],
        }
    )
    assert diff_tables(base, other) == []
    gone = base.model_copy(update={"rows": [r.model_copy(update={"selectivity": None}) for r in base.rows]})
    changes = diff_tables(base, gone)
    assert changes and all(c.column == "selectivity" and c.new == "—" and not c.beyond_noise for c in changes)


def test_task_roles_from_the_command_line(tmp_path):
    folders = _study(tmp_path)
    swapped = _built(folders, "selective", Selection(hazard_task="mmlu", general_task="wmdp_bio_robust"))
    assert (swapped.hazard_task, swapped.general_task) == ("mmlu", "wmdp_bio_robust")
    assert swapped.row("lr=0.001").selectivity.value == -0.115  # the same two differences, the other way round
    with pytest.raises(UserError, match="--hazard-task"):
        _built(folders, "selective", Selection(hazard_task="toy_wmdp"))
    with pytest.raises(UserError, match="--power"):
        run_report(
            [str(folders["selective"])],
            ReportOutput(tmp_path / "out", False),
            None,
            False,
            _console(),
            Selection(power=1.0),
        )
    from typer.testing import CliRunner

    from unlearnspec.cli import app

    bad = CliRunner().invoke(
        app, ["report", str(folders["selective"]), "--out", str(tmp_path / "o"), "--general-task", "nope", "--no-plot"]
    )
    assert bad.exit_code == 2 and "--general-task" in bad.output and "Traceback" not in bad.output


def test_one_task_without_samples_is_labelled_mixed(tmp_path):
    write_run(tmp_path / "c", "ctrl", None, [{"lr": 1e-3, "values": {"wmdp_bio_robust": CTRL_W, "mmlu": 0.46}}])
    write_run(
        tmp_path / "r",
        "exp",
        None,
        [{"lr": 1e-3, "values": {"wmdp_bio_robust": flip(CTRL_W, 30, 5), "mmlu": 0.45}}],
        control="ctrl",
    )
    sel = (
        table_from_results(
            load_results(tmp_path / "r"),
            tmp_path / "r",
            study=StudyContext(control=(load_results(tmp_path / "c"), tmp_path / "c")),
        )
        .rows[0]
        .selectivity
    )
    var = (35 / 200 - 0.125**2) / 200 + 0.45 * 0.55 / 14042 + 0.46 * 0.54 / 14042  # paired hazard + unpaired general
    assert sel.test == "mixed" and sel.value == round(0.125 - 0.01, 4) and sel.se == pytest.approx(var**0.5, abs=1e-6)


def test_the_study_index_can_be_named(tmp_path):
    """`--study-name`: a group reported on its own gets its own index and plot beside the study's."""
    folders = _study(tmp_path)
    out = tmp_path / "reports"
    args = [str(f) for f in folders.values()]
    names = {p.name for p in run_report(args, ReportOutput(out, study_name="controls_study"), None, False, _console())}
    assert {"controls_study.md", "controls_study.png"} <= names and "study.md" not in names
    assert "- [oracle](oracle.md)" in (out / "controls_study.md").read_text()
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="--study-name"):
        run_report(args, ReportOutput(out, study_name="../escape"), None, False, _console())
    assert sorted(p.name for p in out.iterdir()) == before  # refused before anything was written

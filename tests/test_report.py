"""`unlearnspec report`: tables vs baseline and control from synthetic results.json/samples.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unlearnspec.report.build import table_from_reference, table_from_results
from unlearnspec.report.commands import ReportOutput, run_report
from unlearnspec.report.inputs import RunInput, find_control, report_for
from unlearnspec.report.model import load_report
from unlearnspec.report.reference import load_reference
from unlearnspec.report.render import grid, headers, markdown
from unlearnspec.run.results import load_results

from .conftest import REPO
from .fixtures.reportkit import answers, copy_reference, flip, token_stats, write_run

W, M = 868, 2000
BASE_W, BASE_M = answers(W, 373), answers(M, 902)
BASELINE = {"wmdp_bio_robust": BASE_W, "mmlu": BASE_M}


def _console():
    from rich.console import Console

    return Console(width=250, record=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with an exp7 control spec, control results, exp5 results and the recorded references."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'tmp'\n")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "exp7_all_tokens.yaml").write_text((REPO / "specs" / "exp7_all_tokens.yaml").read_text())
    copy_reference(tmp_path, ["exp5_selective", "exp7_all_tokens"])
    write_run(
        tmp_path / "runs" / "exp7_all_tokens",
        "exp7_all_tokens",
        BASELINE,
        [
            {"lr": 1e-5, "values": {"wmdp_bio_robust": flip(BASE_W, 5, 3), "mmlu": flip(BASE_M, 10, 6)}},
            {"lr": 5e-5, "values": {"wmdp_bio_robust": flip(BASE_W, 20, 5), "mmlu": flip(BASE_M, 60, 10)}},
        ],
    )
    write_run(
        tmp_path / "runs" / "exp5_selective",
        "exp5_selective",
        BASELINE,
        [
            {
                "lr": 5e-5,
                "values": {"wmdp_bio_robust": flip(BASE_W, 70, 5), "mmlu": flip(BASE_M, 50, 20)},
                "stats": token_stats(0.148),
            },
            {
                "lr": 1e-5,
                "values": {"wmdp_bio_robust": flip(BASE_W, 8, 2), "mmlu": flip(BASE_M, 8, 8)},
                "stats": token_stats(0.148),
            },
            {"lr": 2e-5, "status": "failed", "reason": "non-finite loss at step 12"},
            {
                "lr": 2e-4,
                "values": {"wmdp_bio_robust": answers(W, 205), "mmlu": answers(M, 495)},
                "stats": token_stats(0.148),
            },
        ],
        control="exp7_all_tokens",
        control_path="specs/exp7_all_tokens.yaml",
    )
    return tmp_path


def _run(project: Path, name: str) -> RunInput:
    folder = project / "runs" / name
    return RunInput(load_results(folder), folder)


def test_rows_baseline_first_then_sorted_by_lr_with_failed_reason(project):
    table = report_for(_run(project, "exp5_selective"), [], None).table
    assert [r.label for r in table.rows] == ["baseline", "1e-5", "2e-5", "5e-5", "2e-4"]
    failed = table.rows[2]
    assert failed.status == "failed" and "non-finite loss at step 12" in grid(table)[2][-1]


def test_paired_mcnemar_when_samples_exist(project):
    table = report_for(_run(project, "exp5_selective"), [], None).table
    cell = table.row("lr=5e-05").cells["wmdp_bio_robust"]
    # 70 right->wrong, 5 wrong->right vs the baseline: McNemar chi2 (|5-70|-1)^2/75.
    assert cell.vs_baseline.test == "mcnemar-chi2" and (cell.vs_baseline.b, cell.vs_baseline.c) == (5, 70)
    assert cell.vs_baseline.delta == pytest.approx(round(-65 / W, 4)) and cell.vs_baseline.significant
    small = table.row("lr=1e-05").cells["mmlu"].vs_baseline
    assert small.test == "mcnemar-exact" and small.delta == 0.0 and not small.significant
    assert "McNemar" in " ".join(grid(table)[3])


def test_unpaired_fallback_is_labelled(tmp_path):
    write_run(
        tmp_path,
        "exp_x",
        {"wmdp_bio_robust": 0.4297, "mmlu": 0.4510},
        [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.40, "mmlu": 0.45}}],
    )
    table = table_from_results(load_results(tmp_path), tmp_path)
    comp = table.rows[1].cells["wmdp_bio_robust"].vs_baseline
    assert comp.test == "z-unpaired"
    row = grid(table)[1]
    assert any("z unpaired" in c for c in row) and not any("McNemar" in c for c in row)
    assert "z unpaired" in markdown(table)


def test_wilson_interval_and_chance_flag(project):
    table = report_for(_run(project, "exp5_selective"), [], None).table
    base = table.rows[0].cells["wmdp_bio_robust"]
    assert (base.ci_low, base.ci_high) == (0.3972, 0.4629) and not base.at_chance
    collapsed = table.row("lr=0.0002")
    assert collapsed.collapsed and all(c.at_chance for c in collapsed.cells.values())
    assert "collapsed" in grid(table)[-1][-1] and "chance" in grid(table)[-1][2]


def test_control_from_the_control_specs_output_dir(project):
    lookup = find_control(_run(project, "exp5_selective"), [])
    assert lookup.found is not None and lookup.found[0].spec.name == "exp7_all_tokens"
    assert lookup.status == "results in runs/exp7_all_tokens"
    table = report_for(_run(project, "exp5_selective"), [], None).table
    comp = table.row("lr=5e-05").cells["wmdp_bio_robust"].vs_control
    # run: 373-70+5 = 308 right; control at 5e-5: 373-20+5 = 358 right.
    assert comp.delta == pytest.approx(round((308 - 358) / W, 4)) and comp.test.startswith("mcnemar")
    assert table.row("lr=0.0002").control_point is False
    assert "no control run at this LR" in grid(table)[-1][-1]
    assert any("Δ control" in h for h in headers(table))


def test_control_from_a_sibling_argument(project, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    write_run(other, "exp7_all_tokens", BASELINE, [{"lr": 5e-5, "values": {"wmdp_bio_robust": BASE_W, "mmlu": BASE_M}}])
    sibling = RunInput(load_results(other), other)
    run = _run(project, "exp5_selective")
    lookup = find_control(run, [run, sibling])
    assert lookup.found is not None and lookup.found[1] == other and lookup.status.startswith("results in ")
    table = report_for(run, [run, sibling], None).table
    assert table.row("lr=5e-05").cells["wmdp_bio_robust"].vs_control.delta == pytest.approx(round((308 - 373) / W, 4))


def test_missing_control_is_said_not_guessed(project):
    (project / "runs" / "exp7_all_tokens" / "results.json").unlink()
    table = report_for(_run(project, "exp5_selective"), [], None).table
    assert "no results yet in runs/exp7_all_tokens/" in table.control_status
    assert all(c.vs_control is None for r in table.rows for c in r.cells.values())


def test_files_are_byte_identical_on_rerun_and_free_of_absolute_paths(project, tmp_path_factory):
    out = project / "reports"
    args = [str(project / "runs" / "exp5_selective"), str(project / "runs" / "exp7_all_tokens")]
    first = run_report(args, ReportOutput(out), None, False, _console())
    before = {p.name: p.read_bytes() for p in first}
    second = run_report(args, ReportOutput(out), None, False, _console())
    assert {p.name: p.read_bytes() for p in second} == before
    assert {"exp5_selective.md", "exp5_selective.json", "exp5_selective.png", "study.png", "study.md"} <= set(before)
    md = before["exp5_selective.md"].decode()
    assert str(project) not in md and str(project) not in before["exp5_selective.json"].decode()
    assert md.index("## Provenance") > md.index("| baseline")
    assert "git_sha: abc123" in md and "![exp5_selective" in md


def test_json_matches_markdown_content(project):
    run_report(
        [str(project / "runs" / "exp5_selective")], ReportOutput(project / "reports", False), None, False, _console()
    )
    table = load_report(project / "reports" / "exp5_selective.json")
    md = (project / "reports" / "exp5_selective.md").read_text()
    for row in grid(table):
        for cell in row:
            assert cell.replace("|", "\\|") in md
    assert table.row("lr=5e-05").cells["mmlu"].acc == pytest.approx(round((902 - 50 + 20) / M, 4))


def test_recorded_reference_shown_beside_real_runs_not_toy_runs(project):
    run = _run(project, "exp5_selective")
    table = report_for(run, [], None).table
    assert table.recorded is not None and "recorded (invalid: bad HPs)" in markdown(table)
    assert "| 5e-5     | 0.2811" in markdown(table)
    assert report_for(run, [], False).table.recorded is None
    toy = project / "runs" / "toy_exp5"
    write_run(
        toy, "exp5_selective", BASELINE, [{"lr": 1e-3, "values": BASELINE}], profile="specs/profiles/toy_world.yaml"
    )
    toy_run = RunInput(load_results(toy), toy)
    assert toy_run.toy and report_for(toy_run, [], None).table.recorded is None
    forced = report_for(toy_run, [], True).table
    assert forced.recorded is not None and not forced.recorded.comparable
    assert "not comparable" in markdown(forced)


def test_toy_task_display_names(tmp_path):
    write_run(
        tmp_path,
        "exp7_all_tokens",
        {"toy_wmdp": 0.6, "toy_mmlu": 0.7},
        [{"lr": 1e-3, "values": {"toy_wmdp": 0.5, "toy_mmlu": 0.69}}],
        tasks=("toy_wmdp", "toy_mmlu"),
    )
    run = RunInput(load_results(tmp_path), tmp_path)
    table = table_from_results(run.results, tmp_path, toy=run.toy)
    assert run.toy and [t.display for t in table.tasks] == ["Toy WMDP", "Toy MMLU"]
    assert [t.role for t in table.tasks] == ["hazard", "general"]


def test_plot_written_and_linked(project):
    files = run_report(
        [str(project / "runs" / "exp5_selective")], ReportOutput(project / "reports"), None, False, _console()
    )
    png = project / "reports" / "exp5_selective.png"
    assert png in files and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_skipped_with_a_note_without_matplotlib(project, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    files = run_report(
        [str(project / "runs" / "exp5_selective")], ReportOutput(project / "reports"), None, False, _console()
    )
    assert not any(p.suffix == ".png" for p in files)
    assert "plot skipped: matplotlib is not installed" in (project / "reports" / "exp5_selective.md").read_text()


def test_reference_table_has_intervals_and_unpaired_tests():
    ref = load_reference(REPO / "reports" / "reference" / "exp2_sign_only.json")
    table = table_from_reference(ref)
    assert table.rows[0].cells["wmdp_bio_robust"].n == 868 and table.rows[0].cells["mmlu"].n == 14042
    assert [r.label for r in table.rows if r.collapsed] == ["1e-5", "5e-5", "8e-5", "1e-4", "2e-4"]
    assert all(c.vs_baseline.test == "z-unpaired" for r in table.rows[1:] for c in r.cells.values())


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unlearnspec", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_report_from_spec_file(project):
    spec = yaml.safe_load((REPO / "specs" / "exp5_selective.yaml").read_text())
    spec["control"] = "specs/exp7_all_tokens.yaml"
    spec["scores"] = {}
    spec["tokens"] = {"mode": "all"}
    (project / "specs" / "exp5_selective.yaml").write_text(yaml.safe_dump(spec))
    out = _cli("report", "specs/exp5_selective.yaml", "--no-plot", cwd=project)
    assert out.returncode == 0, out.stderr
    assert "WMDP Bio Robust" in out.stdout and "Δ control" in out.stdout
    data = json.loads((project / "reports" / "exp5_selective.json").read_text())
    assert data["title"] == spec["description"] and data["control"] == "exp7_all_tokens"


def test_cli_report_missing_input_is_a_short_error(tmp_path):
    out = _cli("report", "nope/", cwd=tmp_path)
    assert out.returncode == 2 and "no such file or folder" in out.stderr and "Traceback" not in out.stderr


def test_report_does_not_import_torch():
    code = "import sys, unlearnspec.report.commands, unlearnspec.doctor; bad = [m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_recorded_baseline_used_when_not_evaluated(tmp_path):
    from unlearnspec.run.results import BaselineRecord

    write_run(tmp_path, "exp_x", None, [{"lr": 1e-5, "values": {"wmdp_bio_robust": BASE_W, "mmlu": BASE_M}}])
    results = load_results(tmp_path)
    results = results.model_copy(
        update={
            "baseline": BaselineRecord(
                status="skipped",
                reason="baseline.evaluate: false",
                recorded={"wmdp_bio_robust": 0.4297, "mmlu": 0.4510},
            )
        }
    )
    table = table_from_results(results, tmp_path)
    base = table.rows[0]
    assert base.label == "baseline (recorded)" and base.cells["mmlu"].n == M
    comp = table.rows[1].cells["wmdp_bio_robust"].vs_baseline
    assert comp.test == "z-unpaired" and comp.delta == pytest.approx(round(373 / W - 0.4297, 4))


def test_control_found_by_the_runners_conventions(tmp_path):
    """The runner stores the control as its file stem and the profile as a stem; the control spec's
    own name (fixed_all_tokens, file all_tokens.yaml) still finds the sibling run."""
    from .fixtures.reportkit import make_project

    make_project(tmp_path)
    ctrl = tmp_path / "elsewhere"
    write_run(ctrl, "fixed_all_tokens", BASELINE, [{"lr": 1e-4, "values": BASELINE}])
    exp = tmp_path / "runs" / "fixed" / "selective"
    write_run(
        exp,
        "fixed_selective",
        BASELINE,
        [{"lr": 1e-4, "values": {"wmdp_bio_robust": flip(BASE_W, 30, 0), "mmlu": BASE_M}}],
        control="all_tokens",
        control_path="specs/fixed/all_tokens.yaml",
    )
    run, sibling = RunInput(load_results(exp), exp), RunInput(load_results(ctrl), ctrl)
    table = report_for(run, [run, sibling], None).table
    assert table.control == "fixed_all_tokens" and table.control_status == "results in elsewhere"
    assert table.rows[1].cells["wmdp_bio_robust"].vs_control.delta == pytest.approx(round(-30 / W, 4))


def test_profile_stem_resolves_under_specs_profiles(tmp_path):
    from unlearnspec.report.inputs import profile_path

    (tmp_path / "specs" / "profiles").mkdir(parents=True)
    (tmp_path / "specs" / "profiles" / "mine.yaml").write_text("{}\n")
    assert profile_path("mine", tmp_path) == tmp_path / "specs" / "profiles" / "mine.yaml"
    assert profile_path(None, tmp_path) is None

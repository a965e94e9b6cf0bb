"""`unlearnspec diff`: changed cells, noise from the stderrs, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from unlearnspec.report.build import table_from_results
from unlearnspec.report.diff import diff_tables
from unlearnspec.report.model import dumps
from unlearnspec.run.results import load_results

from .conftest import REPO
from .fixtures.reportkit import write_run

BASE = {"wmdp_bio_robust": 0.4297, "mmlu": 0.4510}


def _table(folder: Path, runs: list[dict]):
    write_run(folder, "exp7_all_tokens", BASE, runs)
    return table_from_results(load_results(folder), folder)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unlearnspec", "diff", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_identical_inputs_no_changes(tmp_path):
    write_run(
        tmp_path / "a", "exp7_all_tokens", BASE, [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.42, "mmlu": 0.45}}]
    )
    out = _cli(str(tmp_path / "a"), str(tmp_path / "a"))
    assert out.returncode == 0 and out.stdout.strip() == "no changes"


def test_change_within_noise_exits_0(tmp_path):
    old = _table(tmp_path / "a", [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.4200, "mmlu": 0.4500}}])
    new = _table(tmp_path / "b", [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.4250, "mmlu": 0.4500}}])
    changes = diff_tables(old, new)
    assert (
        len(changes) == 1 and changes[0].old == "0.4200" and changes[0].new == "0.4250" and not changes[0].beyond_noise
    )
    out = _cli(str(tmp_path / "a"), str(tmp_path / "b"))
    assert out.returncode == 0 and "0.4200 -> 0.4250" in out.stdout and "within noise" in out.stdout


def test_change_beyond_noise_exits_1(tmp_path):
    # MMLU n=14042: se ~0.0042 each, noise threshold ~0.0117; a 0.03 drop is real.
    _table(tmp_path / "a", [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.42, "mmlu": 0.4500}}])
    _table(tmp_path / "b", [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.42, "mmlu": 0.4200}}])
    out = _cli(str(tmp_path / "a"), str(tmp_path / "b"))
    assert out.returncode == 1
    assert "MMLU acc: 0.4500 -> 0.4200" in out.stdout and "BEYOND NOISE" in out.stdout


def test_added_row_and_status_change_are_real_changes(tmp_path):
    old = _table(tmp_path / "a", [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.42, "mmlu": 0.45}}])
    new = _table(
        tmp_path / "b",
        [
            {"lr": 1e-5, "status": "failed", "reason": "OOM"},
            {"lr": 1e-4, "values": {"wmdp_bio_robust": 0.42, "mmlu": 0.45}},
        ],
    )
    changes = {(c.row.split()[-1], c.column): c for c in diff_tables(old, new)}
    assert changes[("1e-4", "row")].beyond_noise and changes[("1e-4", "row")].new == "present"
    assert changes[("1e-5", "status")].new == "failed" and changes[("1e-5", "status")].beyond_noise


def test_report_json_vs_reference_json(tmp_path):
    table = _table(tmp_path / "a", [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.4274, "mmlu": 0.4469}}])
    (tmp_path / "exp7_all_tokens.json").write_text(dumps(table))
    out = _cli(str(REPO / "reports" / "reference" / "exp7_all_tokens.json"), str(tmp_path / "exp7_all_tokens.json"))
    # Same numbers at 1e-5; the other three recorded LRs are absent in the new report.
    assert out.returncode == 1
    assert "lr=" not in out.stdout and "5e-5 | row: present -> absent" in out.stdout
    assert "1e-5 |" not in out.stdout


def test_bad_input_is_a_short_error(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    out = _cli(str(tmp_path / "x.json"), str(tmp_path / "x.json"))
    assert out.returncode == 2 and "not a valid report JSON" in out.stderr and "Traceback" not in out.stderr

"""D11 (lds): doctor reads the LDS of each score source an experiment uses, from the producer's scores.json.
No LDS: a warning naming `unlearnspec lds`; LDS below --lds-min: an error; fine: an info note (exit 0);
an experiment that changes far more tokens than the LDS dropped: a warning with both fractions."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.doctor import diagnose, exit_code

from .fixtures.reportkit import make_project, token_stats, write_json_atomic, write_run

BW, BM = 0.42, 0.45


def sidecars(tmp: Path, lds: dict | None) -> None:
    for name in ("magic_wmdp", "magic_mmlu"):
        side = {"alignment": "target", "dtype": "float32", "N": 1000, "S": 1024}
        if lds is not None:
            side["lds"] = lds
        write_json_atomic(tmp / "runs" / "fixed" / name / "scores.json", side)


def lds(rho: float, fraction: float = 0.01) -> dict:
    return {
        "spearman": rho,
        "pearson": rho,
        "spearman_ci95": [rho - 0.05, min(1.0, rho + 0.03)],
        "scale_ratio": 1.1,
        "subsets": 30,
        "fraction": fraction,
        "unit": "row",
        "seed": 0,
    }


def selective_results(tmp: Path, kept: float) -> None:
    run = {"lr": 1e-4, "values": {"wmdp_bio_robust": BW - 0.01, "mmlu": BM}, "stats": token_stats(kept, "valid")}
    write_run(
        tmp / "runs" / "fixed" / "selective",
        "fixed_selective",
        {"wmdp_bio_robust": BW, "mmlu": BM},
        [run],
        control="fixed_all_tokens",
        control_path="specs/fixed/all_tokens.yaml",
    )


def d11(findings: list) -> list:
    return [f for f in findings if f.code == "D11"]


def test_missing_lds_is_a_warning_naming_the_command(tmp_path):
    specs = make_project(tmp_path)
    sidecars(tmp_path, None)
    found = d11(diagnose([specs])[0])
    assert {f.severity for f in found} == {"warning"} and len(found) == 2  # wmdp and mmlu sources of selective
    assert all("unlearnspec lds" in f.fix and "runs/fixed/magic_" in f.fix for f in found)


def test_low_lds_is_an_error_stating_the_measurement(tmp_path):
    specs = make_project(tmp_path)
    sidecars(tmp_path, lds(0.18))
    findings, _ = diagnose([specs])
    found = d11(findings)
    assert [f.severity for f in found] == ["error", "error"]
    assert "LDS 0.180" in found[0].evidence[0] and "--lds-min 0.8" in found[0].evidence[0]
    assert "smaller learning rate" in found[0].fix
    assert exit_code(findings) == 2


def test_good_lds_is_reported_and_exit_code_clean(tmp_path):
    specs = make_project(tmp_path)
    sidecars(tmp_path, lds(0.97))
    selective_results(tmp_path, kept=0.995)  # 0.5% of tokens masked: within 5x the 1% the LDS dropped
    findings, _ = diagnose([specs])
    found = d11(findings)
    assert [f.severity for f in found] == ["info", "info"] and "LDS 0.970" in found[0].message
    assert exit_code([f for f in findings if f.code == "D11"]) == 0


def test_fraction_far_beyond_the_lds_is_a_warning(tmp_path):
    specs = make_project(tmp_path)
    sidecars(tmp_path, lds(0.97))
    selective_results(tmp_path, kept=0.17)  # exp5: ~83% of the tokens masked, LDS at 1% of rows
    found = [f for f in d11(diagnose([specs])[0]) if f.severity == "warning"]
    assert len(found) == 2
    assert "83.0% masked" in found[0].evidence[0] and "1.0%" in found[0].evidence[1]
    assert "--fraction 0.83" in found[0].fix


def test_cli_threshold_and_json(tmp_path):
    specs = make_project(tmp_path)
    sidecars(tmp_path, lds(0.9))
    ok = CliRunner().invoke(app, ["doctor", str(specs), "--format", "json"])
    strict = CliRunner().invoke(app, ["doctor", str(specs), "--format", "json", "--lds-min", "0.95"])
    assert {f["severity"] for f in json.loads(ok.stdout)["findings"] if f["code"] == "D11"} == {"info"}
    data = json.loads(strict.stdout)
    assert strict.exit_code == 2 and {f["severity"] for f in data["findings"] if f["code"] == "D11"} == {"error"}
    bad = CliRunner().invoke(app, ["doctor", str(specs), "--lds-min", "2"])
    assert bad.exit_code == 2 and "--lds-min" in bad.output

"""Doctor's study rules: D13 (no-positive-control) and D14 (underpowered). The study is the specs of
one doctor call that share a control."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnspec.doctor import Thresholds, diagnose
from unlearnspec.errors import UserError
from unlearnspec.spec.profile import default_toy_profile

from .fixtures.reportkit import REPO, answers, flip, load_yaml, make_project, write_run

W, M = 300, 300
TW, TM = answers(W, 230), answers(M, 237)  # toy WMDP 0.767, toy MMLU 0.790
TOY = {"toy_wmdp": TW, "toy_mmlu": TM}
TOY_TASKS = ("toy_wmdp", "toy_mmlu")


def _oracle() -> dict:
    """A positive control matched to specs/fixed/all_tokens.yaml (the fixed experiment with a role)."""
    data = load_yaml(REPO / "specs" / "fixed" / "selective.yaml")
    data.update(name="fixed_oracle", role="positive_control", description="oracle")
    data["output"]["dir"] = "runs/fixed/oracle"
    return data


def _toy_results(root: Path) -> None:
    """Fixture results of `run specs/fixed --toy` (the toy profile maps runs/x to runs/toy/x): nothing moves."""
    runs = root / "runs" / "toy" / "fixed"
    write_run(
        runs / "all_tokens",
        "fixed_all_tokens",
        TOY,
        [{"lr": 0.05, "values": {"toy_wmdp": flip(TW, 1, 4), "toy_mmlu": flip(TM, 1, 4)}}],
        profile="toy",
        tasks=TOY_TASKS,
    )
    write_run(
        runs / "selective",
        "fixed_selective",
        TOY,
        [{"lr": 0.05, "values": {"toy_wmdp": flip(TW, 3, 4), "toy_mmlu": flip(TM, 1, 3)}}],
        profile="toy",
        tasks=TOY_TASKS,
        control="all_tokens",
        control_path="specs/fixed/all_tokens.yaml",
    )


def d(findings, code: str):
    return [f for f in findings if f.code == code]


def test_toy_fixed_study_is_flagged_until_a_positive_control_is_checked(tmp_path):
    specs = make_project(tmp_path, extra={"oracle": _oracle()})
    _toy_results(tmp_path)
    fixed = specs / "fixed"
    toy = default_toy_profile()
    findings, _ = diagnose(
        [fixed / "selective.yaml", fixed / "all_tokens.yaml", fixed / "magic_wmdp.yaml", fixed / "magic_mmlu.yaml"],
        profile=toy,
    )
    (d13,) = d(findings, "D13")
    assert (
        d13.severity == "warning" and d13.rule == "no-positive-control" and d13.spec.endswith("fixed/all_tokens.yaml")
    )
    assert "no positive control in the study" in d13.message and "toy world" in d13.evidence[1]
    assert (
        "whose control is" in d13.evidence[0]
        and "selective.yaml" in d13.evidence[0]
        and "oracle" not in d13.evidence[0]
    )
    # the oracle (role: positive_control, matched to the same control) among the specs checked clears it
    findings, count = diagnose([fixed], profile=toy)
    assert count == 5 and d(findings, "D13") == []
    # the same from the command line
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "unlearnspec",
            "doctor",
            "specs/fixed/selective.yaml",
            "specs/fixed/all_tokens.yaml",
            "--toy",
            "--format",
            "json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert [f["rule"] for f in json.loads(out.stdout)["findings"] if f["code"] == "D13"] == ["no-positive-control"], (
        out.stderr
    )
    out = subprocess.run(
        [sys.executable, "-m", "unlearnspec", "doctor", "specs/fixed", "--toy", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not [f for f in json.loads(out.stdout)["findings"] if f["code"] == "D13"], out.stderr


def test_toy_specs_are_flagged_without_results_real_specs_are_not():
    assert d(diagnose([REPO / "specs" / "fixed"], profile=default_toy_profile())[0], "D13")
    assert d(diagnose([REPO / "specs" / "fixed"])[0], "D13") == []  # real, no results: not judged


# --------------------------------------------------------------------------- real runs
BW, BM = answers(868, 373), answers(2000, 902)
BASE = {"wmdp_bio_robust": BW, "mmlu": BM}


def _project(root: Path) -> Path:
    root.mkdir(parents=True)
    return make_project(root)


def _real(root: Path, exp: dict, ctrl: dict) -> None:
    write_run(root / "runs" / "fixed" / "all_tokens", "fixed_all_tokens", BASE, [{"lr": 1e-4, "values": ctrl}])
    write_run(
        root / "runs" / "fixed" / "selective",
        "fixed_selective",
        BASE,
        [{"lr": 1e-4, "values": exp}],
        control="fixed_all_tokens",
        control_path="specs/fixed/all_tokens.yaml",
    )


QUIET_CTRL = {"wmdp_bio_robust": flip(BW, 3, 2), "mmlu": flip(BM, 4, 3)}
QUIET_EXP = {"wmdp_bio_robust": flip(BW, 6, 2), "mmlu": flip(BM, 5, 3)}
MOVED_EXP = {"wmdp_bio_robust": flip(BW, 60, 2), "mmlu": flip(BM, 4, 3)}


def test_real_study_flagged_only_when_nothing_moved(tmp_path):
    specs = _project(tmp_path / "quiet")
    _real(tmp_path / "quiet", QUIET_EXP, QUIET_CTRL)
    (d13,) = d(diagnose([specs])[0], "D13")
    assert "nothing moved anywhere" in d13.evidence[1]
    specs = _project(tmp_path / "moved")
    _real(tmp_path / "moved", MOVED_EXP, QUIET_CTRL)
    assert d(diagnose([specs])[0], "D13") == []


def test_d14_largest_effect_below_the_mde(tmp_path):
    specs = _project(tmp_path / "quiet")
    _real(tmp_path / "quiet", QUIET_EXP, QUIET_CTRL)
    (d14,) = d(diagnose([specs])[0], "D14")
    (strict,) = d(diagnose([specs], Thresholds(power=0.95))[0], "D14")
    assert "(power 0.95" in strict.message and "(power 0.80" in d14.message
    # vs the control, WMDP: exp right 373-6+2 = 369, control 373-3+2 = 372 -> Δ -0.0035; flips overlap on the first
    # answers, so the discordant pairs are b = 0, c = 3 (psi = 3/868); MMLU: Δ -0.0010, b = 0, c = 2 (psi 2/2000).
    za, zb = 1.959963984540054, 0.8416212335729143
    mde_w = (3 / 868) ** 0.5 * (za * 868**0.5 + zb * (868 - za**2 + zb**2) ** 0.5) / (868 + zb**2)
    mde_m = (2 / 2000) ** 0.5 * (za * 2000**0.5 + zb * (2000 - za**2 + zb**2) ** 0.5) / (2000 + zb**2)
    ratio = max(0.0035 / round(mde_w, 4), 0.0010 / round(mde_m, 4))
    assert d14.rule == "underpowered" and "largest effect is below the minimum detectable effect" in d14.message
    assert (
        f"WMDP Bio Robust Δ control -0.0035 (MDE {mde_w:.4f}" in d14.evidence[1]
        and f"{ratio:.2f}x the MDE" in d14.evidence[1]
    )
    specs = _project(tmp_path / "moved")
    _real(tmp_path / "moved", MOVED_EXP, QUIET_CTRL)
    assert d(diagnose([specs])[0], "D14") == []
    with pytest.raises(UserError, match="--power"):
        diagnose([specs], Thresholds(power=0.3))

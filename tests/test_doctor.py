"""`unlearnspec doctor`: each rule fires on a spec that has the flaw and stays quiet on one that does
not; the corrected specs/fixed/ pass clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnspec.doctor import Thresholds, diagnose, exit_code
from unlearnspec.doctor.spec_rules import estimate_fraction
from unlearnspec.spec.rules import parse_rule

from .conftest import REPO
from .fixtures.reportkit import answers, flip, load_yaml, make_project, token_stats, write_json_atomic, write_run

FIXED = REPO / "specs" / "fixed"
FIXED_ADAMW = REPO / "specs" / "fixed_adamw"


def codes(findings, code: str, spec: str = ""):
    return [f for f in findings if f.code == code and spec in f.spec]


def _both(edit):
    """Apply the same edit to the experiment and its control (keeps D1 quiet)."""
    return {"selective": edit, "all_tokens": edit}


# --------------------------------------------------------------------------- clean
def test_fixed_specs_are_clean():
    findings, count = diagnose([FIXED])
    assert count == 4
    assert findings == [], [f.message for f in findings]


def test_fixed_adamw_specs_are_clean():
    findings, count = diagnose([FIXED_ADAMW])
    assert count == 4
    assert findings == [], [f.message for f in findings]


@pytest.mark.parametrize("folder", [FIXED, FIXED_ADAMW])
def test_fixed_specs_validate_and_open_with_what_why_and_command(folder):
    out = subprocess.run(
        [sys.executable, "-m", "unlearnspec", "validate", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for path in folder.glob("*.yaml"):
        header = "\n".join(l for l in path.read_text().splitlines() if l.startswith("#"))
        assert header.startswith("# ") and "Changed vs the recorded" in header
        assert f"unlearnspec run specs/{folder.name}/{path.name}" in header


def test_fixed_adamw_study_is_matched_in_the_recorded_adamw_regime():
    exp, ctrl = load_yaml(FIXED_ADAMW / "selective.yaml"), load_yaml(FIXED_ADAMW / "all_tokens.yaml")
    producers = [load_yaml(FIXED_ADAMW / f"magic_{q}.yaml") for q in ("wmdp", "mmlu")]
    assert all(exp["training"] == ctrl["training"] == p["training"] for p in producers)
    assert all(exp["data"] == ctrl["data"] == p["data"] for p in producers)
    recorded = load_yaml(REPO / "specs" / "exp7_all_tokens.yaml")["training"]
    for key in ("optimizer", "schedule", "warmup_ratio", "batch_size", "max_steps", "seed", "max_grad_norm"):
        assert exp["training"][key] == recorded[key], key
    assert isinstance(exp["training"]["lr"], float) and exp["training"]["lr"] in recorded["lr"]
    assert {s["produced_by"] for s in exp["scores"].values()} == {
        f"specs/fixed_adamw/magic_{q}.yaml" for q in ("wmdp", "mmlu")
    }


def test_fixed_pair_is_matched_and_in_regime():
    exp, ctrl = load_yaml(FIXED / "selective.yaml"), load_yaml(FIXED / "all_tokens.yaml")
    producer = load_yaml(FIXED / "magic_wmdp.yaml")
    assert exp["loss"]["normalizer"] == ctrl["loss"]["normalizer"] == "valid"
    assert exp["training"] == producer["training"]
    # the control also sweeps the LRs of the specs/controls/ runs read against it; 1e-4 is the experiment's
    assert {k: v for k, v in ctrl["training"].items() if k != "lr"} == {
        k: v for k, v in exp["training"].items() if k != "lr"
    }
    assert exp["training"]["lr"] in ctrl["training"]["lr"] and ctrl["training"]["lr"] == [2.0e-5, 1.0e-4, 4.0e-4]
    assert exp["data"] == ctrl["data"] == producer["data"]
    assert producer["magic"]["query"]["loss"] == "answer_continuation"
    assert all(s["alignment"] == "target" for s in exp["scores"].values())


# --------------------------------------------------------------------------- D0
def test_d0_invalid_spec_is_reported_not_raised(tmp_path):
    findings, count = diagnose([make_project(tmp_path, {"all_tokens": lambda d: d["training"].update(batch_sise=4)})])
    (d0,) = codes(findings, "D0")
    assert count == 4 and d0.severity == "error" and "batch_sise" in d0.evidence[0]


# --------------------------------------------------------------------------- D1
def test_d1_unmatched_control_names_fields(tmp_path):
    def edit(d):
        d["training"]["batch_size"] = 8
        d["data"]["max_seq_len"] = 512
        d["training"]["lr"] = [1.0e-4, 2.0e-4]

    findings, _ = diagnose([make_project(tmp_path, {"selective": edit})])
    (d1,) = codes(findings, "D1")
    text = "\n".join(d1.evidence)
    assert d1.severity == "error" and "selective.yaml" in d1.spec
    assert "training.batch_size: 8 (fixed_selective) vs 4 (fixed_all_tokens)" in text
    assert "data.max_seq_len: 512 (fixed_selective) vs 1024 (fixed_all_tokens)" in text
    assert "sweeps 2e-4 where the control has no run" in text


def test_d1_missing_control_is_a_warning(tmp_path):
    findings, _ = diagnose([make_project(tmp_path, {"selective": lambda d: d.pop("control")})])
    (d1,) = codes(findings, "D1")
    assert d1.severity == "warning" and "no matched control" in d1.message


def test_d1_quiet_when_only_tokens_differ():
    findings, _ = diagnose([FIXED])
    assert codes(findings, "D1") == []


# --------------------------------------------------------------------------- D2
def test_d2_scores_from_other_data(tmp_path):
    def edit(d):
        d["data"]["select"]["count"] = 2000
        d["data"]["max_seq_len"] = 256
        d["training"]["max_steps"] = 500

    def edit_exp(d):
        edit(d)
        for src in d["scores"].values():
            src["truncate_columns"] = True

    findings, _ = diagnose([make_project(tmp_path, {"selective": edit_exp, "all_tokens": edit})])
    d2 = codes(findings, "D2")
    assert {f.message.split("`")[1] for f in d2} == {"wmdp", "mmlu"}
    text = "\n".join(d2[0].evidence)
    assert "N (data.select.count): 1000 (scores" in text and "vs 2000 (training)" in text
    assert "uses the first 256 of 1024 score columns" in text
    assert codes(findings, "D1") == []


def test_d2_sidecar_shape(tmp_path):
    specs = make_project(tmp_path)
    write_json_atomic(
        tmp_path / "runs" / "fixed" / "magic_wmdp" / "scores.json",
        {"alignment": "target", "N": 500, "S": 1024, "dtype": "float32"},
    )
    findings, _ = diagnose([specs])
    (d2,) = codes(findings, "D2")
    assert "N: 500 rows in the score file" in d2.evidence[0]


def test_d2_quiet_on_same_data():
    findings, _ = diagnose([FIXED])
    assert codes(findings, "D2") == []


# --------------------------------------------------------------------------- D3
def test_d3_regime_mismatch(tmp_path):
    def edit(d):
        d["training"]["optimizer"] = {"name": "adamw"}
        d["training"]["lr"] = 5.0e-5
        d["training"]["schedule"] = "cosine"

    findings, _ = diagnose([make_project(tmp_path, _both(edit))])
    d3 = codes(findings, "D3", "selective")
    assert len(d3) == 2 and all(f.severity == "warning" for f in d3)
    text = "\n".join(d3[0].evidence)
    assert "optimizer: sgd (scores) vs adamw (steered run)" in text
    assert "lr: 1e-4 (scores) vs 5e-5 (steered run)" in text
    assert "schedule: constant (scores) vs cosine" in text
    assert "metagradients are local" in d3[0].message


def _adamw(d):
    d["training"].update(
        optimizer={"name": "adamw", "betas": [0.9, 0.999], "eps": 1.0e-8, "weight_decay": 0.0},
        lr=5.0e-5,
        schedule="cosine",
        warmup_ratio=0.1,
        max_grad_norm=1.0,
        shuffle=True,
    )


def test_d3_adam_fields(tmp_path):
    """In a matched AdamW regime D3 is quiet; a producer with other betas, warmup or clipping is named."""
    every = dict.fromkeys(("selective", "all_tokens", "magic_wmdp", "magic_mmlu"), _adamw)
    (tmp_path / "same").mkdir()
    (tmp_path / "other").mkdir()
    findings, _ = diagnose([make_project(tmp_path / "same", every)])
    assert findings == [], [f.message for f in findings]

    def other(d):
        _adamw(d)
        d["training"].update(
            optimizer={"name": "adamw", "betas": [0.9, 0.99], "eps": 1.0e-6}, warmup_ratio=0.2, max_grad_norm=None
        )

    findings, _ = diagnose([make_project(tmp_path / "other", {**every, "magic_wmdp": other})])
    (d3,) = codes(findings, "D3", "selective")
    text = "\n".join(d3.evidence)
    for expected in (
        "betas: [0.9, 0.99] (scores) vs [0.9, 0.999] (steered run)",
        "eps: 1e-6 (scores) vs 1e-8",
        "warmup: 0.2 (scores) vs 0.1",
        "max_grad_norm (clipping): unset (scores) vs 1",
    ):
        assert expected in text, text


def test_d3_quiet_in_the_producers_regime():
    findings, _ = diagnose([FIXED])
    assert codes(findings, "D3") == []


def _batch(findings, spec="selective"):
    return [f for f in codes(findings, "D3", spec) if "global batch" in f.message]


def test_d3_global_batch_of_the_producer_spec_vs_the_steered_run(tmp_path):
    """One finding per score source; the fix names both ways to match, with the numbers of this case."""

    def edit(d):
        d["training"]["batch_size"] = 8
        d["training"]["max_steps"] = 125  # the same epoch: only the batch differs

    findings, _ = diagnose([make_project(tmp_path, _both(edit))])
    found = _batch(findings)
    assert [f.severity for f in found] == ["warning", "warning"]  # wmdp and mmlu, as the other regime findings
    (wmdp,) = [f for f in found if "`wmdp`" in f.message]
    assert "computed at a global batch of 4 rows per optimizer step, but fixed_selective trains 8" in wmdp.message
    assert wmdp.evidence == (
        "global batch: 4 (specs/fixed/magic_wmdp.yaml: training.batch_size) vs 8 (steered run, training.batch_size)",
    )
    assert "Set `training.batch_size: 4` in fixed_selective and its control" in wmdp.fix
    assert "rescore with `batch_size: 8` in specs/fixed/magic_wmdp.yaml" in wmdp.fix
    assert not any("batch" in e for f in codes(findings, "D3") for e in f.evidence if f not in found)  # not twice


def test_d3_global_batch_recorded_in_scores_json(tmp_path):
    """A score file made under 4 processes when batch_size was rows per device (16 rows per step) is not the
    producer's experiment, nor the steered run's regime: two findings, each with its own fix."""
    specs = make_project(tmp_path)
    write_json_atomic(
        tmp_path / "runs" / "fixed" / "magic_wmdp" / "scores.json",
        {"alignment": "target", "dtype": "float32", "batch_size": 16, "world_size": 4},
    )
    found = _batch(diagnose([specs])[0])
    assert len(found) == 2 and all("`wmdp`" in f.message for f in found)
    stale = next(f for f in found if "not that spec's experiment" in f.message)
    assert "global batch of 16 rows per step, but fixed_magic_wmdp says 4" in stale.message
    assert stale.evidence[0] == "scores.json: 16 rows per optimizer step, trained by 4 processes"
    assert stale.fix.startswith("Rerun the score spec (`unlearnspec run specs/fixed/magic_wmdp.yaml`)")
    steered = next(f for f in found if f is not stale)
    assert steered.evidence == ("global batch: 16 (scores.json) vs 4 (steered run, training.batch_size)",)
    assert "Set `training.batch_size: 16`" in steered.fix


def test_d3_global_batch_quiet_when_the_scores_match(tmp_path):
    specs = make_project(tmp_path)
    write_json_atomic(
        tmp_path / "runs" / "fixed" / "magic_wmdp" / "scores.json",
        {
            "alignment": "target",
            "batch_size": 4,
            "batch": {"global_batch": 4, "world_size": 4, "micro_batch_size": 1, "accumulation": 1},
        },
    )
    assert _batch(diagnose([specs])[0]) == []  # 4 ranks x 1 row is the recorded batch of 4


# --------------------------------------------------------------------------- D4
def test_d4_magic_spec_in_bf16_fails_validation_under_precision(tmp_path):
    findings, _ = diagnose([make_project(tmp_path, {"magic_wmdp": lambda d: d["model"].update(dtype="bfloat16")})])
    d4 = codes(findings, "D4", "magic_wmdp")
    assert len(d4) == 1 and d4[0].severity == "error" and "model.dtype" in d4[0].evidence[0]
    assert codes(findings, "D0") == []


def test_d4_sidecar_in_bf16(tmp_path):
    specs = make_project(tmp_path)
    write_json_atomic(
        tmp_path / "runs" / "fixed" / "magic_mmlu" / "scores.json", {"alignment": "target", "dtype": "bfloat16"}
    )
    findings, _ = diagnose([specs])
    (d4,) = codes(findings, "D4")
    assert "`mmlu`" in d4.message and "bfloat16" in d4.message


def test_d4_quiet_on_fp32_sidecar(tmp_path):
    specs = make_project(tmp_path)
    write_json_atomic(
        tmp_path / "runs" / "fixed" / "magic_mmlu" / "scores.json",
        {"alignment": "target", "dtype": "float32", "N": 1000, "S": 1024},
    )
    findings, _ = diagnose([specs])
    assert [f for f in findings if f.code != "D11"] == []  # D11: this sidecar has no LDS (tests/test_doctor_lds.py)


# --------------------------------------------------------------------------- D5
def test_d5_no_alignment_and_no_sidecar(tmp_path):
    findings, _ = diagnose([make_project(tmp_path, {"selective": lambda d: d["scores"]["wmdp"].pop("alignment")})])
    (d5,) = codes(findings, "D5")
    assert d5.severity == "error" and "`wmdp` has no declared alignment" in d5.message


def test_d5_declared_differs_from_sidecar(tmp_path):
    specs = make_project(tmp_path)
    write_json_atomic(tmp_path / "runs" / "fixed" / "magic_wmdp" / "scores.json", {"alignment": "input"})
    findings, _ = diagnose([specs])
    (d5,) = codes(findings, "D5")
    assert "target (spec) vs input (scores.json)" in d5.evidence[0]


def test_d5_input_alignment_is_a_warning(tmp_path):
    findings, _ = diagnose(
        [make_project(tmp_path, {"selective": lambda d: d["scores"]["mmlu"].update(alignment="input")})]
    )
    (d5,) = codes(findings, "D5")
    assert d5.severity == "warning" and "trainer weights targets" in d5.message


def test_d5_quiet_when_alignment_comes_from_the_sidecar(tmp_path):
    specs = make_project(tmp_path, {"selective": lambda d: d["scores"]["wmdp"].pop("alignment")})
    write_json_atomic(tmp_path / "runs" / "fixed" / "magic_wmdp" / "scores.json", {"alignment": "target"})
    findings, _ = diagnose([specs])
    assert codes(findings, "D5") == []


# --------------------------------------------------------------------------- D6
def test_d6_estimated_shift_from_the_rule(tmp_path):
    findings, _ = diagnose([make_project(tmp_path, {"selective": lambda d: d["loss"].update(normalizer="selected")})])
    (d6,) = codes(findings, "D6")
    assert d6.severity == "warning" and "x4.00" in d6.message and "ESTIMATED" in d6.evidence[0]
    # Raising the tolerated factor silences it.
    findings, _ = diagnose([tmp_path / "specs"], Thresholds(lr_factor=5.0))
    assert codes(findings, "D6") == []


def test_d6_measured_shift_from_results(tmp_path):
    specs = make_project(tmp_path, {"selective": lambda d: d["loss"].update(normalizer="selected")})
    write_run(
        tmp_path / "runs" / "fixed" / "selective",
        "fixed_selective",
        None,
        [
            {"lr": 1e-4, "values": {"wmdp_bio_robust": 0.30, "mmlu": 0.45}, "stats": token_stats(0.1)},
        ],
    )
    findings, _ = diagnose([specs])
    (d6,) = codes(findings, "D6")
    assert d6.severity == "error" and "x10.00" in d6.message and "measured in results.json" in d6.evidence[0]


def test_d6_quiet_with_valid_normalizer():
    findings, _ = diagnose([FIXED])
    assert codes(findings, "D6") == []


def test_selected_fraction_estimates():
    assert estimate_fraction(parse_rule("wmdp > 0")) == 0.5
    assert estimate_fraction(parse_rule("wmdp > 0 and mmlu <= 0")) == 0.25
    assert estimate_fraction(parse_rule("wmdp > 0 or mmlu < 0")) == 0.75
    assert estimate_fraction(parse_rule("not wmdp > 0")) == 0.5


# --------------------------------------------------------------------------- D7-D9 on results.json
W, M = 868, 2000
BW, BM = answers(W, 373), answers(M, 902)


def _results(tmp: Path, exp_runs: list[dict], ctrl_runs: list[dict]) -> None:
    base = {"wmdp_bio_robust": BW, "mmlu": BM}
    write_run(
        tmp / "runs" / "fixed" / "selective",
        "fixed_selective",
        base,
        exp_runs,
        control="fixed_all_tokens",
        control_path="specs/fixed/all_tokens.yaml",
    )
    write_run(tmp / "runs" / "fixed" / "all_tokens", "fixed_all_tokens", base, ctrl_runs)


HEALTHY_CTRL = [{"lr": 1e-4, "values": {"wmdp_bio_robust": flip(BW, 3, 2), "mmlu": flip(BM, 4, 3)}}]
SELECTIVE = [{"lr": 1e-4, "values": {"wmdp_bio_robust": flip(BW, 60, 2), "mmlu": flip(BM, 4, 3)}}]


def test_no_false_alarm_on_clean_specs_with_healthy_results(tmp_path):
    specs = make_project(tmp_path)
    _results(tmp_path, SELECTIVE, HEALTHY_CTRL)
    findings, _ = diagnose([specs])
    findings = [f for f in findings if f.code != "D11"]  # LDS findings: tests/test_doctor_lds.py
    assert findings == [], [(f.code, f.message) for f in findings]


def test_d7_collapse(tmp_path):
    specs = make_project(tmp_path)
    _results(
        tmp_path, [{"lr": 1e-4, "values": {"wmdp_bio_robust": answers(W, 204), "mmlu": answers(M, 493)}}], HEALTHY_CTRL
    )
    findings, _ = diagnose([specs])
    (d7,) = codes(findings, "D7")
    assert "selective" in d7.spec and "lr 1e-4: WMDP Bio Robust 0.2350" in d7.evidence[0]
    assert codes(findings, "D8") == []  # collapsed points are not read as (non-)effects


def test_d8_effect_within_noise_of_the_control(tmp_path):
    specs = make_project(tmp_path)
    _results(
        tmp_path, [{"lr": 1e-4, "values": {"wmdp_bio_robust": flip(BW, 6, 2), "mmlu": flip(BM, 5, 3)}}], HEALTHY_CTRL
    )
    findings, _ = diagnose([specs])
    (d8,) = codes(findings, "D8")
    assert "only 'effect' is noise" in d8.message and "vs control" in d8.evidence[0] and "McNemar" in d8.evidence[0]


def test_d9_control_moves_the_metrics(tmp_path):
    specs = make_project(tmp_path)
    _results(
        tmp_path, SELECTIVE, [{"lr": 1e-4, "values": {"wmdp_bio_robust": flip(BW, 3, 2), "mmlu": flip(BM, 80, 5)}}]
    )
    findings, _ = diagnose([specs])
    (d9,) = codes(findings, "D9")
    assert "all_tokens" in d9.spec and "MMLU -0.0375" in d9.evidence[0]


# --------------------------------------------------------------------------- the shipped specs
@pytest.fixture(scope="module")
def shipped():
    return diagnose([REPO / "specs"])[0]


def test_shipped_d1_exp3_names_the_recorded_mismatch(shipped):
    (d1,) = codes(shipped, "D1", "exp3_positive_only")
    text = "\n".join(d1.evidence)
    for expected in (
        "data.max_seq_len: 256 (exp3_positive_only) vs 1024 (exp7_all_tokens)",
        "training.batch_size: 32 (exp3_positive_only) vs 8 (exp7_all_tokens)",
        "training.max_steps: 31 (exp3_positive_only) vs 125 (exp7_all_tokens)",
    ):
        assert expected in text
    # + the oracle: a toy-world spec (ground truth exists only there) whose control is a real spec; read without
    # --toy they differ in model and data. Under --toy they match (tests/test_builtin_scores.py).
    assert {f.spec for f in codes(shipped, "D1") if f.severity == "error"} == {
        "specs/exp3_positive_only.yaml",
        "specs/exp5_selective.yaml",
        "specs/exp6_compatible.yaml",
        "specs/controls/oracle.yaml",
    }
    (oracle,) = codes(shipped, "D1", "controls/oracle")
    assert (
        "model.name_or_path: unset (controls_oracle) vs EleutherAI/deep-ignorance-unfiltered (fixed_all_tokens)"
        in oracle.evidence
    )
    assert {f.spec for f in codes(shipped, "D1") if f.severity == "warning"} == {
        "specs/exp1_value_weighted.yaml",
        "specs/exp2_sign_only.yaml",
    }
    assert codes(shipped, "D1", "exp4_negative_only") == []  # exp4 matched exp7 field by field


def test_shipped_d2_exp3_uses_a_prefix_of_the_columns(shipped):
    (d2,) = codes(shipped, "D2", "exp3_positive_only")
    assert "uses the first 256 of 1024 score columns" in d2.evidence[0]
    assert {f.spec for f in codes(shipped, "D2")} == {"specs/exp3_positive_only.yaml"}


def test_shipped_d3_on_every_attribution_experiment(shipped):
    specs = {f.spec for f in codes(shipped, "D3")}
    assert specs == {
        f"specs/{n}.yaml"
        for n in (
            "exp1_value_weighted",
            "exp2_sign_only",
            "exp3_positive_only",
            "exp4_negative_only",
            "exp5_selective",
            "exp6_compatible",
            "controls/magic_topk",
            "controls/magic_topk_not_mmlu",
            "controls/magic_q_min",
            "controls/magic_q_union",
            "per_task/task_min_topk",
            "quick/magic_topk",
        )
    }  # the controls sweep 2e-5 and 4e-4 too
    (toy,) = codes(shipped, "D3", "per_task/task_min_topk")
    assert "lr: 0.05 (scores) vs 0.01 (steered run)" in toy.evidence  # the toy sweep 0.01, 0.05
    expected = {
        "specs/controls/magic_topk.yaml": "lr: 1e-4 (scores) vs 2e-5 (steered run)",  # 4e-4 diverged: left out
        "specs/controls/magic_topk_not_mmlu.yaml": "lr: 1e-4 (scores) vs 2e-5, 4e-4 (steered run)",
    }
    assert all(expected[f.spec] in f.evidence for f in codes(shipped, "D3", "controls/magic_topk"))
    exp1 = "\n".join(codes(shipped, "D3", "exp1")[0].evidence)
    assert "optimizer: sgd (scores) vs adam (steered run)" in exp1


def test_shipped_d6_exp5_uses_the_recorded_fraction(shipped):
    (d6,) = codes(shipped, "D6", "exp5_selective")
    # AdamW: the update is invariant to the loss scale, so the x6.76 normalizer ratio is stated, not an error (issue 22)
    assert d6.severity == "info" and "14.8% recorded" in d6.evidence[0] and "x6.76" in d6.message
    assert codes(shipped, "D6", "exp7") == [] and codes(shipped, "D6", "exp1") == []


def test_shipped_reference_rules(shipped):
    (d7,) = codes(shipped, "D7", "exp2_sign_only")
    assert [e.split(":")[0] for e in d7.evidence] == ["lr 1e-5", "lr 5e-5", "lr 8e-5", "lr 1e-4", "lr 2e-4"]
    assert "0.2350" in d7.evidence[1] and "0.2465" in d7.evidence[1]
    (d9,) = codes(shipped, "D9", "exp7_all_tokens")
    assert [e.split(" vs")[0] for e in d9.evidence] == ["lr 5e-5", "lr 1e-4", "lr 2e-4"]
    (d8,) = codes(shipped, "D8", "exp1_value_weighted")
    assert [e.split(" vs")[0] for e in d8.evidence] == ["lr 5e-6", "lr 1e-5", "lr 2e-5"]
    assert codes(shipped, "D8", "exp7") == []  # a quiet control is not a finding
    assert exit_code(shipped) == 2


# --------------------------------------------------------------------------- CLI
def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unlearnspec", "doctor", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_exit_codes_and_json(tmp_path):
    clean = _cli("specs/fixed/")
    assert clean.returncode == 0 and "clean" in clean.stdout
    out = _cli("specs/", "--format", "json")
    assert out.returncode == 2
    data = json.loads(out.stdout)
    assert data["exit_code"] == 2 and data["summary"]["errors"] > 0
    first = data["findings"][0]
    assert set(first) == {"code", "rule", "severity", "spec", "message", "evidence", "fix"}
    specs = make_project(tmp_path, {"selective": lambda d: d["scores"]["mmlu"].update(alignment="input")})
    warn = _cli(str(specs))
    assert warn.returncode == 1 and "D5 alignment-ambiguity" in warn.stdout
    assert _cli(str(specs), "--strict").returncode == 2


def test_cli_bad_arguments_are_short_errors():
    for args in (("nope/",), ("specs/fixed/", "--format", "xml"), ("specs/fixed/", "--lr-factor", "0.5")):
        out = _cli(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.strip()


def test_doctor_through_the_toy_profile_reads_toy_outputs_and_skips_recorded_numbers():
    from unlearnspec.doctor.context import Workspace
    from unlearnspec.spec.profile import default_toy_profile

    from .conftest import SPECS

    ws = Workspace(default_toy_profile())
    entry = ws.spec(SPECS / "exp7_all_tokens.yaml")
    assert entry.spec is not None and entry.spec.output.dir == "runs/toy/exp7_all_tokens"
    assert entry.spec.model.toy == "tiny-neox"
    assert ws.reference(entry) is None
    assert Workspace().reference(Workspace().spec(SPECS / "exp7_all_tokens.yaml")) is not None


def test_run_ends_with_the_doctors_summary_of_the_specs_it_ran(tmp_path, monkeypatch):
    """A local `run` ends with the doctor's counts and one line per error/warning, and names the doctor call that
    shows the evidence; the run's exit code stays the run's (warnings do not fail it)."""
    from typer.testing import CliRunner

    from unlearnspec.cli import app
    from unlearnspec.run import study

    from .fixtures.reportkit import make_project

    specs = make_project(tmp_path, {"selective": lambda d: d["training"]["optimizer"].update(momentum=0.9)})
    monkeypatch.setattr(study, "run_study", lambda *a, **k: 0)  # the specs' jobs are not the point here
    out = CliRunner().invoke(app, ["run", str(specs), "--no-report"])
    assert out.exit_code == 0 and "doctor:" not in out.output  # no reports: no verdict either
    out = CliRunner().invoke(app, ["run", str(specs)])
    assert out.exit_code == 0, out.output
    head = next(line for line in out.output.splitlines() if line.startswith("doctor: "))
    assert "error(s)" in head and "in 4 spec(s)" in head  # specs/fixed: the pair and their two score specs
    assert "D3 score-regime-mismatch" in out.output and "momentum" not in head
    assert f"evidence and fixes: unlearnspec doctor {specs}" in out.output

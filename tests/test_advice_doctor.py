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


def test_d3_an_attacked_experiment_can_still_be_rescored(tmp_path):
    """The relearning attack evaluates the unlearned model; it is no part of the training regime MAGIC replays,
    so D3 must not tell the user that MAGIC refuses it (it once said "Delete `attack` here")."""
    attack = {
        "data": {"toy": {"corpus": "bio_forget"}, "select": {"count": 8, "min_chars": 20, "offset": 250}},
        "steps": [5],
        "lr": 1.0e-3,
        "optimizer": {"name": "adamw", "weight_decay": 0.0},
        "batch_size": 4,
        "seed": 0,
    }

    def edit(d):
        d["training"]["optimizer"] = {"name": "adamw"}
        d["training"]["lr"] = 5.0e-5
        d["attack"] = attack

    findings, _ = diagnose([make_project(tmp_path, {"selective": edit})])
    d3 = codes(findings, "D3", "selective")
    assert d3 and all("or rescore in the steered regime" in f.fix and "attack" not in f.fix for f in d3), d3


def test_rescore_refusals_follow_the_magic_rules():
    """The recorded bf16 experiments cannot be rescored as run; the fixed ones can."""
    (exp1,) = rescore_refusals(load_spec(SPECS / "exp1_value_weighted.yaml", check_refs=False))
    assert exp1.field.startswith("model.dtype: bfloat16") and "float32" in exp1.nearest
    assert rescore_refusals(load_spec(SPECS / "fixed" / "selective.yaml", check_refs=False)) == []
    assert rescore_refusals(load_spec(SPECS / "fixed_adamw" / "selective.yaml", check_refs=False)) == []


# --------------------------------------------------------------------------- D6: per optimizer, one severity rule
TOP60 = {"mode": "top", "source": "wmdp", "k": 60, "order": "most_negative", "selected": "ascend", "rest": "mask"}


def _top60(optimizer: dict):
    def edit(d):
        d["tokens"] = dict(TOP60)
        d["loss"]["normalizer"] = "selected"
        d["training"]["optimizer"] = optimizer

    return edit


def _measured(tmp_path, fraction: float = 0.01):
    from .fixtures.reportkit import token_stats, write_run

    write_run(
        tmp_path / "runs" / "fixed" / "selective",
        "fixed_selective",
        None,
        [{"lr": 1e-4, "values": {"wmdp_bio_robust": 0.30, "mmlu": 0.45}, "stats": token_stats(fraction)}],
    )


def test_d6_sgd_bound_before_the_run_says_the_measurement_decides(tmp_path):
    specs = make_project(tmp_path, {"selective": _top60({"name": "sgd"})})
    (before,) = codes(diagnose([specs])[0], "D6")
    assert before.severity == "warning" and "up to x17050.00" in before.message
    assert "upper bound" in "\n".join(before.evidence) and "the run measures it" in "\n".join(before.evidence)
    assert "LR / 17050" not in before.fix and "`loss.normalizer: valid`" in before.fix  # no LR from a bound
    _measured(tmp_path)
    (after,) = codes(diagnose([specs])[0], "D6")
    assert after.severity == "error" and "x100.00" in after.message and "measured in results.json" in after.evidence[0]
    assert "LR / 100" in after.fix


def test_d6_sgd_before_the_run_agrees_with_after_when_the_control_counted_the_grid(tmp_path):
    from .fixtures.reportkit import token_stats, write_run

    specs = make_project(tmp_path, {"selective": _top60({"name": "sgd"})})
    write_run(
        tmp_path / "runs" / "fixed" / "all_tokens",
        "fixed_all_tokens",
        None,
        [{"lr": 1e-4, "values": {"wmdp_bio_robust": 0.40, "mmlu": 0.45}, "stats": token_stats(1.0, "valid")}],
    )
    (before,) = codes(diagnose([specs])[0], "D6")
    assert (
        before.severity == "error"
        and "x166.67" in before.message
        and "10,000 valid target tokens" in before.evidence[0]
    )
    _measured(tmp_path, 60 / 10000)
    (after,) = codes(diagnose([specs])[0], "D6")
    assert (after.severity, after.message) == (before.severity, before.message)


def test_d6_adamw_states_the_scale_without_the_sgd_fix_before_and_after(tmp_path):
    specs = make_project(tmp_path, {"selective": _top60({"name": "adamw"})})
    (before,) = codes(diagnose([specs])[0], "D6")
    _measured(tmp_path)
    (after,) = codes(diagnose([specs])[0], "D6")
    for f in (before, after):
        assert f.severity == "info"  # the same before (a bound) and after (measured)
        assert "normalizer: valid" not in f.fix and "Nothing to change" in f.fix
        assert "invariant to the loss scale" in f.message and "direction" in "\n".join(f.evidence)
    assert "up to x17050.00" in before.message and "x100.00" in after.message


def test_d6_adam_with_l2_decay_warns_about_the_decay_balance(tmp_path):
    specs = make_project(tmp_path, {"selective": _top60({"name": "adam", "weight_decay": 0.01})})
    (before,) = codes(diagnose([specs])[0], "D6")
    _measured(tmp_path)
    (after,) = codes(diagnose([specs])[0], "D6")
    for f in (before, after):
        assert f.severity == "warning" and "L2 weight decay" in f.message and "`adamw`" in f.fix


def test_d6_sgd_is_a_note_when_a_negative_control_takes_the_same_step(tmp_path):
    """A random-token negative control at the same k, normalizer, optimizer and LRs separates the selection from
    the larger step: the shift is a matched design (info), for the experiment and for the control itself. Without
    it, or with another k, the same experiment is still an error once measured."""
    import copy

    from .fixtures.reportkit import load_yaml

    def negative(k: int):
        data = load_yaml(SPECS / "fixed" / "selective.yaml")
        _top60({"name": "sgd"})(data)
        data.update(name="fixed_random", role="negative_control")
        data["scores"] = {"rand": {"random": {"seed": 0}}}
        data["tokens"] = dict(TOP60, source="rand", k=k)
        return data

    specs = make_project(tmp_path, {"selective": _top60({"name": "sgd"})}, extra={"random": negative(60)})
    _measured(tmp_path)
    findings = diagnose([specs])[0]
    (mine,) = codes(findings, "D6", "selective")
    (null,) = codes(findings, "D6", "random")
    assert mine.severity == "info" and "specs/fixed/random.yaml" in mine.fix and "takes the same step" in mine.message
    assert null.severity == "info" and "negative control" in null.message and "selective" in null.evidence[-1]
    other = tmp_path / "other"
    other.mkdir()
    specs = make_project(other, {"selective": _top60({"name": "sgd"})}, extra={"random": copy.deepcopy(negative(30))})
    _measured(other)
    (mine,) = codes(diagnose([specs])[0], "D6", "selective")
    assert mine.severity == "error" and "LR / 100" in mine.fix  # another k: another step, not a match


# --------------------------------------------------------------------------- D1: the matched control that exists
def test_d1_points_an_adamw_run_at_the_existing_adamw_control(tmp_path):
    import yaml

    from .fixtures.reportkit import load_yaml, spec_project

    root = spec_project(tmp_path, "fixed", "fixed_adamw")
    exp = load_yaml(SPECS / "fixed_adamw" / "selective.yaml")
    exp.update(name="trial_adamw", control="specs/fixed/all_tokens.yaml")  # the SGD control: the trial's mistake
    (root / "specs" / "trial.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    findings, _ = diagnose([root / "specs" / "trial.yaml"])
    (d1,) = codes(findings, "D1")
    assert (
        d1.severity == "error"
        and "training.optimizer.name: adamw (trial_adamw) vs sgd (fixed_all_tokens)" in d1.evidence
    )
    assert d1.fix.startswith("Set `control: specs/fixed_adamw/all_tokens.yaml`")
    # with no control at all: the same pointer
    del exp["control"]
    (root / "specs" / "trial.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    (d1,) = codes(diagnose([root / "specs" / "trial.yaml"])[0], "D1")
    assert d1.severity == "warning" and "`control: specs/fixed_adamw/all_tokens.yaml`" in d1.fix


def test_d1_without_a_matched_control_keeps_the_generic_fix_and_names_missing_lrs(tmp_path):
    import yaml

    from .fixtures.reportkit import load_yaml, spec_project

    root = spec_project(tmp_path, "fixed")
    exp = load_yaml(SPECS / "fixed" / "selective.yaml")
    exp.update(name="trial_sweep")
    exp["training"]["lr"] = [1.0e-4, 5.0e-5]
    exp["training"]["batch_size"] = 8  # no all-tokens spec has batch 8
    (root / "specs" / "trial.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    (d1,) = codes(diagnose([root / "specs" / "trial.yaml"])[0], "D1")
    assert "Set `control:" not in d1.fix and "identical except `tokens`" in d1.fix
    exp["training"]["batch_size"] = 4  # now specs/fixed/all_tokens.yaml matches, but sweeps only 1e-4
    exp["control"] = "specs/nope_control.yaml"
    (root / "specs" / "nope_control.yaml").write_text(
        yaml.safe_dump(
            {
                **load_yaml(SPECS / "fixed" / "all_tokens.yaml"),
                "name": "other",
                "training": {**exp["training"], "optimizer": {"name": "adamw"}},
            },
            sort_keys=False,
        )
    )
    (root / "specs" / "trial.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    (d1,) = codes(diagnose([root / "specs" / "trial.yaml"])[0], "D1")
    assert d1.fix.startswith("Set `control: specs/fixed/all_tokens.yaml`") and "does not sweep 5e-5" in d1.fix


def test_d1_toy_only_spec_with_a_real_control_is_told_to_use_toy():
    findings, _ = diagnose([SPECS / "controls" / "oracle.yaml"])
    (d1,) = codes(findings, "D1", "oracle")
    assert "doctor --toy" in d1.fix
    from unlearnspec.spec.profile import default_toy_profile

    assert codes(diagnose([SPECS / "controls" / "oracle.yaml"], profile=default_toy_profile())[0], "D1") == []


# --------------------------------------------------------------------------- D11: what a rank rule changes
def _lds_sidecars(tmp_path, fraction: float = 0.01):
    from .fixtures.reportkit import write_json_atomic

    lds = {
        "spearman": 0.97,
        "pearson": 0.97,
        "spearman_ci95": [0.95, 0.99],
        "subsets": 30,
        "fraction": fraction,
        "unit": "row",
    }
    for name in ("magic_wmdp", "magic_mmlu"):
        write_json_atomic(
            tmp_path / "runs" / "fixed" / name / "scores.json",
            {"alignment": "target", "dtype": "float32", "N": 1000, "S": 1024, "lds": lds},
        )


def _top(k=None, fraction=None):
    def edit(d):
        d["tokens"] = (
            {**TOP60, "k": k}
            if k is not None
            else {**{x: y for x, y in TOP60.items() if x != "k"}, "fraction": fraction}
        )
        d["scores"].pop("mmlu")

    return edit


def test_d11_top40_ascend_mask_is_not_100_percent_changed(tmp_path):
    specs = make_project(tmp_path, {"selective": _top(k=40)})
    _lds_sidecars(tmp_path)
    _measured(tmp_path, 0.004)  # 40 of 10,000 valid tokens
    found = codes(diagnose([specs])[0], "D11")
    assert [f.severity for f in found] == ["info"]  # 0.4% picked by rank: within 5x the 1% the LDS dropped
    assert any("masking the rest is the rule's doing" in e for e in found[0].evidence)
    assert not any("100" in e for e in found[0].evidence)


def test_d11_large_rank_share_suggests_that_share_never_a_capped_90_percent(tmp_path):
    specs = make_project(tmp_path, {"selective": _top(fraction=0.2)})
    _lds_sidecars(tmp_path)
    (warn,) = [
        f for f in codes(diagnose([specs])[0], "D11") if f.severity == "warning"
    ]  # known from `fraction`, before a run
    assert "20.0% of valid tokens change weight by the scores" in warn.evidence[0]
    assert "--unit token --fraction 0.2`" in warn.fix and "0.90" not in warn.fix


def test_d11_value_weighted_gets_no_fraction_to_measure(tmp_path):
    def edit(d):
        d["tokens"] = {"mode": "value_weighted", "source": "wmdp"}
        d["scores"].pop("mmlu")

    specs = make_project(tmp_path, {"selective": edit})
    _lds_sidecars(tmp_path)
    (warn,) = [f for f in codes(diagnose([specs])[0], "D11") if f.severity == "warning"]
    assert "--fraction" not in warn.fix and "No dropped fraction matches" in warn.fix

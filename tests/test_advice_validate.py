"""Advice of `validate` (issue 22): a toy-only spec that reads a real producer is told to use --toy (which
then passes), never to set `truncate_columns`; a `produced_by` cycle fails `validate` naming the chain."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.doctor import diagnose

from .conftest import SPECS
from .fixtures.reportkit import load_yaml, spec_project


def _validate(*args: str):
    result = CliRunner().invoke(app, ["validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def _toy_spec_reading_a_real_producer(root: Path) -> Path:
    """The trial's spec: the toy top-k rule of specs/per_task/task_min_topk.yaml pointed at the real producer
    specs/fixed/magic_wmdp.yaml (1024 columns against the toy's 64)."""
    data = load_yaml(SPECS / "per_task" / "task_min_topk.yaml")
    data["name"] = "trial_toy_topk"
    data["scores"]["wmdp"]["produced_by"] = "specs/fixed/magic_wmdp.yaml"
    data["tokens"]["source"] = "wmdp"
    path = root / "specs" / "trial.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_toy_only_spec_is_told_to_use_toy_and_validates_with_it(tmp_path):
    root = spec_project(tmp_path, "fixed", "per_task", "profiles")
    path = _toy_spec_reading_a_real_producer(root)
    plain = _validate(str(path))
    assert plain.exit_code == 2
    assert "toy-only" in plain.output and "`--toy`" in plain.output and "scores.wmdp.produced_by" in plain.output
    assert "truncate_columns" not in plain.output  # the old advice: it made validate pass and doctor error (D2)
    assert _validate(str(path), "--toy").exit_code == 0
    # the same spec set to what the old advice said still gets the world advice, not a pass
    data = yaml.safe_load(path.read_text())
    data["scores"]["wmdp"]["truncate_columns"] = True
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    again = _validate(str(path))
    assert again.exit_code == 2 and "toy-only" in again.output
    # doctor without --toy: D2's fix is the same advice, not "score the grid you train on"
    findings, _ = diagnose([path])
    (d2,) = [f for f in findings if f.code == "D2"]
    assert "`--toy`" in d2.fix and "toy-only" in d2.fix


def test_real_spec_reading_a_toy_producer_is_told_to_use_a_real_one(tmp_path):
    root = spec_project(tmp_path, "fixed", "per_task", "profiles")
    data = load_yaml(SPECS / "fixed" / "selective.yaml")
    data["scores"] = {"wmdp": {"produced_by": "specs/per_task/magic_wmdp_by_attribute.yaml", "alignment": "target"}}
    data["tokens"]["where"] = "wmdp < 0"
    path = root / "specs" / "real.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = _validate(str(path))
    assert out.exit_code == 2 and "toy scores cannot steer the real model" in out.output
    assert "truncate_columns" not in out.output and "larger than" not in out.output


def test_validate_toy_checks_the_shipped_specs_as_mapped():
    assert _validate(str(SPECS), "--toy", "-q").exit_code == 0
    both = _validate(str(SPECS), "--toy", "--profile", str(SPECS / "profiles" / "toy.yaml"))
    assert both.exit_code == 2 and "either --toy or --profile" in both.output


def _magic(root: Path, name: str, producer: str) -> Path:
    data = load_yaml(SPECS / "fixed" / "magic_wmdp.yaml")
    data["name"] = name
    data["scores"] = {"other": {"produced_by": producer, "alignment": "target"}}
    path = root / "specs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_self_referencing_producer_fails_validate_naming_the_chain(tmp_path):
    root = spec_project(tmp_path, "fixed")
    path = _magic(root, "self_ref", "specs/self_ref.yaml")
    out = _validate(str(path))
    assert out.exit_code == 2, out.output
    assert (
        "specs/self_ref.yaml -> specs/self_ref.yaml" in out.output and "cannot depend on its own scores" in out.output
    )


def test_longer_producer_cycle_fails_validate_for_each_spec_in_it(tmp_path):
    root = spec_project(tmp_path, "fixed")
    a = _magic(root, "cyc_a", "specs/cyc_b.yaml")
    _magic(root, "cyc_b", "specs/cyc_c.yaml")
    _magic(root, "cyc_c", "specs/cyc_a.yaml")
    out = _validate(str(a))
    assert out.exit_code == 2
    assert "specs/cyc_a.yaml -> specs/cyc_b.yaml -> specs/cyc_c.yaml -> specs/cyc_a.yaml" in out.output
    folder = _validate(str(root / "specs"))
    assert folder.exit_code == 2 and folder.output.count("leads back to this spec") == 3
    # a producer that merely shares a producer (a diamond, not a cycle) is fine
    (root / "specs" / "cyc_c.yaml").write_text((root / "specs" / "fixed" / "magic_wmdp.yaml").read_text())
    assert _validate(str(a)).exit_code == 0


# --------------------------------------------------------------------------- profile mapping said at the start
def _warmup_spec(root: Path) -> Path:
    data = load_yaml(SPECS / "fixed" / "all_tokens.yaml")
    data["name"] = "trial_warmup"
    data["training"]["warmup_steps"] = 5
    data["output"]["dir"] = "runs/trial_warmup"
    path = root / "specs" / "trial_warmup.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


WARMUP_LINE = (
    "trial_warmup: training.warmup_steps: 5 -> 1 (training.steps_scale 0.25, rounded, at least 0; profile toy)"
)


def test_plan_says_which_knobs_the_profile_changed(tmp_path):
    path = _warmup_spec(spec_project(tmp_path, "fixed"))
    out = CliRunner().invoke(app, ["run", str(path), "--toy", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert f"[profile] {WARMUP_LINE}" in out.output
    assert "trial_warmup: training.max_steps: 250 -> 62 (training.steps_scale 0.25" in out.output
    assert (
        "trial_warmup: training.lr: [2e-05, 0.0001, 0.0004] -> [0.01, 0.05, 0.2] (training.lr_scale.sgd 500; profile toy)"
        in out.output
    )
    plain = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert plain.exit_code == 0 and "[profile]" not in plain.output  # no profile: nothing mapped


def test_run_says_which_knobs_the_profile_changed_when_it_starts(tmp_path, monkeypatch):
    from unlearnspec.run.executors.serial import SerialExecutor
    from unlearnspec.run.outcome import Outcome

    path = _warmup_spec(spec_project(tmp_path, "fixed"))
    started = []
    monkeypatch.setattr(SerialExecutor, "submit", lambda self, plan: started.append(plan))
    monkeypatch.setattr(SerialExecutor, "wait", lambda self: Outcome())
    out = CliRunner().invoke(app, ["run", str(path), "--toy", "--no-report"])
    assert started and out.exit_code == 0, out.output
    assert f"[profile] {WARMUP_LINE}" in out.output


def test_a_long_mapping_starts_a_run_as_one_line_per_spec_plus_the_shared_changes():
    """The whole toy study changes ~300 knobs: a run starts with the changes every spec shares once and one line per
    spec with its own, and every changed knob of the full list is in one of them (the plan keeps the reasons)."""
    from unlearnspec.run.options import RunOptions, make_context, make_plan
    from unlearnspec.spec.profile import default_toy_profile

    options = RunOptions(profile=default_toy_profile(), auto_produce=True)
    plan = make_plan([SPECS], options, make_context(options, say=lambda m: None))
    full, short = plan.mapping_lines(), plan.mapping_summary()
    assert len(full) > 100 and len(short) < len(plan.specs) + 2
    assert short[0].startswith("all ") and "model EleutherAI/deep-ignorance-unfiltered -> toy:tiny-neox" in short[0]
    names = [line.split(":", 1)[0] for line in short[1:]]
    assert len(names) == len(set(names))
    for run in plan.specs:
        for knob in plan.mapped.get(run.path.resolve(), []):
            assert knob.short() in short[0] or any(
                line.startswith(f"{run.spec.name}: ") and knob.short() in line for line in short[1:]
            ), (run.spec.name, knob.short())

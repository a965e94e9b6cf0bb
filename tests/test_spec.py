"""Spec schema, loader and the cross-field rules: every shipped spec validates; mistakes are clean errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unlearnspec.errors import UserError
from unlearnspec.spec import json_schema
from unlearnspec.spec.load import find_spec_files, is_profile_path, load_spec, validate_data, validate_files
from unlearnspec.spec.yamlio import apply_overrides, parse_yaml

from .conftest import REPO, SPECS

SHIPPED = [p for p in find_spec_files([SPECS])[0] if not is_profile_path(p)]
EXP7 = SPECS / "exp7_all_tokens.yaml"


def _data(path: Path) -> dict:
    return parse_yaml(path.read_text(), str(path))[0]


def _messages(exc: UserError) -> str:
    return "\n".join(p.render() for p in exc.problems)


def test_every_shipped_spec_validates():
    names = {p.stem for p in SHIPPED}
    experiments = {f"exp{i}" for i in range(1, 8)}
    assert experiments <= {n.split("_")[0] for n in names}
    assert len([p for p in SHIPPED if p.parent.name == "magic"]) == 9
    count, problems = validate_files(find_spec_files([SPECS])[0])
    assert problems == []
    assert count >= 16


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_json_schema_accepts_shipped_spec(path):
    jsonschema.Draft202012Validator(json_schema()).validate(_data(path))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_spec_opens_with_comment_and_run_command(path):
    text = path.read_text()
    assert text.startswith("# ")
    header = "".join(line for line in text.splitlines() if line.startswith("#"))
    assert f"unlearnspec run {path.relative_to(REPO).as_posix()}" in header


def test_schema_has_field_docs():
    schema = json_schema()
    training = schema["$defs"]["TrainingSpec"]["properties"]
    assert "sweep" in training["lr"]["description"]
    assert "normalizer" in json.dumps(schema["$defs"]["LossSpec"])


def test_seed_hyperparameters_are_encoded():
    exp3 = load_spec(SPECS / "exp3_positive_only.yaml")
    assert exp3.training.batch_size == 32 and exp3.training.max_steps == 31 and exp3.data.max_seq_len == 256
    assert exp3.training.lrs == (1e-6, 1e-5, 5e-5, 2e-4)
    exp2 = load_spec(SPECS / "exp2_sign_only.yaml")
    assert exp2.training.lrs == (1e-7, 1e-6, 2e-6, 5e-6, 1e-5, 5e-5, 8e-5, 1e-4, 2e-4)
    exp5 = load_spec(SPECS / "exp5_selective.yaml")
    assert exp5.tokens.where == "wmdp > 0 and mmlu <= 0" and set(exp5.scores) == {"wmdp", "mmlu"}
    magic = load_spec(SPECS / "magic" / "magic_wmdp_forget_10k.yaml")
    assert magic.data.select.count == 10000 and magic.training.max_steps == 1250 and magic.training.batch_size == 8
    assert magic.training.optimizer.name == "sgd" and magic.training.lrs == (1e-4,)


# --------------------------------------------------------------------------- error messages
def _run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unlearnspec", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_top_level_key_exits_2(tmp_path):
    path = _write(tmp_path, EXP7.read_text() + "\nlearning_rate: 1.0e-5\n")
    out = _run_cli("validate", str(path))
    assert out.returncode == 2
    assert "learning_rate" in out.stderr and "unknown key" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_misspelled_field_names_closest_key_and_line(tmp_path):
    text = EXP7.read_text().replace("  batch_size: 8\n  max_steps", "  batch_sise: 8\n  max_steps")
    path = _write(tmp_path, text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "batch_sise" in l)
    out = _run_cli("validate", str(path))
    assert out.returncode == 2
    assert "training.batch_sise" in out.stderr and "Did you mean `batch_size`" in out.stderr
    assert f"spec.yaml:{line}" in out.stderr
    assert "required field is missing" not in out.stderr  # explained by the misspelling
    assert "Traceback" not in out.stderr


def test_yaml_syntax_error_names_line(tmp_path):
    text = EXP7.read_text().replace("  batch_size: 8\n", "  batch_size: [8\n")
    path = _write(tmp_path, text)
    out = _run_cli("validate", str(path))
    assert out.returncode == 2
    assert "YAML syntax error" in out.stderr and "spec.yaml:" in out.stderr
    assert "Traceback" not in out.stderr


def test_validate_folder_counts_and_missing_path(tmp_path):
    out = _run_cli("validate", "specs/")
    assert out.returncode == 0, out.stderr
    out = _run_cli("validate", str(tmp_path / "nope"))
    assert out.returncode == 2 and "no such file" in out.stderr


def test_show_applies_overrides_before_validation():
    out = _run_cli("show", str(EXP7), "--set", "training.lr=3e-4", "--set", "eval.tasks.1.num_fewshot=5")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["training"]["lr"] == 3e-4 and shown["eval"]["tasks"][1]["num_fewshot"] == 5
    bad = _run_cli("show", str(EXP7), "--set", "training.optimizer.nam=sgd")
    assert bad.returncode == 2 and "Did you mean `name`" in bad.stderr and "(with --set)" in bad.stderr
    malformed = _run_cli("show", str(EXP7), "--set", "training.lr")
    assert malformed.returncode == 2 and "section.field=value" in malformed.stderr


def test_schema_command_prints_json_schema():
    out = _run_cli("schema")
    assert out.returncode == 0
    assert json.loads(out.stdout)["title"] == "unlearnspec spec"


# --------------------------------------------------------------------------- cross-field rules
def _invalid(data: dict) -> str:
    with pytest.raises(UserError) as info:
        validate_data(data, None, "x.yaml")
    return _messages(info.value)


def _exp(name: str = "exp5_selective") -> dict:
    return _data(SPECS / f"{name}.yaml")


def test_rule_undeclared_score_source():
    data = _exp()
    data["tokens"]["where"] = "wmdp > 0 and mlu <= 0"
    msg = _invalid(data)
    assert "tokens:" in msg and "'mlu'" in msg and "not declared under `scores`" in msg and "mmlu" in msg


def test_rule_magic_accepts_adam_and_clipping_but_not_momentum():
    data = _data(SPECS / "magic" / "magic_wmdp.yaml")
    data["training"].update(
        optimizer={"name": "adamw", "betas": [0.9, 0.95]}, schedule="cosine", warmup_ratio=0.1, max_grad_norm=1.0
    )
    spec = validate_data(data, None, "x.yaml")
    assert spec.training.optimizer.name == "adamw" and spec.training.optimizer.betas == (0.9, 0.95)
    data["training"]["optimizer"] = {"name": "sgd", "momentum": 0.9}
    msg = _invalid(data)
    assert "training.optimizer.momentum" in msg and "momentum: 0" in msg


def test_rule_magic_accepts_lora_without_adapter_dropout():
    """LoRA score runs replay the adapters exactly (tests/test_magic_lora.py); adapter dropout is random."""
    data = _data(SPECS / "magic" / "magic_wmdp.yaml")
    data["lora"] = {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["query_key_value", "dense"]}
    data["magic"]["query"]["per"] = "question"
    spec = validate_data(data, None, "x.yaml")
    assert spec.lora is not None and spec.magic is not None and spec.magic.query.per == "question"
    data["lora"]["dropout"] = 0.05
    msg = _invalid(data)
    assert "lora.dropout" in msg and "dropout: 0" in msg


def test_rule_magic_refuses_bf16_parameters():
    data = _data(SPECS / "magic" / "magic_wmdp.yaml")
    data["model"]["dtype"] = "bfloat16"
    msg = _invalid(data)
    assert "model.dtype" in msg and "round away" in msg


def test_rule_empty_lr_sweep():
    data = _exp()
    data["training"]["lr"] = []
    assert "the LR sweep is empty" in _invalid(data)


def test_rule_warmup_fields_exclusive():
    data = _exp()
    data["training"]["warmup_steps"] = 10
    msg = _invalid(data)
    assert "training.warmup_steps" in msg and "mutually exclusive" in msg


def test_rule_max_seq_len_larger_than_score_columns(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # a spec outside any project resolves paths against the cwd
    data = _exp()
    data["scores"]["wmdp"] = {"path": "scores.pt", "alignment": "target", "columns": 512}
    msg = _invalid(data)
    assert "data.max_seq_len" in msg and "larger than the 512 columns" in msg
    # the same rule across files: a producer with fewer columns than the experiment's max_seq_len
    exp = _exp()
    exp["data"]["max_seq_len"] = 2048
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(exp))
    with pytest.raises(UserError) as info:
        load_spec(spec_path)
    assert "larger than the 1024 score columns" in _messages(info.value)


def test_rule_prefix_of_score_columns_must_be_explicit(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # a spec outside any project resolves paths against the cwd
    exp = _data(SPECS / "exp3_positive_only.yaml")
    del exp["scores"]["wmdp"]["truncate_columns"]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(exp))
    with pytest.raises(UserError) as info:
        load_spec(spec_path)
    assert "truncate_columns: true" in _messages(info.value)


def test_rule_num_fewshot_missing():
    data = _exp()
    del data["eval"]["tasks"][0]["num_fewshot"]
    msg = _invalid(data)
    assert "eval.tasks[0].num_fewshot" in msg and "pin it" in msg


def test_rule_expression_is_parsed_safely():
    data = _exp()
    data["tokens"]["where"] = "__import__('os').system('true')"
    msg = _invalid(data)
    assert "tokens.where" in msg and "cannot parse the selection" in msg


def test_missing_producer_names_the_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # a spec outside any project resolves paths against the cwd
    exp = _exp()
    exp["scores"]["wmdp"]["produced_by"] = "specs/magic/nope.yaml"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(exp))
    with pytest.raises(UserError) as info:
        load_spec(spec_path)
    assert "specs/magic/nope.yaml does not exist" in _messages(info.value)


def test_overrides_are_applied_before_validation():
    data = _exp()
    apply_overrides(data, ["training.lr=[]"])
    assert "the LR sweep is empty" in _invalid(data)


# --------------------------------------------------------------------------- import hygiene
def test_spec_modules_import_no_heavy_packages():
    code = (
        "import sys, unlearnspec.spec, unlearnspec.spec.load, unlearnspec.cli, unlearnspec.run.results, unlearnspec.run.plan;"
        "heavy = {'torch', 'transformers', 'trl', 'peft', 'lm_eval', 'datasets'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- property test
_BASE = _data(EXP7)
_PATHS: list[tuple] = []


def _collect(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            _PATHS.append(prefix + (k,))
            _collect(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _PATHS.append(prefix + (i,))
            _collect(v, prefix + (i,))


_collect(_BASE)
_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def _mutated(draw):
    data = copy.deepcopy(_BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_PATHS))
        parent = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "drop", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(_junk)
            elif action == "drop" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=10))] = draw(_junk)
        except (KeyError, IndexError, TypeError):
            continue
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_random_mutations_raise_only_clean_errors(data):
    try:
        validate_data(data, None, "mutant.yaml")
    except UserError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        for p in exc.problems:
            p.render()

"""Issue 11, spec side: hostile YAML and rule text are bounded, empty documents and silent coercions
are refused, and validation refuses every value the run cannot take. Each test covers a defect class
with several inputs of the class, not one input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.errors import UserError
from unlearnspec.spec.load import load_spec, validate_files
from unlearnspec.spec.rules import MAX_RULE_DEPTH, MAX_RULE_TERMS, RuleSyntaxError, parse_rule, sources
from unlearnspec.spec.yamlio import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, parse_yaml

REPO = Path(__file__).resolve().parents[1]
EXP7 = REPO / "specs" / "exp7_all_tokens.yaml"


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit), (
        result.output
    )
    return result


def _exp7(**changes) -> dict:
    data = yaml.safe_load(EXP7.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return data


def _refused(text: str, match: str) -> UserError:
    with pytest.raises(UserError, match=match) as err:
        parse_yaml(text, "x.yaml")
    return err.value


# --------------------------------------------------------------------------- YAML bounds
@pytest.mark.parametrize(
    "text",
    [
        "[" * 20_000 + "]" * 20_000,  # the input: was a RecursionError
        "{a: " * 5_000 + "1" + "}" * 5_000,
        "".join("  " * i + "- \n" for i in range(MAX_YAML_DEPTH + 5)),  # block style
        "a: " + "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1),
    ],
)
def test_deep_yaml_is_refused_with_a_problem(text):
    err = _refused(text, "nested more than")
    assert err.problems[0].file == "x.yaml"


def test_depth_within_the_bound_still_parses():
    depth = MAX_YAML_DEPTH - 1
    data, _ = parse_yaml("[" * depth + "]" * depth, "x.yaml")
    for _ in range(depth - 1):
        data = data[0]
    assert data == []


def test_alias_expansion_is_bounded():
    # "billion laughs": 10 aliases per level, 9 levels = 10**9 values once expanded.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    _refused("\n".join(lines), f"more than {MAX_YAML_NODES:,} values")
    # Alias chains that nest deeper than the bound once expanded.
    chain = ["l0: &l0 [1]"] + [f"l{i}: &l{i} [*l{i - 1}]" for i in range(1, MAX_YAML_DEPTH + 2)]
    _refused("\n".join(chain), "aliases are expanded")
    _refused("a: &a [*a]", "recursive alias")
    _refused("a: &a {b: *a}", "recursive alias")
    # A modest alias is fine.
    data, _ = parse_yaml("base: &b {lr: 1.0e-5}\nother: *b\n", "x.yaml")
    assert data["other"] == {"lr": 1e-5}


def test_huge_documents_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(UserError, match="larger than"):
        load_spec(big)
    _refused("a: " + "x" * (MAX_YAML_BYTES + 1), "larger than")


@pytest.mark.parametrize(
    "text, line, key",
    [
        ("a: 1\nb: 2\na: 3\n", 3, "a"),
        ("training:\n  lr: 1.0e-5\n  batch_size: 8\n  lr: 1.0e-3\n", 4, "lr"),
        ("x: {p: 1, p: 2}\n", 1, "p"),
        ("1: a\n1: b\n", 2, "1"),
    ],
)
def test_duplicate_keys_are_refused_with_the_second_line(text, line, key):
    err = _refused(text, "duplicate key")
    assert err.problems[0].line == line and f"`{key}`" in err.problems[0].message


def test_merge_keys_may_be_overridden():
    data, _ = parse_yaml("base: &b {lr: 1, bs: 8}\nrun:\n  <<: *b\n  lr: 2\n", "x.yaml")
    assert data["run"] == {"lr": 2, "bs": 8}


@pytest.mark.parametrize(
    "text",
    ["a: 2024-13-01", "a: !!python/object:os.system {}", "a: !!int 'x'", "- a\n---\n- b\n", "a: [1, 2", "? [a]\n: 1\n"],
)
def test_unbuildable_or_unsafe_yaml_is_a_user_error(text):
    with pytest.raises(UserError):
        parse_yaml(text, "x.yaml")


def test_one_bad_file_does_not_stop_validate_of_the_others(tmp_path):
    (tmp_path / "deep.yaml").write_text("[" * 20_000 + "]" * 20_000)
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(_exp7(control=None)))
    count, problems = validate_files(sorted(tmp_path.glob("*.yaml")))
    assert count == 4
    assert {Path(p.file).name for p in problems} == {"deep.yaml", "empty.yaml", "binary.yaml"}
    result = _cli("validate", str(tmp_path))
    assert result.exit_code == 2 and "3 of 4 file(s) invalid" in result.output


# --------------------------------------------------------------------------- empty / non-mapping documents
@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "hello\n", "42\n", "null\n"])
def test_non_mapping_documents_are_clean_errors_in_every_command(tmp_path, text):
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    for args in (
        ["show", str(spec)],
        ["show", str(spec), "--toy"],
        ["show", str(spec), "--set", "a.b=1"],
        ["validate", str(spec)],
        ["doctor", str(spec), "--format", "json"],
        ["doctor", str(spec), "--toy", "--format", "json"],
        ["run", str(spec), "--toy", "--no-report", "--out", str(tmp_path / "out")],
    ):
        result = _cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "a spec is a YAML mapping" in result.output, (args, result.output)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- where: rules
@pytest.mark.parametrize(
    "text, match",
    [
        ("(" * 300 + "a > 0" + ")" * 300, "nested more than"),
        ("not " * 1000 + "a > 0", "characters long|nested more than"),
        ("not " * (MAX_RULE_DEPTH + 1) + "a > 0", "nested more than"),
        (" or ".join(["a > 0"] * 1000), "characters long|comparisons"),
        (" or ".join(["a>0"] * (MAX_RULE_TERMS + 1)), "comparisons"),
        ("a > 0 and " * 400 + "a > 0", "characters long|comparisons"),
    ],
)
def test_rule_size_and_depth_are_bounded(text, match):
    with pytest.raises(RuleSyntaxError, match=match):
        parse_rule(text)


def test_rules_at_the_bounds_parse_and_evaluate():
    import numpy as np

    from unlearnspec.spec.rules import evaluate, render

    wide = parse_rule(" or ".join(f"s{i} > 0" for i in range(MAX_RULE_TERMS)))
    assert len(sources(wide)) == MAX_RULE_TERMS
    deep = parse_rule(
        "not " * (MAX_RULE_DEPTH // 2) + "(" * (MAX_RULE_DEPTH // 2) + "a > 0" + ")" * (MAX_RULE_DEPTH // 2)
    )
    assert render(deep).count("not") == MAX_RULE_DEPTH // 2
    assert evaluate(deep, {"a": np.array([1.0, -1.0])}).tolist() == [True, False]


def test_a_hostile_rule_in_a_spec_is_a_validation_problem(tmp_path):
    data = _exp7(control=None)
    data["scores"] = {"a": {"path": "a.pt", "alignment": "target"}}
    data["tokens"] = {"mode": "where", "where": " or ".join(["a > 0"] * 1000)}
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(data))
    result = _cli("validate", str(spec))
    assert result.exit_code == 2 and "tokens.where" in result.output


# --------------------------------------------------------------------------- strict, finite, in range
@pytest.mark.parametrize(
    "change, loc",
    [
        ({"training__batch_size": True}, "training.batch_size"),
        ({"training__grad_accum": False}, "training.grad_accum"),
        ({"training__max_steps": 2.5}, "training.max_steps"),
        ({"training__max_steps": "10"}, "training.max_steps"),
        ({"training__lr": True}, "training.lr"),
        ({"training__lr": "fast"}, "training.lr"),
        ({"training__lr": "1.0e-3"}, "training.lr"),
        ({"training__lr": float("inf")}, "training.lr"),
        ({"training__lr": float("nan")}, "training.lr"),
        ({"training__lr": [1e-5, float("inf")]}, "training.lr[1]"),
        ({"training__seed": -1}, "training.seed"),
        ({"training__seed": 2**32}, "training.seed"),
        ({"training__seed": 2**64}, "training.seed"),
        ({"training__seed": True}, "training.seed"),
        ({"training__dropout": float("nan")}, "training.dropout"),
        ({"training__epochs": float("inf"), "training__max_steps": None}, "training.epochs"),
        ({"training__max_grad_norm": float("inf")}, "training.max_grad_norm"),
        ({"training__optimizer": {"name": "adamw", "eps": float("inf")}}, "training.optimizer.eps"),
        ({"training__optimizer": {"name": "adamw", "weight_decay": float("nan")}}, "training.optimizer.weight_decay"),
        ({"training__optimizer": {"name": "adamw", "betas": [1.5, 0.9]}}, "training.optimizer.betas[0]"),
        ({"training__optimizer": {"name": "adamw", "betas": [0.9, True]}}, "training.optimizer.betas[1]"),
        ({"data__max_seq_len": 10**12}, "data.max_seq_len"),
        ({"data__max_seq_len": True}, "data.max_seq_len"),
        ({"data__select": {"count": True}}, "data.select.count"),
        ({"data__select": {"count": 10, "order": "shuffle", "shuffle_seed": -5}}, "data.select.shuffle_seed"),
        ({"data__select": {"count": 10, "offset_fraction": float("nan")}}, "data.select.offset_fraction"),
        ({"data__append_eos": 1}, "data.append_eos"),
        ({"eval__batch_size": True}, "eval.batch_size"),
        ({"name": 7}, "name"),
        (
            {"baseline": {"recorded": {"metrics": {"mmlu": float("nan")}, "source": "x"}}},
            "baseline.recorded.metrics.mmlu",
        ),
        ({"baseline": {"recorded": {"metrics": {"mmlu": 45.1}, "source": "x"}}}, "baseline.recorded.metrics.mmlu"),
    ],
)
def test_values_the_run_cannot_take_are_refused(tmp_path, change, loc):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_exp7(control=None, **change)))
    with pytest.raises(UserError) as err:
        load_spec(spec)
    assert loc in [p.loc for p in err.value.problems], str(err.value)


@pytest.mark.parametrize(
    "lr, expected",
    [("1e-5", 1e-5), ("1.0e-5", 1e-5), ("1", 1.0), ("[1e-5, 2]", (1e-5, 2.0)), ("0.5", 0.5)],
)
def test_yaml_floats_and_ints_still_work_for_float_fields(lr, expected):
    spec = load_spec(EXP7, overrides=[f"training.lr={lr}", "control="], check_refs=False)
    assert spec.training.lrs == (expected if isinstance(expected, tuple) else (expected,))
    assert all(type(x) is float for x in spec.training.lrs)


def test_betas_from_yaml_lists_and_the_upper_seed_bound():
    spec = load_spec(
        EXP7, overrides=["training.optimizer.betas=[0.8, 0.95]", "training.seed=4294967295"], check_refs=False
    )
    assert spec.training.optimizer.betas == (0.8, 0.95)
    assert spec.training.seed == 2**32 - 1


def test_profile_does_not_turn_a_bool_into_a_count(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_exp7(control=None, training__max_steps=True, data__max_seq_len=True)))
    result = _cli("show", str(spec), "--toy")
    assert result.exit_code == 2
    assert "training.max_steps" in result.output and "data.max_seq_len" in result.output


def test_profiles_and_world_files_are_strict_too(tmp_path):
    from unlearnspec.spec.profile import load_profile

    base = yaml.safe_load((REPO / "specs" / "profiles" / "toy.yaml").read_text())
    base.pop("world")
    for change, loc in (
        ({"threads": True}, "threads"),
        ({"data": {**base["data"], "count_scale": float("inf")}}, "data.count_scale"),
    ):
        folder = tmp_path / "profiles"
        folder.mkdir(exist_ok=True)
        path = folder / "p.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(UserError) as err:
            load_profile(path)
        assert loc in str(err.value)
    world = tmp_path / "bad_world.yaml"
    world.write_text("seed: -1\npretrain: {lr: .inf, batch_size: true}\n")
    from unlearnspec.toy.config import load_world_config

    with pytest.raises(UserError) as err:
        load_world_config(world)
    text = str(err.value)
    assert "seed" in text and "pretrain.lr" in text and "pretrain.batch_size" in text


@pytest.mark.parametrize("key", ["a.²", "training.lr.٣", "x.0.y", "training.lr.5", "=", ".", "a..b"])
def test_override_paths_never_crash(key):
    with pytest.raises(UserError):
        load_spec(EXP7, overrides=[f"{key}=1"], check_refs=False)


def test_folder_scans_are_bounded_and_skip_hidden_folders(tmp_path, monkeypatch):
    from unlearnspec.spec import load

    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "x.yaml").write_text("a: 1\n")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "s.yaml").write_text("a: 1\n")
    files, problems = load.find_spec_files([tmp_path])
    assert files == [tmp_path / "specs" / "s.yaml"] and not problems
    for i in range(5):
        (tmp_path / f"d{i}").mkdir()
    monkeypatch.setattr(load, "MAX_SCAN_FOLDERS", 4)
    files, problems = load.find_spec_files([tmp_path, tmp_path / "specs"])
    assert files == [tmp_path / "specs" / "s.yaml"] and "holds more than 4 folders" in problems[0].message
    monkeypatch.setattr(load, "MAX_SCAN_FOLDERS", 100)
    monkeypatch.setattr(load, "MAX_SCAN_FILES", 0)
    assert "YAML files" in load.find_spec_files([tmp_path])[1][0].message

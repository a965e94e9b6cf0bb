"""Issue 11, file side: damaged or hostile files (score files, results/report/reference JSON,
samples.json, data files, the cached toy world) and filesystem mistakes are clean UserErrors (exit 2,
naming the path), NaN never passes as a result, doctor opens score files with the run's own checks,
and outputs follow the umask."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.errors import UserError
from unlearnspec.safeio import follow_umask, write_json_atomic
from unlearnspec.scores import load_score_file

from .fixtures.reportkit import answers, flip, token_stats, write_run

REPO = Path(__file__).resolve().parents[1]
EXP5 = REPO / "specs" / "exp5_selective.yaml"


def _cli(*args: str, env: dict | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    return result


# --------------------------------------------------------------------------- score files
def _damaged_score_files(folder: Path) -> list[Path]:
    """One file per way a score file can be damaged or foreign (the classes seen in the issue and
    in a byte-flip search: KeyError, IndexError, UnicodeDecodeError, struct.error, ValueError...)."""
    good = io.BytesIO()
    torch.save(torch.randn(4, 8), good)
    pt = good.getvalue()
    from safetensors.torch import save as st_save

    st = st_save({"scores": torch.randn(4, 8)})
    junk_zip = io.BytesIO()
    with zipfile.ZipFile(junk_zip, "w") as z:
        z.writestr("archive/data.pkl", b"junk")
        z.writestr("archive/version", "3")
    cases = {
        "text.pt": b"hello world\nthis is text\n",
        "empty.pt": b"",
        "half.pt": pt[: len(pt) // 2],
        "tail.pt": pt[:-10],
        "json.pt": b'{"a": 1}',
        "junkzip.pt": junk_zip.getvalue(),
        "int.pt": pickle.dumps(5),
        "list.pt": pickle.dumps([1.0, 2.0]),
        "code.pt": pickle.dumps(os.system),  # would run code if unpickled
        "text.safetensors": b"hello world",
        "empty.safetensors": b"",
        "header.safetensors": (1000).to_bytes(8, "little") + b'{"a":1}',
        "huge.safetensors": (2**62).to_bytes(8, "little"),
        "tail.safetensors": st[:-20],
    }
    rng = random.Random(0)
    for i in range(40):  # random byte damage: any outcome must be a tensor or a UserError
        data = bytearray(pt)
        for _ in range(5):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cases[f"flip{i}.pt"] = bytes(data)
    paths = []
    for name, data in cases.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    (folder / "folder.pt").mkdir()
    return paths + [folder / "folder.pt", folder / "missing.pt"]


def test_damaged_score_files_are_user_errors_never_tracebacks(tmp_path):
    paths = _damaged_score_files(tmp_path)
    refused = loaded = 0
    for path in paths:
        try:
            sf = load_score_file(path)
        except UserError as err:
            assert err.problems[0].file == str(path)
            refused += 1
        else:
            assert isinstance(sf.scores, torch.Tensor)
            loaded += 1
    named = [p for p in paths if not p.name.startswith("flip")]
    assert refused >= len(named), (refused, loaded)  # every deliberately broken file is refused


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _score_spec(tmp_path: Path, path: str, n: int = 8, s: int = 16, alignment: str | None = "target") -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname='t'\n")
    data = yaml.safe_load(EXP5.read_text())
    data.pop("control")
    src = {"path": path, **({"alignment": alignment} if alignment else {})}
    data["scores"] = {"wmdp": dict(src), "mmlu": dict(src)}
    data["data"]["select"] = {"count": n}
    data["data"]["max_seq_len"] = s
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: None, "not found"),
        (lambda d: (d / "s.pt").mkdir(), "is a folder"),
        (lambda d: torch.save({"scores": torch.zeros(8, 16), "x": _Exploit()}, d / "s.pt"), "refused to load"),
        (lambda d: (d / "s.pt").write_text("just text\n"), "not a readable torch file"),
        (lambda d: torch.save(torch.full((8, 16), float("nan")), d / "s.pt"), "NaN/inf"),
        (lambda d: torch.save(torch.zeros(7, 16), d / "s.pt"), "7 rows of scores but 8"),
        (lambda d: torch.save(torch.zeros(8, 12), d / "s.pt"), "wider than the 12 score columns"),
        (lambda d: torch.save(torch.zeros(8, 16, dtype=torch.long), d / "s.pt"), "floating point"),
        (lambda d: torch.save(torch.zeros(8), d / "s.pt"), "expected shape"),
    ],
)
def test_doctor_opens_score_files_with_the_runs_checks(tmp_path, make, expect):
    spec = _score_spec(tmp_path, "s.pt")
    make(tmp_path)
    result = _cli("doctor", spec, "--format", "json")
    assert result.exit_code == 2
    found = [f for f in json.loads(result.output)["findings"] if f["code"] == "D10"]
    assert len(found) == 2 and expect in found[0]["evidence"][0], result.output  # both sources
    assert not any(f["message"].endswith("unknown provenance") for f in json.loads(result.output)["findings"])


def test_doctor_accepts_a_good_score_file_and_unknown_alignment_is_d10(tmp_path):
    spec = _score_spec(tmp_path, "s.pt")
    torch.save(torch.randn(8, 16), tmp_path / "s.pt")
    findings = json.loads(_cli("doctor", spec, "--format", "json").output)["findings"]
    assert not [f for f in findings if f["code"] == "D10"]
    assert any(f["code"] == "D2" and "unknown provenance" in f["message"] for f in findings)
    spec = _score_spec(tmp_path, "s.pt", alignment=None)
    findings = json.loads(_cli("doctor", spec, "--format", "json").output)["findings"]
    assert any(f["code"] == "D10" and "alignment is unknown" in f["evidence"][0] for f in findings)


def test_validate_errors_when_a_score_path_does_not_exist(tmp_path):
    spec = _score_spec(tmp_path, "nope/s.pt")
    result = _cli("validate", spec)
    assert result.exit_code == 2 and "scores.wmdp.path" in result.output and "does not exist" in result.output
    (tmp_path / "nope" / "s.pt").mkdir(parents=True)
    result = _cli("validate", spec)
    assert result.exit_code == 2 and "is a folder" in result.output
    (tmp_path / "nope" / "s.pt").rmdir()
    torch.save(torch.randn(8, 16), tmp_path / "nope" / "s.pt")
    assert _cli("validate", spec).exit_code == 0


# --------------------------------------------------------------------------- results / report / reference JSON
def _base_run(folder: Path) -> Path:
    base = answers(100, 40)
    return write_run(
        folder,
        "exp",
        {"wmdp_bio_robust": base, "mmlu": answers(100, 50)},
        [
            {
                "lr": 1e-5,
                "values": {"wmdp_bio_robust": flip(base, 5), "mmlu": answers(100, 50)},
                "stats": token_stats(0.5),
            }
        ],
    )


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a": ' * 50_000 + "1" + "}" * 50_000,
        "",
        "not json",
        "[]",
        "\xff\xfe",
        '{"format": 1, "spec": {"name": "x", "hash": "h", "path": "p"}, "runs": [{"point": "p", "status": "ok", "run_dir": "p", "hparams": {"lr": NaN}}]}',
        '{"format": 1, "spec": {"name": "x", "hash": "h", "path": "p"}, "baseline": {"metrics": {"t": {"acc": NaN, "n": 10}}}}',
        '{"format": 1, "spec": {"name": "x", "hash": "h", "path": "p"}, "baseline": {"metrics": {"t": {"acc": Infinity, "n": 10}}}}',
        '{"format": 1, "spec": {"name": "x", "hash": "h", "path": "p"}, "baseline": {"metrics": {"t": {"acc": 1.5, "n": 10}}}}',
    ],
)
def test_bad_results_json_is_refused_by_report_and_diff(tmp_path, text):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_bytes(
        text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe"
    )
    other = _base_run(tmp_path / "ok")
    for args in (
        ["report", folder, "--out", tmp_path / "rep", "--no-plot"],
        ["diff", other, folder],
        ["diff", folder / "results.json", other],
    ):
        result = _cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "results.json" in result.output
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        "{",
        '{"spec": 1}',
        '{"columns": {}, "recorded": true, "rows": 5}',
        '{"spec": "x", "title": "t", "status": "s", "recorded": true, "source": "s", "baseline": {"mmlu": "abc"}, "columns": {"lr": "LR", "mmlu": "MMLU"}, "rows": []}',
        '{"spec": "x", "title": "t", "status": "s", "recorded": true, "source": "s", "baseline": {"mmlu": "nan"}, "columns": {"lr": "LR", "mmlu": "MMLU"}, "rows": []}',
    ],
)
def test_bad_report_and_reference_json_are_refused_by_diff(tmp_path, text):
    bad = tmp_path / "r.json"
    bad.write_text(text)
    other = _base_run(tmp_path / "ok")
    for args in (["diff", bad, other], ["diff", other, bad]):
        result = _cli(*args)
        assert result.exit_code == 2 and "r.json" in result.output, result.output


def test_diff_treats_nan_cells_as_beyond_noise(tmp_path):
    run = _base_run(tmp_path / "ok")
    assert _cli("report", run, "--out", tmp_path / "rep", "--no-plot").exit_code == 0
    good = tmp_path / "rep" / "exp.json"
    table = json.loads(good.read_text())
    assert _cli("diff", good, good).exit_code == 0
    for field in ("acc", "stderr"):
        for both in (False, True):
            bad = json.loads(json.dumps(table))
            bad["rows"][1]["cells"]["mmlu"][field] = float("nan")
            path = tmp_path / f"nan_{field}_{both}.json"
            path.write_text(json.dumps(bad))
            result = _cli("diff", path if both else good, path)
            assert result.exit_code == 1, (field, both, result.output)
            assert "BEYOND NOISE" in result.output and "not a finite number" in result.output


def test_report_refuses_nan_accuracy_instead_of_calling_it_collapsed(tmp_path):
    run = _base_run(tmp_path / "ok")
    raw = json.loads(run.read_text())
    raw["runs"][0]["metrics"]["mmlu"]["acc"] = float("nan")
    run.write_text(json.dumps(raw))
    result = _cli("report", run.parent, "--out", tmp_path / "rep", "--no-plot")
    assert result.exit_code == 2 and "finite" in result.output and "collapsed" not in result.output


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.write_text("{not json"), "not valid JSON"),
        (lambda p: p.write_text("[1, 0]"), "not a mapping"),
        (lambda p: p.write_text(json.dumps({"mmlu": [1, 0, 1]})), "has 3 answers but n=100"),
        (lambda p: p.write_text(json.dumps({"mmlu": [2] * 100})), "not a list of 0/1"),
        (lambda p: (p.unlink(), p.mkdir()), "is a folder"),
        (lambda p: p.unlink(), "missing"),
    ],
)
def test_unreadable_samples_are_stated_in_the_table(tmp_path, damage, why):
    run = _base_run(tmp_path / "ok")
    damage(run.parent / "lr=1e-05" / "samples.json")
    result = _cli("report", run.parent, "--out", tmp_path / "rep", "--no-plot")
    assert result.exit_code == 0, result.output
    md = (tmp_path / "rep" / "exp.md").read_text()
    line = next(line for line in md.splitlines() if line.startswith("| 1e-5 "))
    assert "unpaired: samples unreadable" in line and why in line and "z unpaired" in line
    base_line = next(line for line in md.splitlines() if line.startswith("| baseline"))
    assert "unreadable" not in base_line


# --------------------------------------------------------------------------- data files and the toy cache
@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "are empty"),
        (b"\n\n", "cannot read the data files"),
        (b"not json\n", "cannot read the data files"),
        (b'{"text": "a"}\n[1]\n', "cannot read the data files"),
    ],
)
def test_bad_data_files_are_user_errors(tmp_path, content, expect):
    from unlearnspec.data import load_texts
    from unlearnspec.spec import DataSpec

    (tmp_path / "d.jsonl").write_bytes(content)
    data = DataSpec.model_validate(
        {"files": {"paths": [str(tmp_path / "d.jsonl")]}, "select": {"count": 2}, "max_seq_len": 8}
    )
    with pytest.raises(UserError, match=expect):
        load_texts(data, tmp_path / "s.yaml")


def test_damaged_toy_world_points_at_toy_build_force(tmp_path, toy_world):
    from unlearnspec.spec import ModelSpec
    from unlearnspec.spec.assets import Assets
    from unlearnspec.toy.build import ToyWorld
    from unlearnspec.train.modeling import load_model

    root = tmp_path / "world"
    shutil.copytree(toy_world.model_dir, root / "model")
    (root / "world.json").write_text('{"baseline": ')
    damaged = ToyWorld(root=root, config=toy_world.config, task_dir=toy_world.task_dir)
    with pytest.raises(UserError, match="toy build --force"):
        damaged.info
    weights = root / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="toy build --force") as err:
        assets = Assets()
        assets.__dict__["world"] = damaged  # the run's assets resolve toy names to this (damaged) world
        load_model(ModelSpec(toy="tiny-neox"), assets)
    assert "UNLEARNSPEC_CACHE" in str(err.value)


# --------------------------------------------------------------------------- filesystem mistakes
def test_output_paths_that_are_files_are_refused_by_name(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    run = _base_run(tmp_path / "ok")
    spec = REPO / "specs" / "exp7_all_tokens.yaml"
    cases = [
        (["run", spec, "--toy", "--out", a_file], "--out"),
        (["run", spec, "--toy", "--out", a_file / "x" / "y"], "--out"),
        (["run", spec, "--toy", "--reports-dir", a_file], "--reports-dir"),
        (["report", run.parent, "--out", a_file, "--no-plot"], "--out"),
        (["report", "--reference-only", "--out", a_file / "q"], "--out"),
        (["toy", "write-tasks", "--out", a_file], "--out"),
        (["report", run.parent, "--out", "/proc/nope/x", "--no-plot"], "/proc/nope"),
        (["toy", "write-tasks", "--out", "/proc/nope/x"], "/proc/nope"),
    ]
    for args, name in cases:
        result = _cli(*args)
        assert result.exit_code == 2 and name in result.output, (args, result.output)
    assert a_file.read_text() == "keep me"


def test_cache_env_pointing_at_a_file_is_refused_by_name(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    for cache in (a_file, a_file / "below"):
        result = _cli("toy", "build", env={"UNLEARNSPEC_CACHE": str(cache)})
        assert result.exit_code == 2 and str(a_file) in result.output, result.output
    assert a_file.read_text() == "keep me"


# --------------------------------------------------------------------------- modes
@pytest.mark.parametrize(
    "mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)]
)
def test_outputs_follow_the_umask(tmp_path, mask, file_mode, dir_mode):
    import tempfile

    from safetensors.torch import save_file

    old = os.umask(mask)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        assert (tmp_path / "r.json").stat().st_mode & 0o777 == file_mode
        tree = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700, as the toy build and run folders start
        save_file({"w": torch.zeros(2)}, str(tree / "m.safetensors"))  # safetensors writes 0600
        (tree / "sub").mkdir()
        follow_umask(tree)
        assert tree.stat().st_mode & 0o777 == dir_mode and (tree / "sub").stat().st_mode & 0o777 == dir_mode
        assert (tree / "m.safetensors").stat().st_mode & 0o777 == file_mode
    finally:
        os.umask(old)

"""Issue 22, classes 3-8, 12, 13: writes never leave the folder the tool owns or follow a link, never replace a
file the tool did not create, survive a full disk with the previous file intact, never emit NaN/Infinity;
reads are bounded (no FIFO, no device, no expanded tensor); read-back names and task names are names."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.errors import UserError
from unlearnspec.safeio import read_json, write_json, write_text

from .fixtures.reportkit import answers, flip, token_stats, write_run

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, **kwargs):
    result = CliRunner().invoke(app, [str(a) for a in args], **kwargs)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def run_dir(tmp_path) -> Path:
    base = answers(40, 20)
    folder = tmp_path / "runs" / "exp_a"
    write_run(
        folder,
        "exp_a",
        {"wmdp_bio_robust": base, "mmlu": answers(40, 30)},
        [
            {
                "lr": 1e-5,
                "values": {"wmdp_bio_robust": flip(base, 3), "mmlu": answers(40, 30)},
                "stats": token_stats(0.3),
            }
        ],
    )
    return folder


def _edit_results(folder: Path, edit) -> None:
    data = json.loads((folder / "results.json").read_text())
    edit(data)
    (folder / "results.json").write_text(json.dumps(data))


# --------------------------------------------------------------------------- class 3: links
@pytest.mark.parametrize("linked", ["exp_a.md", "exp_a.json", "exp_a.png"])
def test_report_never_writes_through_a_link(tmp_path, run_dir, linked):
    canary = tmp_path / "canary.txt"
    canary.write_text("mine\n")
    out = tmp_path / "rep"
    out.mkdir()
    os.symlink(canary, out / linked)
    result = _cli("report", run_dir, "--out", out)
    assert canary.read_text() == "mine\n", "a report was written through a link"
    assert result.exit_code == 2 and "symbolic link" in result.output and linked in result.output
    assert (out / linked).is_symlink()


def test_study_index_and_recorded_tables_never_write_through_a_link(tmp_path, run_dir):
    canary = tmp_path / "canary.txt"
    canary.write_text("mine\n")
    other = tmp_path / "runs" / "exp_b"
    write_run(
        other,
        "exp_b",
        {"wmdp_bio_robust": 0.5, "mmlu": 0.6},
        [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.4, "mmlu": 0.6}}],
    )
    out = tmp_path / "rep"
    out.mkdir()
    os.symlink(canary, out / "study.md")
    assert _cli("report", run_dir, other, "--out", out, "--no-plot").exit_code == 2
    os.symlink(canary, out / "recorded.md")
    assert _cli("report", "--reference-only", "--out", out, "--no-plot").exit_code == 2
    assert canary.read_text() == "mine\n"


def test_a_linked_folder_below_the_owned_one_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "sub")
    with pytest.raises(UserError, match="symbolic link or not a folder"):
        write_text(root / "sub" / "x.md", "x", root=root)
    assert list(outside.iterdir()) == []


# --------------------------------------------------------------------------- class 4: names read back
@pytest.mark.parametrize("name", ["../../../../owned", "/ABS/owned", "a/b", "..", "x\ny"])
def test_a_spec_name_read_back_cannot_leave_the_reports_folder(tmp_path, run_dir, name):
    target = tmp_path / "owned.md"
    target.write_text("mine\n")
    name = name.replace("/ABS", str(tmp_path))
    _edit_results(run_dir, lambda d: d["spec"].__setitem__("name", name))
    out = tmp_path / "x" / "y" / "rep"
    result = _cli("report", run_dir, "--out", out, "--no-plot")
    assert result.exit_code == 2 and ("spec.name" in result.output or "spec name" in result.output)
    assert target.read_text() == "mine\n" and not (tmp_path / "owned.md.tmp").exists()
    assert not out.exists() or not any(out.rglob("*.md"))


@pytest.mark.parametrize(
    "field,value", [("samples_file", "/etc/passwd"), ("samples_file", "../../x.json"), ("run_dir", "/tmp")]
)
def test_paths_read_back_stay_inside_the_run_folder(run_dir, field, value):
    _edit_results(run_dir, lambda d: d["runs"][0].__setitem__(field, value))
    result = _cli("report", run_dir, "--no-plot", "--out", run_dir / "rep")
    assert result.exit_code == 2 and "inside the run folder" in result.output


# --------------------------------------------------------------------------- class 5: toy truth --out
def test_toy_truth_refuses_a_folder_holding_others_files(tmp_path):
    out = tmp_path / "u"
    out.mkdir()
    (out / "scores.json").write_text("mine\n")
    result = _cli("toy", "truth", REPO / "specs" / "fixed" / "magic_wmdp.yaml", "--out", out)
    assert result.exit_code == 2 and "did not write" in result.output
    assert (out / "scores.json").read_text() == "mine\n" and sorted(p.name for p in out.iterdir()) == ["scores.json"]


def test_toy_truth_may_replace_its_own_output(tmp_path):
    from unlearnspec.toy.truth import SOURCE_NAME, claim_truth_folder

    out = tmp_path / "t"
    claim_truth_folder(out)  # new
    out.mkdir()
    claim_truth_folder(out)  # empty
    write_json(out / "scores.json", {"produced_by": SOURCE_NAME})
    (out / "per_token_scores.pt").write_bytes(b"x")
    claim_truth_folder(out)  # its own
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt"):
        claim_truth_folder(out)


# --------------------------------------------------------------------------- class 6: a full disk
def _full_disk(monkeypatch, after: int = 0) -> None:
    real = os.write
    budget = [after]

    def write(fd, data):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        budget[0] -= 1
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_keeps_the_previous_file_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"v": 1})
    before = path.read_bytes()
    _full_disk(monkeypatch)
    with pytest.raises(UserError) as err:
        write_json(path, {"v": 2, "pad": "x" * 100000})
    assert str(path) in str(err.value) and "no space left" in str(err.value) and "unchanged" in str(err.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_full_disk_under_torch_save_is_named_too(tmp_path, monkeypatch):
    from unlearnspec.safeio import write_with

    _full_disk(monkeypatch, after=1)
    with pytest.raises(UserError, match="no space left"):
        write_with(tmp_path / "t.pt", lambda fh: torch.save(torch.randn(1000), fh))
    assert list(tmp_path.iterdir()) == []


def test_report_on_a_full_disk_exits_2_without_a_traceback(tmp_path, run_dir, monkeypatch):
    out = tmp_path / "rep"
    assert _cli("report", run_dir, "--out", out, "--no-plot").exit_code == 0
    before = (out / "exp_a.md").read_bytes()
    _full_disk(monkeypatch)
    result = _cli("report", run_dir, "--out", out, "--no-plot")
    assert result.exit_code == 2 and "no space left" in result.output and "exp_a.md" in result.output
    assert (out / "exp_a.md").read_bytes() == before


def test_disk_errors_a_library_wraps_are_named():
    from unlearnspec.cli.support import filesystem_problem

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")  # noqa: B904 - torch raises it during handling: the ENOSPC is its __context__
    except RuntimeError as exc:
        problem = filesystem_problem(exc)
    assert problem is not None and "no space left" in problem.message
    assert filesystem_problem(RuntimeError("SafetensorError: IoError(Os { code: 28, kind: StorageFull })")) is not None
    assert filesystem_problem(RuntimeError("a bug")) is None


# --------------------------------------------------------------------------- class 7: nothing selected, no NaN in JSON
def test_a_where_rule_selecting_nothing_is_refused():
    from unlearnspec.scores import token_weights
    from unlearnspec.spec import TokenRuleSpec

    labels = torch.tensor([[-100, 5, 6, 7], [-100, 8, -100, -100]])
    scores = {"r": torch.rand(2, 4)}
    with pytest.raises(UserError) as err:
        token_weights(TokenRuleSpec(mode="where", where="r < -2"), scores, labels)
    assert "selects none of the 4 valid target tokens" in str(err.value) and "Widen" in str(err.value)
    with pytest.raises(UserError, match="sign"):
        token_weights(TokenRuleSpec(mode="sign", source="r"), {"r": torch.zeros(2, 4)}, labels)
    assert token_weights(TokenRuleSpec(mode="where", where="r > -2"), scores, labels).sum() == 4


def test_json_is_never_written_with_nan_or_infinity(tmp_path):
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(UserError, match="runs.0.factor"):
            write_json(tmp_path / "p.json", {"runs": [{"factor": bad}]})
    assert not (tmp_path / "p.json").exists()


# --------------------------------------------------------------------------- class 8: bounded reads
def test_an_expanded_tensor_is_refused_before_it_is_materialised(tmp_path):
    from unlearnspec.scores import load_score_file

    path = tmp_path / "per_question_scores.pt"
    torch.save(torch.zeros(1).expand(2_000_000, 16, 32), path)
    assert path.stat().st_size < 4096
    with pytest.raises(UserError, match="expanded or overlapping view"):
        load_score_file(path, shape="[Q, N, S]")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_devices_and_fifos_are_not_read(tmp_path, kind):
    path = tmp_path / "x.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    with pytest.raises(UserError, match="not a regular file"):
        read_json(path, "samples file", "missing", "")


def test_report_does_not_hang_on_a_fifo_or_read_dev_zero(tmp_path, run_dir):
    os.mkfifo(tmp_path / "fifo")
    for target in ("/dev/zero", str(tmp_path / "fifo")):
        os.unlink(run_dir / "baseline" / "samples.json")
        os.symlink(target, run_dir / "baseline" / "samples.json")
        proc = subprocess.run(
            [sys.executable, "-m", "unlearnspec", "report", str(run_dir), "--no-plot", "--out", str(tmp_path / "r")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "not a regular file" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- class 12 and 13
@pytest.mark.parametrize("task", ["../facts", "../tasks/toy_mmlu", "/etc/passwd", "toy_wmdp/../toy_mmlu"])
def test_toy_tasks_are_names_not_paths(tmp_path, task):
    from unlearnspec.spec.assets import Assets
    from unlearnspec.toy.truth import asked_facts

    task_dir = Path(Assets().world.task_dir)
    with pytest.raises(UserError, match="a task is named, never given as a path"):
        asked_facts(task_dir, task)


def test_validate_names_a_device_as_not_a_file():
    result = _cli("validate", "/dev/null")
    assert result.exit_code == 2 and "not a regular file or folder" in result.output
    assert "no such file" not in result.output

"""Issue 22, classes 2, 10, 11: site and profile text never reaches a job script as a command (every text field
is one line, the job folder too), resource and scale arithmetic cannot overflow, and SLURM's environment and
state files (sbatch without srun, a tampered request.json or submission.json) are clean errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.errors import UserError
from unlearnspec.spec.cluster import SlurmSection, load_cluster

from .conftest import REPO

EXAMPLE = REPO / "specs" / "profiles" / "slurm_example.yaml"
TOY = REPO / "unlearnspec" / "profiles" / "toy.yaml"
SPEC = REPO / "specs" / "exp7_all_tokens.yaml"


def _cli(*args, **kwargs):
    result = CliRunner().invoke(app, [str(a) for a in args], **kwargs)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output, result.output
    return result


def _site(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    edit(data)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


INJECT = "\ntouch {marker} #"
FIELDS = {
    "slurm.partition": lambda d, v: d["slurm"].__setitem__("partition", "gpu" + v),
    "slurm.account": lambda d, v: d["slurm"].__setitem__("account", "lab" + v),
    "slurm.qos": lambda d, v: d["slurm"].__setitem__("qos", "normal" + v),
    "slurm.extra_sbatch[0]": lambda d, v: d["slurm"].__setitem__("extra_sbatch", ["--constraint=a100" + v]),
    "slurm.setup[0]": lambda d, v: d["slurm"].__setitem__("setup", ["module load cuda" + v]),
    "name": lambda d, v: d.__setitem__("name", "site" + v),
}


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\u2028"])
def test_site_text_with_a_control_character_is_refused_naming_the_field(tmp_path, field, char):
    marker = tmp_path / "PWNED"
    site = _site(tmp_path, lambda d: FIELDS[field](d, INJECT.format(marker=marker).replace("\n", char)))
    result = _cli("show", SPEC, "--toy", "--cluster", site)
    assert result.exit_code == 2 and field in result.output and "control character" in result.output, result.output
    assert not marker.exists()


def test_a_profiles_slurm_section_is_held_to_the_same_rule(tmp_path):
    data = yaml.safe_load(TOY.read_text())
    data["slurm"]["partition"] = "cpu\nscancel -u $USER #"
    data["world"] = str(TOY.parent / data["world"])
    profile = tmp_path / "toy_copy.yaml"
    profile.write_text(yaml.safe_dump(data))
    result = _cli("show", SPEC, "--profile", profile)
    assert result.exit_code == 2 and "slurm.partition" in result.output and "control character" in result.output


def test_no_injected_line_reaches_a_job_script(tmp_path):
    """Past validation (a section built in code, a job folder from --out): the script is never written, so
    nothing a line break would start can run. Run what would have been written, with stub srun/python."""
    from unlearnspec.run.sbatch import SbatchJob
    from unlearnspec.run.slurm import sbatch_script

    marker = tmp_path / "PWNED"
    good = load_cluster(EXAMPLE).slurm
    bad = SlurmSection.model_construct(**{**dict(good), "partition": f"gpu\ntouch {marker} #"})
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("srun", "python"):
        (stubs / tool).write_text("#!/bin/sh\nexit 0\n")
        (stubs / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    for settings, folder in ((bad, tmp_path / "job"), (good, tmp_path / f"job\ntouch {marker} #")):
        try:
            text = sbatch_script(folder, settings, SbatchJob("point", "p"), "python -c pass")
        except UserError as exc:
            assert "control character" in str(exc)
            continue
        subprocess.run(["bash", "-c", text], env=env, capture_output=True, timeout=60)
    assert not marker.exists(), "a site field or folder name ran as a command in the job script"
    clean = sbatch_script(tmp_path / "job", good, SbatchJob("point", "p"), "python -c pass")
    assert "#SBATCH --time=120" in clean and "#SBATCH --signal=USR2@90" in clean


def test_extra_sbatch_names_are_option_names(tmp_path):
    site = _site(tmp_path, lambda d: d["slurm"].__setitem__("extra_sbatch", ["--foo'bar=1"]))
    with pytest.raises(UserError, match="letters, digits and `-`"):
        load_cluster(site)


# --------------------------------------------------------------------------- class 10: overflow
@pytest.mark.parametrize(
    "field", ["data.count_scale", "data.max_seq_len_scale", "training.steps_scale", "training.lr_scale.adamw"]
)
def test_profile_scales_beyond_range_are_refused_naming_the_field(tmp_path, field):
    data = yaml.safe_load(TOY.read_text())
    section, *rest = field.split(".")
    target = data[section]
    for key in rest[:-1]:
        target = target[key]
    target[rest[-1]] = 1e308
    data["world"] = str(TOY.parent / data["world"])
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(data))
    result = _cli("show", SPEC, "--profile", profile)
    assert result.exit_code == 2 and field in result.output


def test_a_huge_spec_count_through_a_profile_is_refused_naming_the_field(tmp_path):
    spec = yaml.safe_load(SPEC.read_text())
    spec["data"]["select"]["count"] = 10**400
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = _cli("show", path, "--toy")
    assert result.exit_code == 2 and "data.select.count" in result.output


@pytest.mark.parametrize("key,value", [("mem_gb", 1.7e308), ("time_min", 10**30), ("cpus", 10**30), ("gpus", 10**9)])
def test_site_resources_beyond_range_are_refused_naming_the_field(tmp_path, key, value):
    site = _site(tmp_path, lambda d: d["slurm"]["jobs"]["point"].__setitem__(key, value))
    result = _cli("show", SPEC, "--toy", "--cluster", site)
    assert result.exit_code == 2 and f"slurm.jobs.point.{key}" in result.output


def test_a_count_beyond_range_in_results_json_is_refused(tmp_path):
    from .fixtures.reportkit import write_run

    folder = tmp_path / "run"
    write_run(
        folder,
        "exp_a",
        {"wmdp_bio_robust": 0.5, "mmlu": 0.6},
        [{"lr": 1e-5, "values": {"wmdp_bio_robust": 0.4, "mmlu": 0.6}}],
    )
    text = (folder / "results.json").read_text()
    (folder / "results.json").write_text(text.replace('"n": 868', '"n": 1' + "0" * 400, 1))
    result = _cli("report", folder, "--no-plot", "--out", tmp_path / "rep")
    assert result.exit_code == 2 and ".n" in result.output


# --------------------------------------------------------------------------- class 11: SLURM environment and state
def test_sbatch_without_srun_is_a_clean_error(tmp_path, monkeypatch):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (stubs / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", str(stubs))  # only the stub: a machine with SLURM installed has srun in /usr/bin
    result = _cli("run", SPEC, "--toy", "--executor", "slurm", "--cluster", EXAMPLE, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "srun is not" in result.output


@pytest.mark.parametrize("payload", [{"paths": 5}, {"paths": []}, {"paths": ["a"], "overrides": "x"}, [], "x"])
def test_a_tampered_request_json_is_a_clean_error(tmp_path, payload):
    folder = tmp_path / "run"
    (folder / ".slurm").mkdir(parents=True)
    (folder / ".slurm" / "request.json").write_text(json.dumps(payload))
    result = _cli("status", folder)
    assert result.exit_code == 2 and "request.json" in result.output


def test_slurm_ids_read_back_are_ids():
    from unlearnspec.run.slurmstate import slurm_id_of

    assert slurm_id_of({"slurm_id": 123}) == "123" and slurm_id_of({"slurm_id": "45_6"}) == "45_6"
    for bad in ("1\ntouch x", "-h", "1,2", "", None, "1; rm"):
        assert slurm_id_of({"slurm_id": bad}) == ""

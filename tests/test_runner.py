"""`unlearnspec run` end to end on the toy world: results, resume after SIGKILL, and clean errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

EXP7 = "specs/exp7_all_tokens.yaml"
# Two sweep points and 100 questions per task keep the test short; the full sweep is the README's.
SMALL = ["--set", "training.lr=[1.0e-5, 1.0e-4]", "--set", "eval.tasks.0.limit=100", "--set", "eval.tasks.1.limit=100"]


def _env(toy_world) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["UNLEARNSPEC_CACHE"] = str(toy_world.root.parents[1])
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unlearnspec", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _points(out: Path) -> dict[str, dict]:
    return {
        p.name: json.loads((p / "point.json").read_text())
        for p in out.iterdir()
        if p.is_dir() and p.name.startswith("lr_")
    }


@pytest.mark.slow
def test_exp7_toy_sweep_writes_results(toy_world, tmp_path):
    out = tmp_path / "exp7"
    proc = _run(["run", EXP7, "--toy", "--out", str(out), "--no-report", *SMALL], _env(toy_world))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["spec"]["name"] == "exp7_all_tokens" and results["spec"]["profile"] == "toy"
    assert results["baseline"]["status"] == "ok"
    assert [r["hparams"]["lr"] for r in results["runs"]] == [1e-4, 1e-3]  # the toy profile scales AdamW LRs x10
    for run in [results["baseline"], *results["runs"]]:
        assert set(run["metrics"]) == {"toy_wmdp", "toy_mmlu"}
        for m in run["metrics"].values():
            assert 0.0 <= m["acc"] <= 1.0 and m["acc_stderr"] > 0 and m["n"] == 100
    for run in results["runs"]:
        assert run["status"] == "ok"
        folder = out / run["run_dir"]
        for name in (
            "spec.yaml",
            "point.json",
            "log_history.json",
            "token_stats.json",
            "samples.json",
            "provenance.json",
        ):
            assert (folder / name).is_file(), name
        samples = json.loads((folder / "samples.json").read_text())
        assert len(samples["toy_wmdp"]) == 100
        stats = run["token_stats"]
        assert stats["selected_fraction"] == 1.0 and stats["per_token_lr_factor"] == pytest.approx(1.0)
        log = json.loads((folder / "log_history.json").read_text())
        assert any("loss" in row for row in log)
    prov = json.loads((out / results["runs"][0]["run_dir"] / "provenance.json").read_text())
    assert "git_sha" in prov and "version.torch" in prov
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())


@pytest.mark.slow
def test_sigkill_then_resume_skips_finished_points(toy_world, tmp_path):
    out = tmp_path / "exp7"
    args = [sys.executable, "-m", "unlearnspec", "run", EXP7, "--toy", "--out", str(out), "--no-report", *SMALL]
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=_env(toy_world),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and any(p.name.startswith(".tmp-lr_0.001") for p in out.iterdir()):
                break  # the first point is finished and the second is being written
            time.sleep(0.5)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = _points(out)
    assert list(before) == ["lr_0.0001"]  # only the completed point is visible; the half-written one is hidden
    mtime = (out / "lr_0.0001" / "point.json").stat().st_mtime_ns

    again = _run(["run", EXP7, "--toy", "--out", str(out), "--no-report", *SMALL], _env(toy_world))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "point:exp7_all_tokens/lr_0.0001 already done; skipped" in again.stdout
    assert (out / "lr_0.0001" / "point.json").stat().st_mtime_ns == mtime
    assert sorted(_points(out)) == ["lr_0.0001", "lr_0.001"]
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 2


@pytest.mark.slow
def test_resume_refuses_a_different_spec(toy_world, tmp_path):
    out = tmp_path / "exp7"
    (out / "lr_0.0001").mkdir(parents=True)
    (out / ".unlearnspec.json").write_text(
        json.dumps({"by": "unlearnspec", "kind": "root", "spec_hash": "something-else"})
    )
    proc = _run(["run", EXP7, "--toy", "--out", str(out), "--no-report", *SMALL], _env(toy_world))
    assert proc.returncode == 2 and "different spec" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_unavailable_model_suggests_toy(toy_world, tmp_path):
    proc = _run(
        ["run", EXP7, "--out", str(tmp_path / "o"), "--no-report"], _env(toy_world) | {"HF_HOME": str(tmp_path / "hf")}
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "EleutherAI/deep-ignorance-unfiltered" in proc.stderr and "--toy" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_unavailable_dataset_suggests_toy(toy_world, tmp_path):
    args = [
        "run",
        EXP7,
        "--out",
        str(tmp_path / "o"),
        "--no-report",
        "--set",
        "model.name_or_path=null",
        "--set",
        "model.toy=tiny-neox",
        "--set",
        "model.dtype=float32",
        "--set",
        "baseline.evaluate=false",
    ]
    proc = _run(args, _env(toy_world) | {"HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Salesforce/wikitext" in proc.stderr and "--toy" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_missing_scores_name_the_producer_and_command(toy_world, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(REPO / "specs", project / "specs")
    (project / "pyproject.toml").write_text("")  # marks the project root for relative spec paths
    profile = project / "specs" / "profiles" / "toy.yaml"
    proc = _run(
        ["run", "specs/exp4_negative_only.yaml", "--profile", str(profile), "--no-report"], _env(toy_world), cwd=project
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "specs/magic/magic_wmdp.yaml" in proc.stderr and "unlearnspec run specs/magic/magic_wmdp.yaml" in proc.stderr


def _shrink_producers(specs: Path, names: tuple[str, ...], count: int, steps: int) -> None:
    """Rewrite copied score specs to fewer rows and steps and the fewest LDS subsets (the profile gives an
    LDS only to specs that set none): the toy world's numbers are not the point where this is used."""
    for name in names:
        path = specs / f"{name}.yaml"
        spec = yaml.safe_load(path.read_text())
        spec["data"]["select"]["count"] = count
        spec["training"]["max_steps"] = steps
        spec["magic"]["lds"] = {"subsets": 5, "fraction": 0.05, "unit": "row", "seed": 0}
        path.write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.mark.slow
def test_exp5_toy_runs_both_score_producers_first(toy_world, tmp_path):
    """The score specs an experiment names are produced first under --toy; their scores steer the run."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "specs", project / "specs")
    shutil.copytree(REPO / "plugins", project / "plugins")
    (project / "pyproject.toml").write_text("")  # project root: runs/ go here, not into the repo
    # 200 -> 50 toy rows, 48 -> 12 steps, 5 LDS subsets (suite time, issue 23): the order of the jobs and the
    # scores' use are the point here, not the toy world's numbers.
    _shrink_producers(project / "specs" / "magic", ("magic_wmdp", "magic_mmlu"), count=200, steps=48)
    args = [
        "run",
        "specs/exp5_selective.yaml",
        "--toy",
        "--no-report",
        "--set",
        "training.lr=[1.0e-4]",
        "--set",
        "data.select.count=200",
        "--set",
        "training.max_steps=24",
        "--set",
        "eval.tasks.0.limit=20",
        "--set",
        "eval.tasks.1.limit=20",
    ]
    proc = _run(args, _env(toy_world), cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for producer in ("magic_wmdp", "magic_mmlu"):
        side = json.loads((project / "runs/toy/magic" / producer / "scores.json").read_text())
        assert side["alignment"] == "target" and side["query"]["loss"] == "answer_continuation"
        assert side["N"] == 50 and side["S"] == 64 and side["dtype"] == "float32"
        assert side["lds"]["subsets"] == 5  # each producer's own LDS ran before the experiment read it
    results = json.loads((project / "runs/toy/exp5_selective/results.json").read_text())
    stats = results["runs"][0]["token_stats"]
    assert results["runs"][0]["status"] == "ok"
    assert 0.0 < stats["selected_fraction"] < 1.0 and stats["ascending_tokens"] == 0
    assert stats["per_token_lr_factor"] == pytest.approx(1 / stats["selected_fraction"])
    # a rerun reuses the scores and the finished point
    again = _run(args, _env(toy_world), cwd=project)
    assert again.returncode == 0, again.stderr[-3000:]
    for job in ("score:magic_wmdp", "score:magic_mmlu", "point:exp5_selective/lr_0.001"):  # toy AdamW LRs x10
        assert f"{job} already done; skipped" in again.stdout


@pytest.mark.slow
def test_diverging_point_is_recorded_and_the_sweep_goes_on(toy_world, tmp_path):
    out = tmp_path / "exp7"
    args = [
        "run",
        EXP7,
        "--toy",
        "--out",
        str(out),
        "--set",
        "training.lr=[1.0e+4, 1.0e-5]",
        "--set",
        "eval.tasks.0.limit=50",
        "--set",
        "eval.tasks.1.limit=50",
        "--reports-dir",
        str(tmp_path / "reports"),
    ]
    proc = _run(args, _env(toy_world))
    assert proc.returncode == 1, proc.stderr[-3000:]  # a failed point is not a user error
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["failed", "ok"]
    assert "non-finite loss" in runs[0]["reason"] and runs[0]["metrics"] == {}
    assert not (out / runs[0]["run_dir"] / "samples.json").exists()  # nothing evaluated from a broken model
    report = (tmp_path / "reports" / "exp7_all_tokens.md").read_text()
    assert "failed: non-finite loss" in report


def test_a_toy_run_dir_spec_reruns_without_double_scaling(toy_world, tmp_path):
    from unlearnspec.spec.load import dump_spec, load_spec
    from unlearnspec.spec.profile import default_toy_profile

    mapped = load_spec(REPO / EXP7, profile=default_toy_profile())
    (tmp_path / "spec.yaml").write_text(dump_spec(mapped))
    again = load_spec(tmp_path / "spec.yaml", profile=default_toy_profile())
    assert again == mapped  # the profile maps real specs only; a mapped spec passes through unchanged


@pytest.mark.slow
def test_saved_final_model_evaluates_with_the_lm_eval_cli_to_the_recorded_acc(toy_world, tmp_path):
    """`output.save_model: final` (the default) keeps a folder that loads with AutoModelForCausalLM and that
    the lm_eval CLI scores exactly as the in-process evaluation recorded in eval.json."""
    from transformers import AutoModelForCausalLM

    from .test_evaluation import _cli_results

    out = tmp_path / "exp7"
    proc = _run(
        ["run", EXP7, "--toy", "--out", str(out), "--no-report", "--set", "training.lr=1.0e-4"], _env(toy_world)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    point = out / "lr_0.001"
    assert json.loads((point / "point.json").read_text())["model_dir"] == "model"
    model_dir = point / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    trained = AutoModelForCausalLM.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(toy_world.model_dir)
    assert any(not torch_equal(a, b) for a, b in zip(trained.parameters(), base.parameters()))  # it is the trained one
    recorded = json.loads((point / "eval.json").read_text())["metrics"]["toy_wmdp"]
    (tmp_path / "cli").mkdir()
    cli = _cli_results(model_dir, tmp_path / "cli", "toy_wmdp", batch_size=32)
    assert cli["acc,none"] == recorded["acc"] and recorded["n"] == 300


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)

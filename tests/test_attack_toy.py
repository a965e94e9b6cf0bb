"""The relearning attack end to end on the toy world: `unlearnspec run --toy` refuses held-out rows shared with the
forget set (exit 2, naming attack.data), and with `shared_rows: drop` records one attack result per step count
in results.json, beside attack/k=<k>/samples.json, which the report reads into its recovery columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO, SPECS

pytestmark = pytest.mark.slow


def _spec(tmp_path, shared_rows: str) -> str:
    data = yaml.safe_load((SPECS / "comparators" / "npo.yaml").read_text())
    data["training"].update(lr=[1e-4], max_steps=20)  # toy: 5 steps at 0.05
    for task in data["eval"]["tasks"]:
        task["limit"] = 50
    data["attack"].update(steps=[2, 4], shared_rows=shared_rows)
    path = tmp_path / f"npo_{shared_rows}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _run(toy_world, tmp_path, spec: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        UNLEARNSPEC_CACHE=str(toy_world.root.parents[1]),
    )
    return subprocess.run(
        [sys.executable, "-m", "unlearnspec", "run", spec, "--toy", "--out", str(tmp_path / out), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_attack_runs_on_the_toy_world_and_refuses_shared_rows(toy_world, tmp_path):
    refused = _run(toy_world, tmp_path, _spec(tmp_path, "refuse"), "refused", "--no-report")
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    said = refused.stdout + refused.stderr
    assert "attack.data" in said and "held-out rows" in said and "Traceback" not in said
    assert not (tmp_path / "refused" / "results.json").exists()

    proc = _run(toy_world, tmp_path, _spec(tmp_path, "drop"), "out", "--reports-dir", str(tmp_path / "reports"))
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (run,) = results["runs"]
    assert [a["steps"] for a in run["attack"]] == [2, 4]
    for a in run["attack"]:
        assert set(a["metrics"]) == {"toy_wmdp", "toy_mmlu"} and a["metrics"]["toy_wmdp"]["n"] == 50
        assert (tmp_path / "out" / a["samples_file"]).is_file()
    held = json.loads((tmp_path / "out" / run["run_dir"] / "attack" / "attack.json").read_text())
    assert held["rows"] + held["dropped_shared_rows"] == 50 and held["dropped_shared_rows"] > 0
    report = json.loads(next((tmp_path / "reports").glob("*.json")).read_text())
    row = next(r for r in report["rows"] if r["kind"] == "run")
    assert [c["steps"] for c in row["attack"]] == [2, 4]
    md = next((tmp_path / "reports").glob("*.md")).read_text()
    assert "Toy WMDP after attack (4 steps)" in md and "recovery (4 steps)" in md

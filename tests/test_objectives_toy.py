"""Each unlearning objective end to end on the toy world: `unlearnspec run --toy` trains a point, evaluates it and
records objective.json (the forget and retain fingerprints; NPO's reference entry, computed once, then loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO, SPECS

pytestmark = pytest.mark.slow

OBJECTIVES = {
    "grad_diff": {"name": "grad_diff", "alpha": 1.0},
    "npo": {"name": "npo", "beta": 0.1, "alpha": 1.0},
    "simnpo": {"name": "simnpo", "beta": 2.5, "gamma": 0.0, "alpha": 1.0},
    "rmu": {"name": "rmu", "layer": 2, "steering_coef": 6.5, "alpha": 100.0, "seed": 0},
}


def _spec(tmp_path, name: str) -> str:
    """specs/fixed/all_tokens.yaml turned into an unlearning run on the bio forget and retain corpora: 20 steps
    (5 on the toy world), 50 questions per task; NPO sweeps two LRs so its second point reads the cached reference."""
    data = yaml.safe_load((SPECS / "fixed" / "all_tokens.yaml").read_text())
    data.update(name=f"objective_{name}", objective=OBJECTIVES[name])
    data.pop("control", None)
    data["data"]["hub"] = {"path": "cais/wmdp-bio-forget-corpus"}
    data["data"]["retain"] = {
        "hub": {"path": "cais/wmdp-corpora", "name": "bio-retain-corpus"},
        "select": {"count": 1000, "min_chars": 100},
    }
    data["training"].update(lr=[1e-4, 2e-4] if name == "npo" else [1e-4], max_steps=20)
    if name == "rmu":
        data["training"]["optimizer"] = {"name": "adamw", "weight_decay": 0.0}
        data.pop("parallel")  # the base spec shards (FSDP) over the example site's 2 GPUs; RMU refuses FSDP
    for task in data["eval"]["tasks"]:
        task["limit"] = 50
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _written(recorded: dict, name: str) -> bool:
    """The recorded objective holds what the spec wrote (and its defaults, e.g. rmu's `train_params: mlp`)."""
    return {k: recorded.get(k) for k in OBJECTIVES[name]} == OBJECTIVES[name]


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_an_objective_point_trains_and_evaluates_on_the_toy_world(toy_world, tmp_path, name):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        UNLEARNSPEC_CACHE=str(toy_world.root.parents[1]),
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "unlearnspec", "run", _spec(tmp_path, name), "--toy", "--out", str(out), "--no-report"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["runs"] and all(r["status"] == "ok" for r in results["runs"])
    records = []
    for run in results["runs"]:
        assert set(run["metrics"]) == {"toy_wmdp", "toy_mmlu"} and all(m["n"] == 50 for m in run["metrics"].values())
        log = json.loads((out / run["run_dir"] / "log_history.json").read_text())
        assert sum("loss" in row for row in log) == 5
        records.append(json.loads((out / run["run_dir"] / "objective.json").read_text()))
        spec = yaml.safe_load((out / run["run_dir"] / "spec.yaml").read_text())
        assert _written(spec["objective"], name) and spec["data"]["retain"]["toy"] == {"corpus": "bio_retain"}
    first = records[0]
    assert _written(first["objective"], name) and first["forget"]["rows"] == 250 and first["retain"]["rows"] == 250
    assert first["forget"]["fingerprint"] != first["retain"]["fingerprint"]
    if name == "npo":
        assert [r["reference"]["status"] for r in records] in (["computed", "loaded"], ["loaded", "loaded"])
    if name == "rmu":
        assert first["trained_parameters"] and all(".mlp." in n for n in first["trained_parameters"])

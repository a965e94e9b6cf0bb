"""`torchrun --nproc-per-node 2 -m unlearnspec run` end to end on the toy world (CPU, gloo): the same
metrics as one process with the same global batch, one results file, one evaluation per point, no hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

SMALL = ["--no-report", "--set", "training.lr=[1.0e-4]", "--set", "eval.tasks.0.limit=100", "--set", "eval.tasks.1.limit=100"]


def _env(toy_world) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "UNLEARNSPEC_CACHE": str(toy_world.root.parents[1]), "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_two_ranks_give_the_one_process_results_once(toy_world, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run = [sys.executable, "-m", "unlearnspec", "run", "specs/exp7_all_tokens.yaml", "--toy"]
    single = subprocess.run([*run, "--out", str(one), *SMALL], cwd=REPO, env=_env(toy_world), capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    # the same global batch: 2 ranks x 4 rows = 1 process x 8 rows; `--nproc 2` starts torchrun itself
    multi = subprocess.run([*run, "--nproc", "2", "--out", str(two), *SMALL, "--set", "training.batch_size=4"],
                           cwd=REPO, env=_env(toy_world), capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert [r["metrics"] for r in a["runs"]] == [r["metrics"] for r in b["runs"]]
    assert a["baseline"]["metrics"] == b["baseline"]["metrics"]
    assert sorted(p.relative_to(two).as_posix() for p in two.rglob("results.json")) == ["results.json"]
    assert sorted(p.relative_to(two).as_posix() for p in two.rglob("eval.json")) == ["baseline/eval.json", "lr_0.001/eval.json"]
    assert multi.stdout.count("[point:exp7_all_tokens/lr_0.001] ok") == 1  # rank 0 alone reports
    la, lb = (json.loads((d / "lr_0.001" / "log_history.json").read_text()) for d in (one, two))
    for x, y in zip(la, lb):
        if "loss" in x:
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)

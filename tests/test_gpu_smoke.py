"""benchmarks/gpu_smoke.py: its --dry-run exercises every check on the CPU; on a CUDA machine the real run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CHECKS = ("toy_exp7", "magic_float64", "pythia160m_trainers", "pythia160m_magic", "fsdp_magic_w1", "fsdp_magic_w2")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )
    env.setdefault("UNLEARNSPEC_CACHE", str(REPO / ".cache" / "unlearnspec"))
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_smoke.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _check_lines(out: str) -> dict[str, str]:
    return {ln.split(":")[0].split()[1]: ln for ln in out.splitlines() if ln.startswith("CHECK ")}


@pytest.mark.slow
def test_dry_run_passes_every_check(toy_world):
    proc = _run("--dry-run", timeout=300)
    lines = _check_lines(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(lines) == set(CHECKS) and all(": ok (" in ln for ln in lines.values()), lines


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_smoke_on_cuda(toy_world):
    proc = _run(timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(_check_lines(proc.stdout)) == set(CHECKS)

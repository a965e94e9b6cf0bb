"""Launch a worker script under real torchrun (CPU, gloo) from a test, with a hard timeout and no strays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = REPO / "tests" / "workers"


@dataclass
class Launch:
    returncode: int
    output: str
    seconds: float
    timed_out: bool


def torchrun(
    script: str, *args: str, nproc: int = 2, timeout: float = 300.0, env: dict[str, str] | None = None
) -> Launch:
    """`torchrun --standalone --nproc-per-node N tests/workers/SCRIPT ARGS`; on timeout the whole process
    group (torchrun and its ranks) is killed and `timed_out` is set."""
    full_env = dict(os.environ)
    full_env.update(
        PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",
    )
    full_env.update(env or {})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(WORKERS / script),
        *args,
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and every rank it started (its own session)
        out, _ = proc.communicate()
        timed_out = True
    return Launch(proc.returncode, out, time.perf_counter() - started, timed_out)

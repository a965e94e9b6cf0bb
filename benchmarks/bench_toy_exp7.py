"""Wall seconds of the exp7 toy sweep from a cold start (fresh interpreter, toy model cached).

Runs `unlearnspec run specs/exp7_all_tokens.yaml --toy --out <tmp> --no-report` once; the toy world is
built first (not timed) if missing. The baseline evaluation cache is emptied so it is timed too.
Last line: `toy_exp7_seconds=<wall>`. Target: <= 180 s on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(
        [sys.executable, "-m", "unlearnspec", "toy", "build"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL
    )
    from unlearnspec.spec.assets import cache_root

    shutil.rmtree(cache_root() / "baselines", ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "exp7"
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "unlearnspec",
                "run",
                "specs/exp7_all_tokens.yaml",
                "--toy",
                "--out",
                str(out),
                "--no-report",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(proc.returncode)
        results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        accs = " ".join(f"{t}={m['acc']:.4f}" for t, m in run["metrics"].items())
        print(
            f"{run['point']}: {run['status']} {accs} train {run['train_seconds']:.1f}s eval {run['eval_seconds']:.1f}s"
        )
    print(f"points={len(results['runs'])} threads_env={os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"toy_exp7_seconds={wall:.1f}")


if __name__ == "__main__":
    main()

"""The FSDP MAGIC checks of benchmarks/gpu_smoke.py: the sharded reverse pass on the device equals the plain pass
on the CPU (float64 tiny GPT-NeoX, SGD and AdamW with clipping, 1e-10), on one rank and, where two GPUs exist (or
on the CPU in a dry run, gloo), on two ranks started with torchrun (nccl on GPUs).

    python benchmarks/gpu_smoke_fsdp.py --worker OUT_DIR   # one rank of the two-rank check (torchrun starts it)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CASES = ("sgd_sqrt", "adamw_clip_all")  # tests/workers/magic_fsdp.py


def _scores(name: str, states: Path, device: torch.device, group=None) -> torch.Tensor:
    """The case's scores from the sharded pass on `device` over `group` (None: one rank)."""
    sys.path.insert(0, str(REPO))
    from tests.workers.magic_fsdp import _scores as case_scores
    from tests.workers.magic_fsdp import record
    from unlearnspec.magic.shard_ops import ShardGroup
    from unlearnspec.magic.sharded import rebind_query, shard_for_replay

    model, grid, traj, query = record(name, states)  # recorded on the CPU (float64, deterministic)
    skeleton, comm = shard_for_replay(model.to(device), group or ShardGroup(0, 1))
    return case_scores(skeleton, grid, traj, rebind_query(query, skeleton), name, comm=comm).cpu()


def _reference(name: str, states: Path) -> torch.Tensor:
    sys.path.insert(0, str(REPO))
    from tests.workers.magic_fsdp import reference

    return reference(name, states)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def check_one_rank(device: torch.device) -> str:
    """World size 1: the sharded code path (skeleton, gathers, saved-tensor hooks) on the device."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            rel = _rel(_scores(name, Path(tmp) / "a", device), _reference(name, Path(tmp) / "b"))
            if not rel <= 1e-10:
                raise AssertionError(f"{name}: relative difference {rel:.2e} > 1e-10")
            out.append(f"{name} {rel:.1e}")
    return "W=1: " + ", ".join(out)


def check_two_ranks(device: torch.device) -> str:
    """World size 2 under torchrun (nccl on two GPUs; gloo on the CPU in a dry run)."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return f"W=2 skipped: {torch.cuda.device_count()} GPU"
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", SMOKE_DEVICE=device.type)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                str(Path(__file__).resolve()),
                "--worker",
                tmp,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise AssertionError(f"torchrun failed: {(proc.stdout + proc.stderr)[-500:]}")
        got = torch.load(Path(tmp) / "scores.pt")
        out = []
        for name in CASES:
            rel = _rel(got[name], _reference(name, Path(tmp) / "ref"))
            if not rel <= 1e-10:
                raise AssertionError(f"{name}: relative difference {rel:.2e} > 1e-10 on 2 ranks")
            out.append(f"{name} {rel:.1e}")
    return "W=2: " + ", ".join(out)


def worker(out: Path) -> None:
    import torch.distributed as dist

    from unlearnspec.magic.sharded import default_group

    cuda = os.environ.get("SMOKE_DEVICE") == "cuda"
    rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    torch.set_num_threads(1)
    result = {name: _scores(name, out / f"states{rank}", device, default_group()) for name in CASES}
    if dist.get_rank() == 0:
        torch.save(result, out / "scores.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"] or len(sys.argv) != 3:
        raise SystemExit("usage: torchrun --nproc-per-node 2 benchmarks/gpu_smoke_fsdp.py --worker OUT_DIR")
    sys.path.insert(0, str(REPO))
    worker(Path(sys.argv[2]))

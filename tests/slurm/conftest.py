"""The `slurm_cluster` fixture: a live SLURM cluster (e.g. started by tests/slurm/start-cluster.sh), or a skip.

Tests skip, with the reason, only when `sbatch` is absent or no node of the cluster answers. CI sets
UNLEARNSPEC_SLURM_REQUIRED=1 after start-cluster.sh succeeded, so there a dead cluster fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.slurm.slurmutil import accounting_enabled

START = Path(__file__).with_name("start-cluster.sh")
USABLE = {"idle", "mixed", "allocated", "completing"}


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know about the running cluster."""

    partition: str  # the default partition
    nodes: tuple[str, ...]  # nodes that can run jobs now
    cpus: int  # CPUs of the first usable node
    accounting: bool  # `sacct` answers (a slurmdbd); else submitit cannot see job states


def _unavailable(reason: str) -> None:
    if os.environ.get("UNLEARNSPEC_SLURM_REQUIRED") == "1":
        pytest.fail(f"UNLEARNSPEC_SLURM_REQUIRED=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _one_slurm_test_at_a_time(tmp_path_factory: pytest.TempPathFactory):
    """Under pytest-xdist the SLURM tests of both workers would share the one cluster (a 2-CPU node): jobs of one
    test queue behind the other's and their waits time out, and some tests read the whole queue. A lock in the
    session's shared temp folder lets one SLURM test run at a time (the other worker waits for it)."""
    import fcntl

    lock = tmp_path_factory.getbasetemp().parent / "slurm-tests.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    if shutil.which("sbatch") is None:
        _unavailable(
            f"sbatch not found: SLURM is not installed here (as root, {START} installs and starts a "
            "single-node cluster)"
        )
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P|%T|%c|%N"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        _unavailable(f"sinfo did not answer in 20 s: the SLURM cluster is not up (start it with {START})")
    if out.returncode != 0:
        _unavailable(f"sinfo failed, the SLURM cluster is not up ({out.stderr.strip()[:200]}); start it with {START}")
    partition, nodes, cpus = "", [], 0
    for line in out.stdout.splitlines():
        part, state, ncpu, node = line.split("|")
        if part.endswith("*") and not partition:
            partition = part.rstrip("*")
        if state.rstrip("*~#") in USABLE:
            nodes.append(node)
            cpus = cpus or int(ncpu)
    if not nodes:
        _unavailable(f"no SLURM node is up (sinfo: {out.stdout.strip()[:200]!r}); start the cluster with {START}")
    if not partition:
        _unavailable(f"the SLURM cluster has no default partition (sinfo: {out.stdout.strip()[:200]!r})")
    return SlurmCluster(partition=partition, nodes=tuple(nodes), cpus=cpus, accounting=accounting_enabled())

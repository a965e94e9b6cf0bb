"""The Executor protocol: build the plan for where the jobs will run, submit it, ask where each job
stands, wait for the outcome. Serial, pool and SLURM implement it; `executors/__init__.py` names them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional, Protocol, Union

from unlearnspec.run.context import RunContext
from unlearnspec.run.outcome import Outcome
from unlearnspec.run.plan import Plan

if TYPE_CHECKING:
    from unlearnspec.run.options import RunOptions
    from unlearnspec.run.progress import RunDisplay


@dataclass(frozen=True)
class ExecutorOptions:
    """How `run` spreads the plan's jobs over processes and devices (nothing here changes an experiment)."""

    jobs: int = 1
    """Jobs at once (the pool executor's worker processes)."""
    gpus_per_job: Optional[int] = None
    """GPUs each pool job gets (a disjoint CUDA_VISIBLE_DEVICES set); None: 1 when GPUs are visible, else 0."""
    nproc: int = 1
    """Data-parallel ranks per job (torchrun), where the executor supports it."""
    cluster: Optional[Path] = None
    """SLURM site file (the slurm executor)."""


@dataclass
class JobStatus:
    """Where one job stands (a row of `status`)."""

    job: str
    kind: str
    state: str
    """done | failed | todo | running | queued | not submitted | not run | cancelled | lost"""
    detail: str = ""
    slurm_id: str = ""
    log: str = ""
    recorded: bool = False
    """The job left a record (its folder): a recorded failure is rerun only with --retry-failed."""

    @property
    def live(self) -> bool:
        return self.state in ("queued", "running")

    def as_dict(self) -> dict[str, Union[str, bool]]:
        """A row of `status --format json`."""
        return asdict(self)


class Executor(Protocol):
    """Runs the jobs of a plan somewhere. Local executors run them in `wait`; SLURM hands them over in
    `submit` and `wait` returns at once."""

    name: ClassVar[str]
    under_torchrun: ClassVar[bool]
    """`run --nproc N` restarts the command under torchrun and every rank runs every job (serial only)."""
    detached: ClassVar[bool]
    """`wait` returns before the jobs have run (SLURM): no results here yet, so no doctor summary after `run`."""
    ctx: RunContext

    @classmethod
    def create(cls, options: "RunOptions", settings: ExecutorOptions, display: "RunDisplay") -> "Executor":
        """Check the settings (UserError naming the option and the fix) and set up."""
        ...

    @property
    def where(self) -> str:
        """Where the jobs run, for the plan line: `on cpu`, `on cpu, 2 at once`, `on SLURM`."""
        ...

    def make_plan(self, paths: list[Path]) -> Plan:
        """The plan for the device the jobs will run on (baseline cache keys name it)."""
        ...

    def submit(self, plan: Plan) -> None:
        """Refuse foreign outputs, then hand over every job that is not done."""
        ...

    def status(self, plan: Plan) -> dict[str, JobStatus]:
        """Where each job of the plan stands now."""
        ...

    def wait(self) -> Outcome:
        """Local executors: run until every job ended (or an interrupt), then write results.json.
        SLURM: what was submitted, at once."""
        ...

"""Several processes (torchrun / accelerate launch): who this rank is, waiting, sharing, failing together.

Every helper works unchanged in one process (no process group: rank 0 of 1). Rules the executor follows:
- anything that writes files or evaluates runs on rank 0 through `run_on_main`, the others wait and get
  rank 0's result (or its failure) back;
- a block that may fail on one rank runs inside `fail_together`, so a failure on any rank raises on
  every rank at the same point (the reason is known everywhere and recorded once, by rank 0);
- a rank that dies outside such a block exits its process; torchrun then stops the other ranks
  (it never waits for them), so a run cannot hang past the collective timeout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Optional, TypeVar

T = TypeVar("T")


class RankFailed(RuntimeError):
    """Another rank failed; raised on the ranks that did not, with that rank's reason."""

    def __init__(self, rank: int, reason: str):
        super().__init__(f"rank {rank} failed: {reason}")
        self.rank = rank
        self.reason = reason


# --------------------------------------------------------------------------- who am I
def world_size() -> int:
    """Processes in this launch (WORLD_SIZE from torchrun / accelerate; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (RANK; 0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine (LOCAL_RANK; picks the GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and evaluates."""
    return rank() == 0


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def initialized() -> bool:
    """A process group exists (joined by `init` or by the HF Trainer / accelerate)."""
    if not is_distributed():
        return False
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized())


def init(backend: Optional[str] = None, timeout_s: float = 1800.0) -> None:
    """Join the process group when launched with several processes (no-op when joined or alone).

    `backend` unset: nccl when CUDA is available, else gloo. `timeout_s` bounds every collective.
    """
    if not is_distributed() or initialized():
        return
    import torch

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    _dist().init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def _require_group() -> None:
    if is_distributed() and not initialized():
        raise RuntimeError(
            "launched with several processes but no process group exists; call unlearnspec.train.dist.init()"
        )


def _object_device() -> Any:
    """Device for object collectives: the current GPU under nccl, else None (CPU)."""
    import torch

    dist = _dist()
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


# --------------------------------------------------------------------------- waiting and sharing
def barrier() -> None:
    """Wait until every rank gets here."""
    if initialized():
        _dist().barrier()
    else:
        _require_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (pickled in memory between our own processes; any picklable value)."""
    if not initialized():
        _require_group()
        return obj
    box = [obj if rank() == src else None]
    _dist().broadcast_object_list(box, src=src, device=_object_device())
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """[value of rank 0, value of rank 1, ...] on every rank."""
    if not initialized():
        _require_group()
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one (an all-reduce of a failure flag)."""
    if not initialized():
        _require_group()
        return bool(flag)
    import torch

    dist = _dist()
    device = _object_device() or torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


# --------------------------------------------------------------------------- failing together
def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextmanager
def fail_together() -> Iterator[None]:
    """Run a block on every rank; when it raises on any rank, every rank raises after it.

    The failing rank re-raises its own exception; the others raise `RankFailed` with the lowest failing
    rank's reason. The block must not itself wait on a rank that already failed (keep collectives out
    of it, or make the failure agreed inside, as the trainer's divergence check does).
    """
    error: Optional[BaseException] = None
    try:
        yield
    except Exception as exc:  # KeyboardInterrupt/SystemExit end the process; torchrun stops the others
        error = exc
    if not is_distributed():
        if error is not None:
            raise error
        return
    reasons = gather_objects(None if error is None else _reason(error))
    failed = [(r, msg) for r, msg in enumerate(reasons) if msg is not None]
    if error is not None:
        raise error
    if failed:
        raise RankFailed(*failed[0])


def run_on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only (evaluation, writing files) while the others wait; every rank returns
    rank 0's result. When `fn` raises on rank 0, rank 0 re-raises it and the others raise `RankFailed`.

    The result is broadcast, so it must be picklable; the others wait at most the collective timeout
    (`parallel.timeout_s`), so `fn` must finish within it.
    """
    if not is_distributed():
        return fn()
    error: Optional[BaseException] = None
    payload: Any = None
    if is_main():
        try:
            payload = ("ok", fn())
        except Exception as exc:
            error = exc
            payload = ("error", _reason(exc))
    status, value = broadcast_object(payload, src=0)
    if error is not None:
        raise error
    if status == "error":
        raise RankFailed(0, value)
    return value

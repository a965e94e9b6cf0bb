"""How the ranks of a data-parallel MAGIC run combine their partial sums (one process: nothing to do).

The reverse pass splits every step's rows over the ranks; each rank's gradient, Hessian-vector
product, query gradient and per-token scores are partial sums over its rows, and `all_reduce_`
turns them into the full sums every rank needs. Tensors are summed in buckets of at most
`bucket_bytes`, copied to the communication device when they live elsewhere (CPU-offloaded adjoints
under nccl), so a parameter-sized list costs one extra bucket of memory, not one extra model.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch


class Collective(Protocol):
    """Summation across ranks (a no-op for one process)."""

    rank: int
    world_size: int

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        """Replace every tensor by its sum over ranks, in place (same list, same order on every rank)."""

    def barrier(self) -> None: ...


class Alone:
    """One process: rank 0 of 1."""

    rank = 0
    world_size = 1

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        return None

    def barrier(self) -> None:
        return None


class TorchDistributed:
    """The default torch.distributed process group (gloo on the CPU, nccl on GPUs)."""

    def __init__(self, bucket_bytes: int = 256 * 2**20) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("TorchDistributed needs an initialized process group")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.bucket_bytes = bucket_bytes
        backend = dist.get_backend()
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _sum_bucket(self, bucket: list[torch.Tensor]) -> None:
        flat = torch.cat([t.reshape(-1).to(self.device) for t in bucket])
        self._dist.all_reduce(flat)
        offset = 0
        for t in bucket:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        bucket: list[torch.Tensor] = []
        size = 0
        dtype: Optional[torch.dtype] = None
        for t in tensors:
            nbytes = t.numel() * t.element_size()
            if bucket and (size + nbytes > self.bucket_bytes or t.dtype != dtype):
                self._sum_bucket(bucket)
                bucket, size = [], 0
            bucket.append(t)
            size += nbytes
            dtype = t.dtype
        if bucket:
            self._sum_bucket(bucket)

    def barrier(self) -> None:
        self._dist.barrier()


def default_collective() -> Collective:
    """`TorchDistributed` when a process group of more than one rank exists, else `Alone`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributed()
    return Alone()

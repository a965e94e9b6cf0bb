"""Peak memory of a block of torch code on any device, the CPU included, from tracked allocations.

torch reports allocator statistics only for CUDA. `LiveBytes` sees every tensor an operator returns (a
`TorchDispatchMode` sits below autograd, so both backwards, collectives and factory functions are seen), counts
each new storage once and uncounts it when the storage is freed (a weak reference: a storage keeps its Python
object while it lives). Storages made before the block (the model, kept states) are not counted. Tests and
benchmarks/memory_model.py check the memory model against it.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """`with LiveBytes() as m: ...`, then `m.peak` (bytes) and `m.live` (bytes still held at the end)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return
        if storage in self._seen or storage.device.type == "meta":
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        weakref.finalize(storage, self._freed, nbytes)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

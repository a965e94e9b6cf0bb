"""The model of the sharded reverse pass: a parameter-free copy ("skeleton") whose forward all-gathers each
module's parameters from the rank shards just before the module runs, and never keeps them.

Each module that owns parameters gets a pre-forward hook that puts the gathered (differentiable, see
`shard_ops.gather_rows`) tensors in place of its 0-row placeholders and a post-forward hook that puts the
placeholders back. Autograd would still keep the gathered tensors alive for the backward (a matmul saves its
weight): a saved-tensor hook (`saving()`, active over the forward and both backwards) stores only which
parameter and which view was saved and all-gathers it again when the backward needs it, so at most a few
layers are ever whole on a rank. The unpacked tensor keeps the original's place in the graph (autograd
restores it), so the double backward still reaches the shards.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unlearnspec.magic.shard_ops import ShardGroup, all_gather_rows, gather_rows
from unlearnspec.magic.trajectory import plain_name

SHARDED_ATTR = "_unlearnspec_sharded"
"""Attribute of a skeleton module that holds its `ShardedForward` (`replay.forward_logits` dispatches on it)."""


@dataclass(frozen=True)
class _Saved:
    """What the pack hook keeps of a saved gathered parameter: enough to gather it again and re-take the view."""

    name: str
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (root.get_submodule(path) if path else root), attr


def _plain_class(model: nn.Module) -> type:
    """The model's own class (FSDP2 swaps in a subclass that carries its hooks)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def build_skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` without parameter storage (0-row placeholders of the right dtype, device and number of
    dimensions) and with its buffers. Transformers models are rebuilt from their config on the meta device;
    other modules are deep-copied with their parameters swapped out first."""
    params = [(plain_name(n), p) for n, p in model.named_parameters()]  # without activation-checkpoint wrappers
    first = _local(params[0][1]) if params else None
    device = first.device if first is not None else torch.device("cpu")

    def placeholder(p: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(torch.empty((0, *p.shape[1:]), dtype=p.dtype, device=device), requires_grad=False)

    config = getattr(model, "config", None)
    if config is not None and hasattr(type(model), "config_class"):
        with torch.device("meta"):
            ghost = _plain_class(model)(config)
        for name, p in params:
            module, attr = _owner(ghost, name)
            module._parameters[attr] = placeholder(p)
        for name, b in model.named_buffers():
            module, attr = _owner(ghost, plain_name(name))
            module._buffers[attr] = _local(b).detach().to(device)
    else:
        memo: dict[int, Any] = {id(p): placeholder(p) for _, p in params}
        ghost = copy.deepcopy(model, memo)
    ghost.eval()
    return ghost


class ShardedForward:
    """Installs the gather hooks on a skeleton; `logits(shards, ...)` is its forward at the sharded parameters."""

    def __init__(self, skeleton: nn.Module, shapes: Mapping[str, tuple[int, ...]], group: ShardGroup):
        self.skeleton = skeleton
        self.group = group
        self.shapes = dict(shapes)
        for name, shape in self.shapes.items():
            if len(shape) == 0:
                raise ValueError(f"parameter {name} is 0-dimensional; the sharded reverse pass shards by rows")
        self.params: Mapping[str, torch.Tensor] | None = None
        self._by_module: dict[nn.Module, list[tuple[str, str]]] = {}
        for name in self.shapes:
            module, attr = _owner(skeleton, name)
            self._by_module.setdefault(module, []).append((attr, name))
        self._placeholders = {
            name: _owner(skeleton, name)[0]._parameters[_owner(skeleton, name)[1]] for name in self.shapes
        }
        self._gathered: weakref.WeakKeyDictionary[Any, tuple[str, torch.Tensor]] = weakref.WeakKeyDictionary()
        """Storage of a gathered parameter -> (its name, the shard it came from); a storage keeps its Python
        object while it is alive, so an entry ends with the storage and a reused address is never mistaken."""
        self.gathers = 0
        """All-gathers done (forward and re-gathers in the backward): a cost counter."""
        for module in self._by_module:
            module.register_forward_pre_hook(self._pre)
            module.register_forward_hook(self._post)
        setattr(skeleton, SHARDED_ATTR, self)

    # ------------------------------------------------------------------ forward hooks
    def _pre(self, module: nn.Module, args: Any) -> None:
        if self.params is None:
            raise RuntimeError("the sharded skeleton was called outside ShardedForward.logits")
        for attr, name in self._by_module[module]:
            full = gather_rows(self.params[name], self.shapes[name][0], self.group)
            self.gathers += 1
            self._gathered[full.untyped_storage()] = (name, self.params[name])
            module._parameters[attr] = full  # type: ignore[assignment]  # a non-leaf tensor in place of the parameter

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        for attr, name in self._by_module[module]:
            module._parameters[attr] = self._placeholders[name]

    # ------------------------------------------------------------------ saved tensors
    def _pack(self, t: torch.Tensor) -> Any:
        try:
            entry = self._gathered.get(t.untyped_storage())
        except (RuntimeError, NotImplementedError, TypeError):  # tensors without a plain storage
            return t
        if entry is None:
            return t
        name, shard = entry
        return shard, _Saved(name, tuple(t.size()), tuple(t.stride()), int(t.storage_offset()))

    def _unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        shard, saved = packed
        with torch.no_grad():
            full = all_gather_rows(shard.detach(), self.shapes[saved.name][0], self.group)
            if full is shard or full.data_ptr() == shard.data_ptr():
                full = full.clone()
        self.gathers += 1
        self._gathered[full.untyped_storage()] = (saved.name, shard)
        return full.as_strided(saved.size, saved.stride, saved.offset)

    @contextmanager
    def saving(self) -> Iterator[None]:
        """Keep gathered parameters out of autograd's saved tensors (re-gather on use); wrap the forward and
        both backwards in it."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

    # ------------------------------------------------------------------ forward
    @contextmanager
    def at(self, params: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Let the skeleton's forward use these shards (name -> this rank's rows)."""
        before, self.params = self.params, params
        try:
            yield
        finally:
            self.params = before

    def logits(
        self, params: Mapping[str, torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, S, V] of the model at the sharded parameters `params` (every name of the shapes)."""
        missing = [n for n in self.shapes if n not in params]
        if missing:
            raise KeyError(f"the sharded forward needs every parameter; missing {missing[:3]}")
        with self.at(params), self.saving():
            out = self.skeleton(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits

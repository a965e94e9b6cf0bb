"""Spec section `parallel`: the device and how several processes (torchrun / accelerate) share a run.

One process ignores everything here except `device`. Under `torchrun --nproc-per-node N` each rank
trains on 1/N of every optimizer step's rows (DDP) or also holds 1/N of the parameters (FSDP); both
take the same optimizer steps as one process with the same global batch. Imports no torch.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from unlearnspec.spec.base import SpecRuleError, _Section


class FsdpSpec(_Section):
    """Fully Sharded Data Parallel (PyTorch FSDP2 through the HF Trainer / accelerate)."""

    sharding: Literal["full_shard", "shard_grad_op"] = "full_shard"
    """`full_shard`: parameters, gradients and optimizer state sharded, parameters re-gathered for the
    backward (ZeRO-3, least memory). `shard_grad_op`: parameters stay gathered between forward and
    backward (ZeRO-2, faster, more memory). FSDP2 offers no other strategies (hybrid_* were FSDP1-only)."""
    wrap_layer: Optional[str] = None
    """Class name of the transformer layer that becomes one FSDP unit, e.g. `GPTNeoXLayer`. Unset: the
    model's own `_no_split_modules` (GPTNeoXLayer for GPT-NeoX / Pythia)."""
    activation_checkpointing: bool = False
    """Recompute each wrapped layer's activations in the backward (less memory, ~1/3 more compute)."""
    cpu_offload: bool = False
    """Keep sharded parameters and gradients in CPU memory between uses (GPU runs only: saves GPU
    memory, costs host<->device copies every step)."""


class ParallelSpec(_Section):
    """Where the run executes and how several processes share it (unset: the defaults below)."""

    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    """`auto`: CUDA when available, else the CPU. `cuda` refuses to start without a GPU (under several
    processes each rank takes `cuda:LOCAL_RANK`); `cuda:N` pins one GPU; `cpu` forces the CPU.
    The command line's `--device` wins over this field."""
    strategy: Literal["none", "ddp", "fsdp"] = "ddp"
    """What a multi-process launch does: `ddp` replicates the model (gradients averaged), `fsdp` shards
    it (see `fsdp`), `none` refuses to run under more than one process. One process ignores it."""
    backend: Optional[Literal["nccl", "gloo"]] = None
    """torch.distributed backend. Unset: nccl on CUDA, gloo on the CPU."""
    find_unused_parameters: bool = False
    """DDP's `find_unused_parameters` (an extra graph walk per step); needed only when some trainable
    parameters get no gradient in a step. HF's default (True without gradient checkpointing) is not applied."""
    timeout_s: int = Field(default=1800, gt=0)
    """Seconds a collective may wait for the other ranks before the run fails (init_process_group timeout)."""
    fsdp: FsdpSpec = FsdpSpec()
    """FSDP settings (read only with `strategy: fsdp`)."""

    @model_validator(mode="after")
    def _rules(self) -> "ParallelSpec":
        if self.strategy != "fsdp" and self.fsdp != FsdpSpec():
            raise SpecRuleError(
                ("fsdp",),
                f"`fsdp` settings are read only with `strategy: fsdp` (strategy is {self.strategy}); delete them.",
            )
        return self

"""Several processes: the spec's `parallel` section compiled into HF TrainingArguments fields (DDP,
FSDP2), and a full state dict of a possibly sharded model for evaluation on rank 0."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from unlearnspec.spec import ParallelSpec


@dataclass(frozen=True)
class Placement:
    """Where a training process runs: its resolved device (None: CUDA when available) and the spec's `parallel`
    section (read only under several processes)."""

    device: Optional[torch.device] = None
    parallel: Optional[ParallelSpec] = None


def world_size() -> int:
    """Processes in this launch (torchrun / accelerate set WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def parallel_fields(parallel: Optional[ParallelSpec], device: torch.device, processes: int) -> dict[str, Any]:
    """TrainingArguments fields compiled from the spec's `parallel` section (all defaults spelled out).

    One process gets no distributed field at all (HF would otherwise try to join a process group).
    """
    from unlearnspec.errors import UserError

    par = parallel if parallel is not None else ParallelSpec()
    fields: dict[str, Any] = {"ddp_find_unused_parameters": par.find_unused_parameters, "ddp_timeout": par.timeout_s}
    if processes <= 1:
        return fields
    if par.strategy == "none":
        raise UserError.one(
            "spec",
            f"launched with {processes} processes but parallel.strategy is `none`; "
            "set `strategy: ddp` (or fsdp), or launch one process.",
            loc="parallel.strategy",
        )
    if par.backend == "nccl" and device.type != "cuda":
        raise UserError.one(
            "spec",
            f"backend nccl needs CUDA GPUs (this run is on {device}); use gloo or unset it.",
            loc="parallel.backend",
        )
    fields["ddp_backend"] = par.backend or ("nccl" if device.type == "cuda" else "gloo")
    if par.strategy == "fsdp":
        fsdp_config: dict[str, Any] = {
            "version": 2,
            "reshard_after_forward": par.fsdp.sharding == "full_shard",
            "cpu_offload": par.fsdp.cpu_offload,
            "activation_checkpointing": par.fsdp.activation_checkpointing,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
            "cpu_ram_efficient_loading": False,
        }
        if par.fsdp.wrap_layer is not None:
            fsdp_config["transformer_layer_cls_to_wrap"] = [par.fsdp.wrap_layer]
        fields.update(fsdp=True, fsdp_config=fsdp_config)
    return fields


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `model` as a full tensor on the CPU, also when FSDP shards it.

    A collective under FSDP: every rank must call it (then rank 0 can evaluate a plain copy alone).
    """
    out = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # DTensor shards -> all-gather
        out[name] = full.detach().cpu()
    return out

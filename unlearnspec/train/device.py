"""Which device a run uses (from the command line, the spec or the machine) and what it allows there.

Precedence: `--device` on the command line, then the spec's `parallel.device`, then `auto` (CUDA when
available, else the CPU). Under torchrun each rank takes `cuda:LOCAL_RANK`. Choices that exist only
on a GPU (bf16/fp16 autocast, flash attention, FSDP CPU offload) are refused on the CPU by name.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import torch

from unlearnspec.errors import UserError

_SOURCE = "device"
_PATTERN = re.compile(r"^(auto|cpu|meta|cuda(:[0-9]+)?)$")


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(requested: Optional[str] = None) -> torch.device:
    """The torch device for `requested` ("auto"/None, "cpu", "cuda", "cuda:N"; "meta" for tests).

    "auto" and "cuda" give `cuda:LOCAL_RANK` (LOCAL_RANK from torchrun/accelerate, 0 otherwise);
    an explicit "cuda:N" is used as written.
    """
    name = (requested or "auto").strip().lower()
    if not _PATTERN.match(name):
        raise UserError.one(
            _SOURCE, f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N.", loc="parallel.device"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError.one(
                _SOURCE,
                f"device {name!r} was requested but this machine has no usable CUDA GPU "
                "(torch.cuda.is_available() is False). Use `--device cpu` or run on a GPU machine.",
                loc="parallel.device",
            )
        index = int(name.split(":")[1]) if ":" in name else _local_rank()
        if index >= torch.cuda.device_count():
            raise UserError.one(
                _SOURCE,
                f"device cuda:{index} does not exist ({torch.cuda.device_count()} GPU(s) visible); "
                "start at most one process per GPU.",
                loc="parallel.device",
            )
        return torch.device("cuda", index)
    return torch.device(name)


def check_device_support(spec: Any, device: torch.device) -> None:
    """Refuse, by field name, settings that only work on a GPU when `device` is not CUDA.

    `sdpa` attention is allowed on the CPU (PyTorch ships a CPU kernel); MAGIC replays use their own
    double-backward-safe attention whatever the spec says (`unlearnspec.magic.attention`).
    """
    if device.type == "cuda":
        return
    where = "spec"
    problems = []
    precision = spec.training.precision
    if precision in ("bf16", "fp16"):
        problems.append(
            (
                "training.precision",
                f"`{precision}` autocast needs a CUDA GPU (this run is on {device}); use `precision: fp32` on the CPU.",
            )
        )
    if spec.model.attn_implementation == "flash_attention_2":
        problems.append(
            (
                "model.attn_implementation",
                f"`flash_attention_2` needs a CUDA GPU (this run is on {device}); use `eager` or `sdpa`.",
            )
        )
    parallel = getattr(spec, "parallel", None)
    if parallel is not None and parallel.strategy == "fsdp" and parallel.fsdp.cpu_offload:
        problems.append(
            (
                "parallel.fsdp.cpu_offload",
                f"offloading to the CPU only means something on a GPU (this run is on "
                f"{device}); set `cpu_offload: false`.",
            )
        )
    if problems:
        from unlearnspec.errors import Problem

        raise UserError([Problem(where, loc, msg) for loc, msg in problems])


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")

"""What the jobs of one run share: assets (the toy world), the device, the process group, the display,
and the per-spec prepared data (token grid and weights) so the points of a sweep prepare it once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from unlearnspec.records import HeldOut, TokenStats
from unlearnspec.spec.assets import Assets

if TYPE_CHECKING:
    import datasets
    import torch
    from rich.progress import Progress, TaskID
    from transformers import PreTrainedTokenizerBase

    from unlearnspec.data import TokenGrid
    from unlearnspec.spec.schema import Spec

Say = Callable[[str], None]


@dataclass
class Prepared:
    """Everything the sweep points of one spec share: tokenizer, token grid, signed weights, dataset."""

    tokenizer: "PreTrainedTokenizerBase"
    grid: "TokenGrid"
    weights: "torch.Tensor"
    stats: TokenStats
    dataset: "datasets.Dataset"
    retain: Optional["TokenGrid"] = None
    """The retain grid of an unlearning objective with a retain term (`data.retain`), else None."""
    attack: Optional["HeldOut"] = None
    """The held-out rows of the relearning attack (`attack.data`), checked against grid and retain, else None."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass
class RunContext:
    """Shared by every job of a run; nothing here changes an experiment (that lives in specs and profiles)."""

    assets: Assets = field(default_factory=Assets)
    profile: Optional[Path] = None
    profile_name: Optional[str] = None
    device: str = "cpu"
    """torch device for models and every tensor the jobs create (`cuda` when available, unless overridden)."""
    device_requested: bool = False
    """--device was given: it wins over a spec's `parallel.device`."""
    toy: bool = False
    say: Say = print
    progress: Optional["Progress"] = None
    """The live display's bars (in-job steps add theirs), or None."""
    prepared: dict[str, Prepared] = field(default_factory=dict)
    """Spec hash -> the prepared token grid and weights, shared by the points of a sweep."""
    recipe_cache: dict[str, object] = field(default_factory=dict)
    """What a recipe shares between its jobs in one process (e.g. the LDS retrainings' model and trajectory),
    by a key of the recipe's; the recipe checks the type of what it reads back."""

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): writes files and evaluates."""
        return rank() == 0

    @property
    def world_size(self) -> int:
        return world_size()

    def device_for(self, spec: Spec) -> str:
        """--device, else the spec's `parallel.device` when set, else the run's automatic choice; settings
        that need a GPU (bf16/fp16 autocast, flash attention, FSDP CPU offload) are refused elsewhere."""
        from unlearnspec.train.device import check_device_support
        from unlearnspec.train.device import resolve_device as resolve

        wanted = spec.parallel.device if spec.parallel is not None else None
        device = resolve(wanted) if not self.device_requested and wanted not in (None, "auto") else resolve(self.device)
        check_device_support(spec, device)
        return str(device)

    def include_paths(self, spec_path: Path) -> list[Path]:
        return self.assets.include_paths(spec_path, toy=self.toy)

    def task(self, description: str, total: Optional[int]) -> Optional[TaskID]:
        return self.progress.add_task(description, total=total) if self.progress is not None else None

    def advance(self, task: Optional[TaskID], completed: float, total: Optional[float] = None) -> None:
        """Move a bar `task` made (None: no display; `total` None keeps the bar's total)."""
        if task is not None and self.progress is not None:
            self.progress.update(task, completed=completed, total=total)

    def done(self, task: Optional[TaskID]) -> None:
        if task is not None and self.progress is not None:
            self.progress.remove_task(task)


def resolve_device(requested: Optional[str]) -> str:
    """`cuda:LOCAL_RANK` when a GPU is available, else `cpu`; an explicit request is checked."""
    from unlearnspec.train.device import resolve_device as resolve

    return str(resolve(requested))


def toy_context(
    profile_path: Path,
    device: str = "cpu",
    device_requested: bool = False,
    say: Say = print,
    progress: Optional[Progress] = None,
) -> RunContext:
    """A context whose assets resolve toy names through the profile's world (threads set from the profile)."""
    from unlearnspec.spec.profile import Profile, load_profile

    profile = load_profile(profile_path)
    if not isinstance(profile, Profile):
        from unlearnspec.errors import UserError

        raise UserError.one(
            str(profile_path), "this is a toy-world config, not a mapping profile; use specs/profiles/toy.yaml."
        )
    if profile.threads is not None:
        import torch

        torch.set_num_threads(profile.threads)
    world = (profile_path.parent / profile.world) if profile.world else None
    return RunContext(
        assets=Assets(world_config=world, log=say),
        profile=profile_path,
        profile_name=profile.name,
        device=device,
        device_requested=device_requested,
        toy=True,
        say=say,
        progress=progress,
    )

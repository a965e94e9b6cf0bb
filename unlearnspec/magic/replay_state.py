"""The state bookkeeping of a reverse pass: loading kept states (theta and the optimizer's tensors) onto the
model's device, moving them to and from host RAM, and counting the parameter-sized copies held at once."""

from __future__ import annotations

from typing import Any

import torch

from unlearnspec.magic.replay_stats import ReplayStats
from unlearnspec.magic.trajectory import Trajectory, state_key

State = list[list[torch.Tensor]]
"""theta followed by the optimizer's tensors (`OptimizerAdjoint.state_names`), each a list ordered like the names."""


class StateKeeping:
    """Mixed into `reverse._Replay`, which sets every attribute named here."""

    traj: Trajectory
    stats: ReplayStats
    names: list[str]
    device: torch.device
    per_state: int
    rule: Any
    _live: int
    _held: set[int]

    def _hold(self, n: int = 1) -> None:
        """Count n more live states; the peak is in parameter-sized copies (theta, m, v each count)."""
        self._live += n
        copies = (self.traj.store.ram_copies + self._live) * self.per_state
        self.stats.peak_state_copies = max(self.stats.peak_state_copies, copies)

    def _release(self, n: int = 1) -> None:
        self._live -= n

    def load(self, step: int, theta_only: bool = False, to_device: bool = True) -> State:
        """The kept state of `step` (theta, then the optimizer's tensors), moved to the model's device
        unless `to_device` is False."""
        stored = self.traj.store.get(step)
        keys = [self.names] + (
            [] if theta_only else [[state_key(s, n) for n in self.names] for s in self.rule.state_names]
        )
        missing = [k for ks in keys for k in ks if k not in stored]
        if missing:
            raise KeyError(f"state of step {step} lacks {missing[:3]}")
        state = [[stored[k] for k in ks] for ks in keys]
        moved = to_device and bool(state[0]) and state[0][0].device != self.device  # kept in host RAM or on disk
        if moved:
            state = self.on_device(state)
        if moved or not getattr(self.traj.store, "keeps_in_ram", False):
            self._hold()  # a new copy, released by unload
            self._held.add(step)
        return state

    def unload(self, step: int) -> None:
        if step in self._held:
            self._held.discard(step)
            self._release()

    def on_device(self, state: State) -> State:
        return [[x.to(self.device) for x in xs] for xs in state]

    def to_host(self, state: State) -> State:
        return [[x.cpu() for x in xs] for xs in state]

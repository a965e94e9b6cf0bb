"""NPO's reference log-probs: the frozen base model's per-token log-probs of the forget grid, computed once and cached.

The file is a float32 tensor [N, S] in target alignment (column t: log p_ref(token t | tokens < t); 0 where t is no
target), read back with torch.load(weights_only=True) after a size check, never unpickled. The cache entry's key is
a sha256 of the grid fingerprint and everything that changes the numbers (model identity, dtype, attention kernel,
autocast, device kind, log-prob path, library versions), so every sweep point and every spec on the same forget
grid and model shares one computation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from unlearnspec.data import GridLike
from unlearnspec.errors import UserError
from unlearnspec.safeio import check_tensor_storage, read_json, write_json, write_with
from unlearnspec.train.objectives.base import targets, token_logprobs

REFERENCE_DIR = "reference_logprobs"
"""The cache's subfolder of reference log-prob entries (one folder per key)."""
TENSOR_FILE = "ref_logprobs.pt"
SIDECAR_FILE = "ref_logprobs.json"
KIND = "unlearnspec-npo-reference-logprobs-v1"


@dataclass
class ReferenceCache:
    """Gets the reference log-probs of one forget grid: from the cache when a valid entry exists, else computed
    with the model (all ranks compute; only the main process writes, atomically)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    fingerprint: str
    key_parts: dict[str, Any]
    """What changes the numbers besides the grid (model id, dtype, attention, precision, device kind, versions)."""
    root: Path
    """The tool's cache folder (its `reference_logprobs/` subfolder holds the entries)."""
    batch_size: int
    is_main: bool = True
    say: Callable[[str], None] = print
    autocast: Optional[torch.dtype] = None
    status: str = field(default="", init=False)

    @property
    def payload(self) -> dict[str, Any]:
        n, s = self.input_ids.shape
        return {"kind": KIND, "data_fingerprint": self.fingerprint, "rows": int(n), "columns": int(s), **self.key_parts}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.payload, sort_keys=True).encode()).hexdigest()[:24]

    @property
    def folder(self) -> Path:
        return self.root / REFERENCE_DIR / self.key

    def get(self, model: Any, fused: bool) -> torch.Tensor:
        cached = self.load()
        if cached is not None:
            self.status = "loaded"
            return cached
        self.say(
            f"[npo] reference log-probs of {self.input_ids.shape[0]} forget rows: computing once (cache {self.key})"
        )
        ref = compute_reference(
            model, self, self.batch_size, fused, self.autocast
        )  # the cache holds the grid's tensors
        self.status = "computed"
        if self.is_main:
            self.store(ref)
        return ref

    def load(self) -> Optional[torch.Tensor]:
        path, side = self.folder / TENSOR_FILE, self.folder / SIDECAR_FILE
        if self.folder.is_symlink() or path.is_symlink():
            raise self._damaged(f"{self.folder} is a symlink; the cache entry must be a plain folder")
        if not path.is_file() or not side.is_file():
            return None
        recorded = read_json(
            side, "reference sidecar", "missing", f"Delete the folder {self.folder}; it is recomputed."
        )
        if recorded != self.payload:
            raise self._damaged("its sidecar does not describe this grid and model")
        n, s = self.input_ids.shape
        if path.stat().st_size > 4 * n * s + 65_536:  # bounded before torch allocates anything (zip overhead ~2 KB)
            raise self._damaged(f"it is larger than a float32 [{n}, {s}] tensor")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Detected pickle protocol 4": noise for the user
                tensor = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, Exception) as exc:  # noqa: BLE001 - untrusted bytes: any parse failure
            raise self._damaged(f"it is not a plain tensor file ({type(exc).__name__})") from None
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32 or tuple(tensor.shape) != (n, s):
            raise self._damaged(f"it does not hold a float32 [{n}, {s}] tensor")
        check_tensor_storage(tensor, path)  # an expanded view of a few bytes is refused before any use
        valid = targets(self.labels)
        if (
            not bool(torch.isfinite(tensor).all())
            or bool((tensor[valid] > 0).any())
            or bool((tensor[~valid] != 0).any())
        ):
            raise self._damaged("its values are not log-probabilities (finite, <= 0 at targets, 0 elsewhere)")
        return tensor

    def store(self, ref: torch.Tensor) -> None:
        tensor = ref.contiguous().cpu()
        write_json(self.folder / SIDECAR_FILE, self.payload, root=self.folder.parent)
        # the tensor last: a sidecar alone is never read as an entry
        write_with(self.folder / TENSOR_FILE, lambda fh: torch.save(tensor, fh), root=self.folder.parent)

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "file": str(self.folder / TENSOR_FILE),
            "status": self.status,
            "data_fingerprint": self.fingerprint,
        }

    def _damaged(self, why: str) -> UserError:
        return UserError.one(
            str(self.folder / TENSOR_FILE),
            f"the cached NPO reference log-probs cannot be used: {why}. "
            f"Delete the folder {self.folder} (the tool made it); the next run recomputes it.",
        )


@torch.no_grad()
def compute_reference(
    model: Any, grid: GridLike, batch_size: int, fused: bool, autocast: Optional[torch.dtype] = None
) -> torch.Tensor:
    """log p_ref(token t | < t) of every grid row [N, S] (float32, CPU, target alignment) with the model as it is
    (eval mode, LoRA adapters disabled), in batches of `batch_size` rows on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    no_adapter = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    input_ids, attention_mask, labels = grid.input_ids, grid.attention_mask, grid.labels
    out = torch.zeros(input_ids.shape, dtype=torch.float32)
    try:
        with no_adapter, amp:
            for start in range(0, input_ids.shape[0], batch_size):
                rows = slice(start, start + batch_size)
                lp = token_logprobs(
                    model, input_ids[rows].to(device), attention_mask[rows].to(device), labels[rows].to(device), fused
                )
                out[rows, 1:] = lp.float().cpu()
    finally:
        model.train(was_training)
    return out

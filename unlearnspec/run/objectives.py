"""A point's training objective, put together from its spec: the retain grid (when the objective has a retain term),
the NPO reference cache, and the record of both (objective.json in the point's folder)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from unlearnspec.records import JsonDict
from unlearnspec.run.context import Prepared, RunContext
from unlearnspec.spec.assets import package_version
from unlearnspec.spec.schema import Spec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from unlearnspec.data import TokenGrid
    from unlearnspec.train.objectives import Objective

OBJECTIVE_FILE = "objective.json"
"""What a point of an unlearning objective records: the objective, the forget and retain grids' fingerprints, the
reference cache entry (NPO) and the trained parameters (RMU)."""


def retain_grid(
    spec: Spec, spec_path: Path, tokenizer: PreTrainedTokenizerBase, ctx: RunContext
) -> Optional[TokenGrid]:
    """The retain rows [N_r, max_seq_len] of `data.retain` (None without one), built as the forget grid is."""
    if spec.data.retain is None:
        return None
    from unlearnspec.data import build_grid, load_texts

    texts, rows = load_texts(spec.data.retain, spec_path, tokenizer, ctx.assets, loc="data.retain")
    grid = build_grid(
        texts, tokenizer, spec.data.max_seq_len, ctx.assets.tokenizer_id(spec.model), spec.data.append_eos, rows
    )
    ctx.say(
        f"[data] {spec.name}: retain set {grid.input_ids.shape[0]} rows x {spec.data.max_seq_len} "
        f"(fingerprint {grid.fingerprint[:12]})"
    )
    return grid


def _model_files(name_or_path: Optional[str]) -> Optional[str]:
    """A local model folder's identity: names, sizes and modification times of its files (not GBs of contents)."""
    if name_or_path is None or not Path(name_or_path).is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in Path(name_or_path).rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(name_or_path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def point_objective(spec: Spec, prep: Prepared, ctx: RunContext, device: str, fused: bool) -> Optional[Objective]:
    """The objective object of a point (None for `weighted`: the trainer's own loss)."""
    if spec.objective.name == "weighted":
        return None
    import torch

    from unlearnspec.spec.assets import cache_root
    from unlearnspec.train.objectives import OBJECTIVES, ReferenceCache, RetainRows, build_objective

    retain = None
    if prep.retain is not None:
        g = prep.retain
        retain = RetainRows(g.input_ids, g.attention_mask, g.labels, g.fingerprint)
    reference = None
    if OBJECTIVES[spec.objective.name].needs_reference:
        amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.training.precision]
        parts = {
            "model": ctx.assets.model_id(spec.model),
            "model_files": _model_files(spec.model.name_or_path),
            "dtype": spec.model.dtype,
            "attn": spec.model.attn_implementation,
            "precision": spec.training.precision,
            "device": torch.device(device).type,
            "logprobs": "fused_head" if fused else "logits",
            "versions": {p: package_version(p) for p in ("torch", "transformers", "trl")},
        }
        g = prep.grid
        reference = ReferenceCache(
            g.input_ids,
            g.attention_mask,
            g.labels,
            g.fingerprint,
            parts,
            cache_root(),
            spec.training.batch_size,
            is_main=ctx.is_main,
            say=ctx.say,
            autocast=amp,
        )
    return build_objective(spec.objective, spec.loss.normalizer, retain, fused, reference)


def objective_record(objective: Objective, prep: Prepared) -> JsonDict:
    """objective.json: the objective's own description plus the forget grid it trained on."""
    out = objective.describe()
    out["forget"] = {"rows": int(prep.grid.input_ids.shape[0]), "fingerprint": prep.grid.fingerprint}
    return out

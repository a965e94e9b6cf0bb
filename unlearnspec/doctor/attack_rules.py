"""D17 (no-attack): a spec that claims unlearning (an unlearning objective, or gradient ascent on some tokens)
without a relearning attack. A drop in hazard accuracy may be hidden knowledge rather than removed knowledge;
published unlearning results have recovered within a few fine-tuning steps (docs/objectives/attack.md)."""

from __future__ import annotations

from typing import Any, Iterator, Optional

from unlearnspec.doctor.context import Entry
from unlearnspec.doctor.findings import Finding


def unlearning_claim(spec: Any) -> Optional[str]:
    """Why the spec unlearns (in words naming the fields), or None when it only trains or masks."""
    if spec.objective.name != "weighted":
        return f"objective: {spec.objective.name}"
    tokens = spec.tokens
    if tokens.mode in ("value_weighted", "sign"):
        return f"tokens.mode: {tokens.mode} (negative weights on proponent tokens: gradient ascent)"
    if tokens.mode == "top" and tokens.selected_weight() < 0:
        return f"tokens.selected: {tokens.selected} (weight {tokens.selected_weight():g}: gradient ascent on the selected tokens)"
    return None


def missing_attack(entry: Entry) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None or spec.magic is not None or spec.attack is not None:
        return
    claim = unlearning_claim(spec)
    if claim is None:
        return
    yield Finding(
        "D17",
        "warning",
        entry.shown,
        "the spec unlearns but runs no relearning attack: a hazard drop may be hidden, not removed, knowledge",
        (claim, "attack: unset"),
        "Add an `attack:` section (held-out forget rows, step counts, lr, optimizer), e.g. as in "
        "specs/comparators/grad_diff.yaml; reports then show the hazard acc after each step count and the recovery "
        "fraction (docs/objectives/attack.md).",
    )

"""Can MAGIC rescore in an experiment's own regime? Asked of the MAGIC spec validation itself (D3's advice).

D3 advises "rescore in the steered regime" only where that is possible. The answer comes from validating the
experiment turned into a score spec (its regime, a single LR, all tokens, normalizer `valid`, the producer's
`magic` section) with the schema's own MAGIC rules, so whatever those rules refuse (SGD momentum, bf16,
dropout, FSDP, ...) is named here, now and after the rules change. Each refusal comes with the smallest
change that MAGIC accepts: the nearest valid design. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from pydantic import ValidationError

from unlearnspec.spec import Spec
from unlearnspec.spec.base import SpecRuleError


@dataclass(frozen=True)
class Refusal:
    """One regime setting MAGIC cannot replay, why, and the nearest setting it can."""

    field: str
    """The refused field and its value in the steered run, e.g. `training.optimizer.momentum: 0.9`."""
    reason: str
    """The MAGIC rule's own message."""
    nearest: str
    """The nearest design MAGIC accepts, e.g. `momentum: 0` (or Adam/AdamW)."""


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    return apply


def _fp32(data: dict[str, Any]) -> None:
    data["model"]["dtype"] = "float32"
    data["training"]["precision"] = "fp32"


def _ddp(data: dict[str, Any]) -> None:
    data["parallel"]["strategy"] = "ddp"
    data["parallel"].pop("fsdp", None)  # FSDP settings are refused without FSDP


NEAREST: dict[str, tuple[str, str, Callable[[dict[str, Any]], None]]] = {
    "training.optimizer.momentum": (
        "training.optimizer.momentum",
        "`momentum: 0` (plain SGD), or Adam/AdamW, which MAGIC replays exactly (their first moment is the momentum)",
        _set(("training", "optimizer", "momentum"), 0.0),
    ),
    "model.dtype": ("model.dtype+training.precision", "`model.dtype: float32` and `training.precision: fp32`", _fp32),
    "training.dropout": ("training.dropout", "`dropout: 0`", _set(("training", "dropout"), 0.0)),
    "lora.dropout": ("lora.dropout", "`lora.dropout: 0`", _set(("lora", "dropout"), 0.0)),
    "parallel.strategy": (
        "parallel.strategy",
        "`parallel.strategy: ddp` (the same experiment, every rank holding the model)",
        _ddp,
    ),
}
"""For each regime field a MAGIC rule may refuse: how to name it, the nearest design, and the edit that makes it."""


def _value(data: dict[str, Any], loc: str) -> Any:
    node: Any = data
    for key in loc.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _as_score_spec(spec: Spec, magic: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The experiment as a score run: what MAGIC would replay to rescore it (one LR: the regime, not the sweep)."""
    data = spec.model_dump(mode="json", exclude_none=True)
    for key in ("scores", "control", "role", "eval", "baseline", "attack"):  # evaluation only, not the regime
        data.pop(key, None)
    data["magic"] = magic or {"query": {"task": "query"}}
    data["tokens"] = {"mode": "all"}
    data["loss"] = {**data.get("loss", {}), "normalizer": "valid"}
    data["training"]["lr"] = spec.training.lrs[0]
    data.setdefault("parallel", {})
    return data


def rescore_refusals(spec: Spec, magic: Optional[dict[str, Any]] = None) -> list[Refusal]:
    """What the MAGIC rules refuse in `spec`'s regime, one Refusal per field, in the order the rules check
    them (each refusal's nearest design applied before asking again). Empty: MAGIC can rescore it. `magic`:
    the producer's `magic` section (its query), else a placeholder query."""
    data = _as_score_spec(spec, magic)
    found: list[Refusal] = []
    for _ in range(len(NEAREST) + 1):
        try:
            Spec.model_validate(data)
            return found
        except ValidationError as exc:
            rule = next(
                (
                    (tuple(str(p) for p in e["loc"]), e["ctx"]["error"])
                    for e in exc.errors()
                    if isinstance((e.get("ctx") or {}).get("error"), SpecRuleError)
                ),
                None,
            )
        if rule is None:
            return found  # not a MAGIC rule (e.g. a field this rewrite cannot express): nothing more to say
        loc = ".".join((*rule[0], *map(str, rule[1].loc)))
        known = NEAREST.get(loc)
        if known is None:
            found.append(Refusal(loc, rule[1].message, "none known to unlearnspec"))
            return found
        name, nearest, apply = known
        shown = ", ".join(f"{part}: {_value(data, part)}" for part in name.split("+"))
        found.append(Refusal(shown, rule[1].message, nearest))
        apply(data)
    return found


def rescore_advice(refusals: list[Refusal]) -> str:
    """D3's fix sentence for a regime MAGIC cannot replay: say no exact rescoring exists, and the nearest design."""
    why = "; ".join(f"{r.field} ({r.reason.rstrip('.')})" for r in refusals)
    nearest = "; ".join(r.nearest for r in refusals)
    return (
        f"Rescoring in the steered regime is not possible: MAGIC refuses {why}. No exact metagradient exists for this "
        f"run as written. Nearest valid design: change the experiment (and its control) to {nearest}, then rescore in "
        "that regime and steer it there."
    )

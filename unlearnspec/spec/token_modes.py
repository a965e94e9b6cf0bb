"""The token rule modes (`tokens.mode`) and what each reads: the one table the spec's checks, the unlearning
objectives' check and the weight builder (`scores.weights.WEIGHTS`, one function per mode) consult.
A new mode is a name here, its traits, and its weight function there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TokenMode = Literal["all", "value_weighted", "sign", "where", "top"]


@dataclass(frozen=True)
class ModeTraits:
    """What a mode reads from its rule and what kind of weights it gives."""

    reads_source: bool
    """Needs `source` (a score source to read or rank); refused when given to a mode that does not read it."""
    where: Literal["no", "optional", "required"]
    """Whether `where` is read."""
    signed: bool
    """Gives weights of both signs (the sign carries the direction): an unlearning objective, which reads only
    |weight|, refuses it."""
    nothing_selected: str
    """The fix when the rule gives every valid token weight 0 (`{where}` and `{source}` are filled in)."""


TOKEN_MODES: dict[TokenMode, ModeTraits] = {
    "all": ModeTraits(False, "no", False, "every weight is 0. Check the rule and its scores"),
    "value_weighted": ModeTraits(True, "no", True, "every weight is 0. Check the rule and its scores"),
    "sign": ModeTraits(
        True,
        "no",
        True,
        "every score of {source!r} is 0 there, so sign() is 0. Check the score file (a failed or empty run?)",
    ),
    "where": ModeTraits(
        False,
        "required",
        False,
        "`where: {where}` is false on every one of them. Widen the condition "
        "(check its threshold against the scores' range, e.g. with `unlearnspec doctor`)",
    ),
    "top": ModeTraits(
        True,
        "optional",
        False,
        "both `selected` and `rest` weigh 0. Give the selected tokens a nonzero "
        "weight (`ascend`, `descend` or a number)",
    ),
}

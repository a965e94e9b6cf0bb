"""What a `tokens.mode: top` rule does to the token shares the doctor reads, from the spec alone.

`top` selects k tokens (or `fraction` of the valid target tokens) by rank; the valid-token count V is known
only once the grid is tokenized, so at doctor time `k / V` is unknown. These helpers say what is known:
- the selected share (nonzero weight, the `selected` normalizer's count; rule D6): 1 when `rest: descend`,
  `fraction` when given (exact up to rounding), else at least k / (N x (max_seq_len - 1)), a bound;
- the changed share (weight moved off the score run's 1; rule D11): exact given V, and without V whenever
  both groups change (then every valid token changes) or `fraction` is given.
Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from unlearnspec.spec import Spec
from unlearnspec.spec.sections import TokenRuleSpec, top_count


@dataclass(frozen=True)
class SelectedShare:
    """Share of valid tokens with nonzero weight under a `top` rule, as far as the spec tells."""

    fraction: float
    """The share, or its lower bound when `exact` is False."""
    exact: bool
    """True when the spec fixes the share (`rest: descend`, or `fraction`); False for a bound from `k`."""
    text: str
    """Where the number comes from, for a finding's evidence."""


def top_selected_share(spec: Spec) -> SelectedShare:
    """The selected share of the `top` rule of `spec` (mode must be `top`); see the module docstring."""
    rule = spec.tokens
    assert rule.mode == "top"
    if rule.rest_weight() != 0.0:
        return SelectedShare(1.0, True, "every valid token keeps a nonzero weight (`rest: descend`)")
    if rule.fraction is not None:
        return SelectedShare(rule.fraction, True, f"selected fraction {100 * rule.fraction:g}% set by `tokens.fraction` "
                             "(exact up to rounding to whole tokens)")
    bound = spec.data.select.count * max(spec.data.max_seq_len - 1, 1)
    k = rule.k or 1
    return SelectedShare(min(k / bound, 1.0), False,
                         f"`tokens.k: {k}` of the valid target tokens, a count known only once the grid is tokenized "
                         f"(at most N x (max_seq_len - 1) = {bound:,}): the selected fraction is at least {100 * k / bound:.3g}%, "
                         "so the factor below is an upper bound (set `fraction` to fix the share)")


def _changes(weight: float) -> bool:
    return weight != 1.0


def top_changed_share(rule: TokenRuleSpec, valid: Optional[int]) -> Optional[tuple[float, str]]:
    """Share of valid tokens whose weight a `top` rule moves off 1 (masked, flipped or rescaled), with its
    reason; `valid` is the measured count of valid tokens (None when not run). None when it depends on
    the unknown count (`k` given, only one of the two groups changes, not run)."""
    sel_w, rest_w = rule.selected_weight(), rule.rest_weight()
    what = f"`top`: selected tokens get weight {sel_w:g}, the rest {rest_w:g}"
    if _changes(sel_w) and _changes(rest_w):
        return 1.0, f"{what}: every valid token changes"
    if valid:
        share = min(top_count(rule.k, rule.fraction, valid), valid) / valid
    elif rule.fraction is not None:
        share = rule.fraction
    else:
        return None
    if _changes(sel_w):
        return share, f"{what}: {share:.1%} selected"
    return 1.0 - share, f"{what}: {1.0 - share:.1%} not selected"

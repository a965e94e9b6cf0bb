"""What a `tokens.mode: top` rule does to the token shares the doctor reads, from the spec alone.

`top` selects k tokens (or `fraction` of the valid target tokens) by rank; the valid-token count V is known
only once the grid is tokenized, so at doctor time `k / V` is unknown. These helpers say what is known:
- the selected share (nonzero weight, the `selected` normalizer's count; rule D6): 1 when `rest: descend`,
  `fraction` when given (exact up to rounding), else at least k / (N x (max_seq_len - 1)), a bound;
- the ranked share (the tokens the scores pick by rank; rule D11): exact given V or `fraction`. Masking the
  rest is the rule's doing whatever the scores say, so D11 compares the ranked share, not the masked one,
  with the fraction the LDS validated.
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
        return SelectedShare(
            rule.fraction,
            True,
            f"selected fraction {100 * rule.fraction:g}% set by `tokens.fraction` "
            "(exact up to rounding to whole tokens)",
        )
    bound = spec.data.select.count * max(spec.data.max_seq_len - 1, 1)
    k = rule.k or 1
    return SelectedShare(
        min(k / bound, 1.0),
        False,
        f"`tokens.k: {k}` of the valid target tokens, a count known only once the grid is tokenized "
        f"(at most N x (max_seq_len - 1) = {bound:,}): the selected fraction is at least {100 * k / bound:.3g}%, "
        "so the factor below is an upper bound (set `fraction` to fix the share)",
    )


def top_ranked_share(
    rule: TokenRuleSpec, valid: Optional[int], measured: Optional[float] = None
) -> Optional[tuple[float, str]]:
    """Share of valid tokens a `top` rule picks by rank (what its scores decide), with what the rule does to
    them and to the rest; `valid` is the measured count of valid tokens (None when not known), `measured` the
    selected share a run measured (used with `rest: mask`, where it is the picked share). None when the
    share depends on the unknown count (`k` given, no count)."""
    if measured is not None and rule.rest_weight() == 0.0:
        share = measured
    elif valid:
        share = min(top_count(rule.k, rule.fraction, valid), valid) / valid
    elif rule.fraction is not None:
        share = rule.fraction
    else:
        return None
    sel_w, rest_w = rule.selected_weight(), rule.rest_weight()
    if rest_w == 0.0:
        return share, (
            f"`top`: the {100 * share:.3g}% of valid tokens ranked first get weight {sel_w:g} and every other one is masked "
            "(weight 0), so the run trains the selected tokens alone"
        )
    return (
        share,
        f"`top`: the {100 * share:.3g}% of valid tokens ranked first get weight {sel_w:g}, the rest keep weight {rest_w:g}",
    )

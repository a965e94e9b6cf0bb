"""Token rules -> signed per-token weights [N, S], and the statistics of the selection.

Sign convention (the seed's): score = d(query loss)/d(token weight), negative = proponent.
`value_weighted` -> w = score / mean|score| and `sign` -> w = sign(score), so proponents get
negative weights (gradient ascent); `where` -> w = 1 on selected tokens, 0 elsewhere; `top` -> the
k (or fraction) valid tokens ranked first by one source get the `selected` weight, the rest `rest`.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from unlearnspec.data import IGNORE_INDEX
from unlearnspec.errors import UserError
from unlearnspec.records import TokenStats
from unlearnspec.scores.files import valid_targets
from unlearnspec.spec import TokenRuleSpec
from unlearnspec.spec.rules import evaluate, parse_rule
from unlearnspec.spec.sections import Normalizer, top_count
from unlearnspec.spec.token_modes import TOKEN_MODES, TokenMode

Scores = Mapping[str, torch.Tensor]
WeightRule = Callable[[TokenRuleSpec, Scores, torch.Tensor], torch.Tensor]
"""(rule, score sources, valid-target mask [N, S]) -> weights [N, S] (zeroed off the valid targets afterwards)."""


def _source(rule: TokenRuleSpec, scores: Scores) -> torch.Tensor:
    assert rule.source is not None  # the spec requires it for every mode that reads one (spec.token_modes)
    return scores[rule.source]


def _value_weighted(rule: TokenRuleSpec, scores: Scores, valid: torch.Tensor) -> torch.Tensor:
    s = _source(rule, scores)
    scale = s[valid].abs().mean()
    if not scale > 0:
        raise UserError.one(
            f"score source {rule.source!r}", "every valid token has score 0, so value weighting is undefined."
        )
    return s / scale


WEIGHTS: dict[TokenMode, WeightRule] = {
    "all": lambda rule, scores, valid: valid.float(),
    "value_weighted": _value_weighted,
    "sign": lambda rule, scores, valid: torch.sign(_source(rule, scores)),
    "where": lambda rule, scores, valid: evaluate(parse_rule(rule.where or ""), scores).float(),
    "top": lambda rule, scores, valid: top_weights(rule, scores, valid),
}
"""The weight function of every token mode (their traits: `unlearnspec.spec.token_modes.TOKEN_MODES`)."""


def token_weights(rule: TokenRuleSpec, scores: Scores, labels: torch.Tensor) -> torch.Tensor:
    """Signed weights [N, S] (target alignment), zero wherever there is no training target."""
    valid = valid_targets(labels)
    w = WEIGHTS[rule.mode](rule, scores, valid)
    w = w.float().masked_fill(~valid, 0.0)
    if not bool((w != 0).any()):
        raise _nothing_selected(rule, int(valid.sum()))
    return w


def _nothing_selected(rule: TokenRuleSpec, n_valid: int) -> UserError:
    """A rule that gives every valid token weight 0 trains nothing: the run would report the untouched model
    as an effect (and divide by zero selected tokens). Refused before training, with the fix for its mode."""
    if n_valid == 0:
        return UserError.one(
            "data",
            "the token grid has no valid target token (every label is padding), so there is "
            "nothing to train on. Raise data.max_seq_len or choose rows with text.",
            loc="data",
        )
    fix = TOKEN_MODES[rule.mode].nothing_selected.format(where=rule.where, source=rule.source)
    return UserError.one(
        f"token rule (mode: {rule.mode})",
        f"selects none of the {n_valid:,} valid target tokens: {fix}. "
        "Training with all weights 0 would change nothing, and the run would report the untouched model "
        "as a result.",
        loc="tokens.where" if rule.mode == "where" else "tokens",
    )


def top_weights(rule: TokenRuleSpec, scores: Mapping[str, torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """`mode: top`: rank the candidates (valid target tokens passing `where`, if any) by `rule.source`;
    the first `top_count` get the selected weight, every other valid token the rest weight.

    Ties are broken by flat index in the [N, S] grid (row-major: lower row, then lower column first),
    through a stable sort; -0.0 and 0.0 are one value. A count above the candidates is a UserError
    naming k and the counts, never clamped."""
    s = _source(rule, scores)
    candidates = valid.clone()
    if rule.where is not None:
        candidates &= evaluate(parse_rule(rule.where), scores)
    flat = candidates.flatten().nonzero().squeeze(1)  # ascending flat index: the tie order
    n_valid = int(valid.sum())
    k = top_count(rule.k, rule.fraction, n_valid)
    if k > flat.numel():
        given = f"k = {k}" if rule.k is not None else f"fraction {rule.fraction:g} of {n_valid} valid tokens = k = {k}"
        pool = (
            f"{flat.numel()} valid target tokens pass `where: {rule.where}` (of {n_valid} valid)"
            if rule.where
            else f"the grid has {n_valid} valid target tokens"
        )
        raise UserError.one(
            f"token rule (top by {rule.source})",
            f"{given} tokens requested but {pool}. Lower `k` "
            "(or `fraction`), or widen `where`; the count is never clamped silently.",
            loc="tokens.k",
        )
    key = s.flatten()[flat].double() + 0.0  # + 0.0: -0.0 becomes 0.0 (one value, tie-broken by index); double:
    # exact for float32 scores and for `rank_q` ranks beyond 2**24
    if rule.order == "most_positive":
        key = -key + 0.0
    chosen = flat[torch.sort(key, stable=True).indices[:k]]
    w = valid.float() * rule.rest_weight()
    w.view(-1)[chosen] = rule.selected_weight()
    return w


def token_stats(weights: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer) -> TokenStats:
    """Selected-token statistics, and the per-token step relative to an all-tokens `valid` run."""
    valid = labels != IGNORE_INDEX
    valid[:, 0] = False
    w = weights[valid]
    n_valid = int(valid.sum())
    selected = int((w != 0).sum())
    mean_abs = float(w.abs().mean()) if n_valid else 0.0
    mean_abs_sel = float(w[w != 0].abs().mean()) if selected else 0.0
    # Expected divisor per valid token under each normalizer (V = valid tokens of a batch):
    per_valid = {
        "selected": selected / max(n_valid, 1),
        "valid": 1.0,
        "batch_tokens": valid[:, 1:].numel() / max(n_valid, 1) if valid.numel() else 1.0,
        "abs_weight": mean_abs,
    }[normalizer]
    factor = mean_abs_sel / per_valid if per_valid > 0 else float("inf")
    return TokenStats(
        valid_tokens=n_valid,
        selected_tokens=selected,
        selected_fraction=selected / max(n_valid, 1),
        ascending_tokens=int((w < 0).sum()),
        descending_tokens=int((w > 0).sum()),
        mean_abs_weight=mean_abs,
        normalizer=normalizer,
        per_token_lr_factor=factor,
    )

"""D11 (lds): are the scores an experiment is steered by validated by LDS, in the regime it uses them?

A metagradient predicts the effect of an infinitesimal change of one token's weight; an experiment
masks or flips many tokens at once. The score run's linear datamodeling score (`magic.lds`, `unlearnspec
lds`) says whether the prediction holds for dropping `fraction` of the data. Findings, per score source:
- no LDS in the producer's scores.json: warning, naming the command that computes it;
- LDS (Spearman) below `lds_min`: error (a selection built on these scores is not attribution);
- LDS fine: info, stating it (so `doctor` shows the LDS of every score source an experiment reads);
- the experiment changes far more of the tokens' weights than the LDS dropped (`lds_fraction_factor` times
  or more): warning, with both fractions. For a `top` rule the share compared is the one its scores pick by
  rank (k / valid): masking the rest is the rule's doing, which no LDS fraction validates (said as a note).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

from unlearnspec.doctor.context import Entry, Workspace, display
from unlearnspec.doctor.findings import Finding
from unlearnspec.doctor.step_rules import control_valid_tokens
from unlearnspec.doctor.top_share import top_ranked_share

DEFAULT_LDS_MIN = 0.8
"""Default of `doctor --lds-min`: a Spearman LDS below it makes a score-steered selection an error."""
DEFAULT_LDS_FRACTION_FACTOR = 5.0
"""Default of `doctor --lds-fraction-factor`: warn when an experiment changes this many times more of the
tokens than the LDS dropped."""


def _num(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a"


@dataclass(frozen=True)
class Changed:
    """What the experiment changes against the score run, as LDS can compare it."""

    share: float
    """Share of valid tokens whose weight the scores move (masked, flipped, rescaled; a `top` rule: picked by rank)."""
    what: str
    """How, and where the numbers come from."""
    fraction: Optional[float]
    """The `lds --unit token --fraction` that drops as many tokens; None when no dropped fraction matches the change."""
    note: Optional[str] = None
    """What LDS cannot say about this rule (a `top` rule's masked rest, a value-weighted rescaling)."""


def changed_fraction(entry: Entry, ws: Workspace) -> Optional[Changed]:
    """What the experiment changes against the score run's all-ones weights, measured in results.json or the
    recorded reference (a `top` rule: also from the matched control's count of the grid, or `fraction`);
    None when not known."""
    spec = entry.spec
    assert spec is not None
    mode = spec.tokens.mode
    if mode == "value_weighted":
        return Changed(
            1.0,
            "`value_weighted` rescales every token's weight (none is dropped)",
            None,
            "no dropped fraction reproduces a rescaling of every weight: the LDS says whether the scores predict small "
            "drops; the run itself is judged against its control",
        )
    found = ws.results(entry)
    stats: list[Any] = [r.token_stats for r in found[0].runs if r.token_stats is not None] if found else []
    origin = "results.json"
    if not stats:
        ref = ws.reference(entry)
        stats = [ref.token_stats] if ref is not None and ref.token_stats is not None else []
        origin = f"reports/reference/{spec.name}.json"
    if mode == "top":  # the scores decide which tokens are picked; masking the rest is the rule's doing
        valid = getattr(stats[0], "valid_tokens", None) if stats else None
        if not valid and (counted := control_valid_tokens(entry, ws)) is not None:
            valid, origin = counted[0], f"the valid tokens counted by the control {counted[1]}"
        top = top_ranked_share(spec.tokens, valid, stats[0].selected_fraction if stats else None)
        if top is None:
            return None
        note = (
            (
                "masking the rest is the rule's doing, not the scores': no LDS fraction validates a run on the selected "
                "tokens alone (the all-tokens control and a positive control judge it)"
            )
            if spec.tokens.rest_weight() == 0.0
            else None
        )
        return Changed(
            top[0], f"{top[1]} ({origin if valid else 'from the spec'})", top[0] if 0 < top[0] < 1 else None, note
        )
    if not stats:
        return None
    s = stats[0]
    masked = 1.0 - s.selected_fraction
    ascending, valid = (
        getattr(s, "ascending_tokens", 0),
        getattr(s, "valid_tokens", None),
    )  # the reference has no counts
    flipped = ascending / valid if ascending and valid else 0.0
    what = f"{masked:.1%} masked" + (f", {flipped:.1%} flipped to ascent" if flipped else "")
    share = masked + flipped
    return Changed(
        share,
        f"{what} ({origin})",
        share if 0 < share < 1 else None,
        None if share < 1 else "every valid token changes weight: no dropped fraction reproduces that",
    )


def lds_findings(
    entry: Entry, ws: Workspace, lds_min: float = DEFAULT_LDS_MIN, fraction_factor: float = DEFAULT_LDS_FRACTION_FACTOR
) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None or spec.magic is not None or not spec.scores:
        return
    changed = changed_fraction(entry, ws)
    for name, src in sorted(spec.scores.items()):
        sidecar = ws.sidecar(entry, src)
        if sidecar is None:
            continue  # no score file yet: the score-data rules say what is missing
        where = ws.score_dir(entry, src)
        lds = sidecar.get("lds")
        if not isinstance(lds, dict):
            yield Finding(
                "D11",
                "warning",
                entry.shown,
                f"score source `{name}` is not validated by LDS",
                (
                    f"{display(where / 'scores.json')} has no `lds` entry: nothing shows that these scores predict what "
                    "dropping or flipping many tokens does",
                ),
                f"Run `unlearnspec lds {display(where)}` (subsets + 1 retrainings of the score run), or set `magic.lds` "
                "in the score spec.",
            )
            continue
        rho = lds.get("spearman")
        ci = lds.get("spearman_ci95") or [None, None]
        frac, unit, k = lds.get("fraction"), lds.get("unit", "row"), lds.get("subsets")
        measured = (
            f"LDS {_num(rho)} (Spearman, 95% CI {_num(ci[0])}-{_num(ci[1])}; Pearson {_num(lds.get('pearson'))}) "
            f"over {k} subsets of {frac:.0%} {unit}s"
            if isinstance(frac, (int, float))
            else f"LDS {_num(rho)}"
        )
        if not isinstance(rho, (int, float)) or rho < lds_min:
            yield Finding(
                "D11",
                "error",
                entry.shown,
                f"score source `{name}`: the scores do not predict the effect of dropping tokens in this regime",
                (f"{measured} < --lds-min {lds_min:g}", f"scores: {display(where)}"),
                "A selection built on these scores is not attribution. Rescore with a smaller learning rate or fewer "
                "steps (the toy profile maps SGD lr 1e-4 to 0.05 for this reason), and validate at the fraction the "
                "experiment actually changes (`unlearnspec lds DIR --fraction F`).",
            )
            continue
        note = (changed.note,) if changed is not None and changed.note else ()
        yield Finding(
            "D11", "info", entry.shown, f"score source `{name}`: {measured}", (f"scores: {display(where)}", *note), ""
        )
        if changed is not None and isinstance(frac, (int, float)) and changed.share > fraction_factor * frac:
            measure = (
                f"Measure LDS at the experiment's share: `unlearnspec lds {display(where)} --unit token --fraction "
                f"{changed.fraction:.3g}`, or change fewer tokens."
                if changed.fraction is not None
                else "No dropped fraction matches this change; read the run against its matched control (D8, D9), and "
                "prefer a rule that changes fewer tokens where attribution is the claim."
            )
            yield Finding(
                "D11",
                "warning",
                entry.shown,
                f"score source `{name}`: the experiment changes far more tokens than the LDS validated",
                (
                    f"experiment: {changed.share:.1%} of valid tokens change weight by the scores: {changed.what}",
                    f"LDS measured at {frac:.1%} of {unit}s dropped; > {fraction_factor:g}x that is extrapolation",
                    *note,
                ),
                measure,
            )

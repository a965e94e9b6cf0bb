"""D11 (lds): are the scores an experiment is steered by validated by LDS, in the regime it uses them?

A metagradient predicts the effect of an infinitesimal change of one token's weight; an experiment
masks or flips many tokens at once. The score run's linear datamodeling score (`magic.lds`, `unlearnspec
lds`) says whether the prediction holds for dropping `fraction` of the data. Findings, per score source:
- no LDS in the producer's scores.json: warning, naming the command that computes it;
- LDS (Spearman) below `lds_min`: error (a selection built on these scores is not attribution);
- LDS fine: info, stating it (so `doctor` shows the LDS of every score source an experiment reads);
- the experiment changes far more of the tokens' weights than the LDS dropped (`lds_fraction_factor` times
  or more): warning, with both fractions.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from unlearnspec.doctor.context import Entry, Workspace, display
from unlearnspec.doctor.findings import Finding
from unlearnspec.doctor.top_share import top_changed_share

DEFAULT_LDS_MIN = 0.8
"""Default of `doctor --lds-min`: a Spearman LDS below it makes a score-steered selection an error."""
DEFAULT_LDS_FRACTION_FACTOR = 5.0
"""Default of `doctor --lds-fraction-factor`: warn when an experiment changes this many times more of the
tokens than the LDS dropped."""


def _num(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a"


def changed_fraction(entry: Entry, ws: Workspace) -> Optional[tuple[float, str]]:
    """Share of valid tokens whose weight the experiment moves away from the score run's 1 (masked, flipped
    or rescaled), measured in results.json or the recorded reference; None when neither exists."""
    spec = entry.spec
    assert spec is not None
    mode = spec.tokens.mode
    if mode == "value_weighted":
        return 1.0, "`value_weighted` rescales every token's weight"
    found = ws.results(entry)
    stats = [r.token_stats for r in found[0].runs if r.token_stats is not None] if found else []
    origin = "results.json"
    if not stats:
        ref = ws.reference(entry)
        stats = [ref.token_stats] if ref is not None and ref.token_stats is not None else []
        origin = f"reports/reference/{spec.name}.json"
    if mode == "top":  # the rule fixes which weights move (a rescaled `selected` is neither masked nor flipped)
        valid = getattr(stats[0], "valid_tokens", None) if stats else None
        top = top_changed_share(spec.tokens, valid)
        return None if top is None else (top[0], f"{top[1]} ({origin if valid else 'from the spec'})")
    if not stats:
        return None
    s = stats[0]
    masked = 1.0 - s.selected_fraction
    ascending, valid = getattr(s, "ascending_tokens", 0), getattr(s, "valid_tokens", None)  # the reference has no counts
    flipped = ascending / valid if ascending and valid else 0.0
    what = f"{masked:.1%} masked" + (f", {flipped:.1%} flipped to ascent" if flipped else "")
    return masked + flipped, f"{what} ({origin})"


def lds_findings(entry: Entry, ws: Workspace, lds_min: float = DEFAULT_LDS_MIN,
                 fraction_factor: float = DEFAULT_LDS_FRACTION_FACTOR) -> Iterator[Finding]:
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
                "D11", "warning", entry.shown,
                f"score source `{name}` is not validated by LDS",
                (f"{display(where / 'scores.json')} has no `lds` entry: nothing shows that these scores predict what "
                 "dropping or flipping many tokens does",),
                f"Run `unlearnspec lds {display(where)}` (subsets + 1 retrainings of the score run), or set `magic.lds` "
                "in the score spec.",
            )
            continue
        rho = lds.get("spearman")
        ci = lds.get("spearman_ci95") or [None, None]
        frac, unit, k = lds.get("fraction"), lds.get("unit", "row"), lds.get("subsets")
        measured = (f"LDS {_num(rho)} (Spearman, 95% CI {_num(ci[0])}-{_num(ci[1])}; Pearson {_num(lds.get('pearson'))}) "
                    f"over {k} subsets of {frac:.0%} {unit}s" if isinstance(frac, (int, float)) else f"LDS {_num(rho)}")
        if not isinstance(rho, (int, float)) or rho < lds_min:
            yield Finding(
                "D11", "error", entry.shown,
                f"score source `{name}`: the scores do not predict the effect of dropping tokens in this regime",
                (f"{measured} < --lds-min {lds_min:g}", f"scores: {display(where)}"),
                "A selection built on these scores is not attribution. Rescore with a smaller learning rate or fewer "
                "steps (the toy profile maps SGD lr 1e-4 to 0.05 for this reason), and validate at the fraction the "
                "experiment actually changes (`unlearnspec lds DIR --fraction F`).",
            )
            continue
        yield Finding("D11", "info", entry.shown, f"score source `{name}`: {measured}", (f"scores: {display(where)}",), "")
        if changed is not None and isinstance(frac, (int, float)) and changed[0] > fraction_factor * frac:
            yield Finding(
                "D11", "warning", entry.shown,
                f"score source `{name}`: the experiment changes far more tokens than the LDS validated",
                (f"experiment: {changed[0]:.1%} of valid tokens change weight: {changed[1]}",
                 f"LDS measured at {frac:.1%} of {unit}s dropped; > {fraction_factor:g}x that is extrapolation"),
                f"Measure LDS at the experiment's fraction: `unlearnspec lds {display(where)} --unit token --fraction "
                f"{min(changed[0], 0.9):.2f}`, or change fewer tokens.",
            )

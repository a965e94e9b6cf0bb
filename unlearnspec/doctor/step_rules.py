"""D6 (effective-lr-shift): does the token rule's loss normalizer change each token's step against the
all-tokens control at the same LR? Reasoned per optimizer, with one severity rule before and after the run.

The rule scales each step's loss by F = (the control's divisor per token) / (this run's): `selected` divides
by the selected tokens instead of the valid ones, F = 1/fraction.
- SGD (momentum or not): the step is lr x gradient, so each token's step is F times the control's. F above
  `--lr-factor` breaks the same-LR comparison: the fix is `normalizer: valid`, or this run at LR / F.
- Adam/AdamW: the update m/(sqrt(v)+eps) is invariant to a constant loss scale, so F barely changes the step
  (`valid` would not make it the control's: a masked Adam run's lr-sized update is driven by its selected
  tokens whatever the normalizer). What `selected` changes is how steps weigh against each other (each
  step's loss over its own selected count): the direction of the moments, not their size. An `info`, not a
  flaw; except Adam with L2 `weight_decay`, whose decay term is not scaled with the loss: F shifts the
  balance of data gradient and decay (a warning; AdamW decouples the decay).
Severity (SGD): `error` when F is known to exceed the limit (measured in results.json or the recorded
reference, fixed by the spec, or computed from the matched control's measured valid-token count of the
same grid); `warning` when only an estimate or an upper bound exceeds it, saying that the run's measurement
decides by the same threshold. A study that holds a negative control (`role: negative_control`, e.g. ascent
on as many random tokens) taking the same per-token step matches the step shift for every experiment that
shares it: the effect of the selection is read against that control, so D6 is an `info` there. Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

from unlearnspec.doctor.context import Entry, Workspace
from unlearnspec.doctor.findings import Finding
from unlearnspec.doctor.top_share import top_selected_share
from unlearnspec.spec import Spec
from unlearnspec.spec.rules import And, Compare, Expr, Not, Or, parse_rule
from unlearnspec.spec.sections import top_count


def estimate_fraction(expr: Expr) -> float:
    """Rough share of tokens a `where` rule selects: a sign test takes about half, `and` multiplies.
    A `mode: top` rule is not estimated here: it selects a count (k, or `fraction` of the valid tokens)
    whatever its `where` filter keeps, so D6 reads its share from `top_share.top_selected_share`."""
    if isinstance(expr, Compare):
        return {"!=": 1.0, "==": 0.0}.get(expr.op, 0.5) if expr.value == 0 else 0.5
    if isinstance(expr, Not):
        return 1.0 - estimate_fraction(expr.arg)
    if isinstance(expr, And):
        return estimate_fraction(expr.left) * estimate_fraction(expr.right)
    if isinstance(expr, Or):
        a, b = estimate_fraction(expr.left), estimate_fraction(expr.right)
        return a + b - a * b
    raise TypeError(type(expr))


@dataclass(frozen=True)
class StepFactor:
    """F, the per-token loss scale against the control, and how it is known."""

    factor: float
    """F (below 1 when the rule shrinks each token's step)."""
    known: bool
    """True: measured, fixed by the spec or computed from a measured count; False: an estimate or an upper bound."""
    origin: str
    """Where F comes from, for the evidence."""
    bound: bool = False
    """F is an upper bound (a `top` rule's k over the largest possible grid)."""

    @property
    def shift(self) -> float:
        """How far F is from 1, either way (a smaller step breaks the same-LR comparison as much as a larger one)."""
        return max(self.factor, 1.0 / self.factor) if self.factor > 0 else math.inf


def _inverse(fraction: float) -> float:
    return 1.0 / fraction if fraction > 0 else math.inf


def control_valid_tokens(entry: Entry, ws: Workspace) -> Optional[tuple[int, str]]:
    """The valid-token count of this spec's grid, measured by its matched control's run (same model and data)."""
    spec, control = entry.spec, ws.control(entry)
    if spec is None or control is None or control.spec is None:
        return None
    if control.spec.data != spec.data or control.spec.model != spec.model:
        return None
    found = ws.results(control)
    stats = [r.token_stats for r in found[0].runs if r.token_stats is not None] if found else []
    return (stats[0].valid_tokens, control.spec.name) if stats and stats[0].valid_tokens > 0 else None


def step_factor(entry: Entry, ws: Workspace) -> Optional[StepFactor]:
    """F for `entry`: measured when its results (or the recorded reference) exist, else from the spec."""
    spec = entry.spec
    assert spec is not None
    found = ws.results(entry)
    stats = [r.token_stats for r in found[0].runs if r.token_stats is not None] if found else []
    if stats:  # a shift either way breaks the same-LR comparison with the control
        factor = max(
            (s.per_token_lr_factor for s in stats if s.per_token_lr_factor > 0),
            key=lambda x: max(x, 1.0 / x),
            default=1.0,
        )
        fraction = min(s.selected_fraction for s in stats)
        return StepFactor(factor, True, f"selected fraction {100 * fraction:.1f}% measured in results.json")
    if (
        spec.loss.normalizer != "selected"
        or spec.tokens.mode not in ("where", "top")
        or (spec.tokens.mode == "where" and not spec.tokens.where)
    ):
        return None
    ref = ws.reference(entry)
    if ref is not None and ref.token_stats is not None:
        fraction = ref.token_stats.selected_fraction
        return StepFactor(
            _inverse(fraction),
            True,
            f"selected fraction {100 * fraction:.1f}% recorded in reports/reference/{spec.name}.json",
        )
    if spec.tokens.mode == "where":
        fraction = estimate_fraction(parse_rule(spec.tokens.where or ""))
        return StepFactor(
            _inverse(fraction),
            False,
            f"selected fraction ~{100 * fraction:.0f}% ESTIMATED from `{spec.tokens.where}` "
            "(a sign test keeps about half the tokens, each `and` halves it)",
        )
    share = top_selected_share(spec)  # a rank rule fixes a count, not a sign test
    counted = control_valid_tokens(entry, ws) if not share.exact else None
    if counted is not None:
        valid, control = counted
        fraction = min(top_count(spec.tokens.k, spec.tokens.fraction, valid), valid) / valid
        return StepFactor(
            _inverse(fraction),
            True,
            f"`tokens.k: {spec.tokens.k}` of the {valid:,} valid target tokens the matched "
            f"control {control} measured on the same grid (results.json): selected fraction {100 * fraction:.3g}%",
        )
    return StepFactor(_inverse(share.fraction), share.exact, share.text, bound=not share.exact)


def _f_text(f: StepFactor) -> str:
    return f"F = {f.factor:.2f}" + (f" ({f.shift:.2f}x smaller)" if f.factor < 1 else "")


def _sgd(spec: Spec, shown: str, f: StepFactor, limit: float) -> Finding:
    up_to = "up to " if f.bound else ""
    evidence = [
        f"loss.normalizer: {spec.loss.normalizer}; {f.origin}; {_f_text(f)} > --lr-factor {limit:g}",
        "SGD: the step is lr x gradient, so each token's step is F times the all-tokens control's at the same LR",
    ]
    at_lr = f"run this experiment at LR / {f.factor:.3g}"
    if not f.known:
        what = "an upper bound" if f.bound else "an estimate"
        evidence.append(
            f"F is {what}: the run measures it (results.json token_stats), and D6 is an error there if the measured F "
            f"is beyond --lr-factor {limit:g}; to know it now, set `tokens.fraction`, or run the matched control first"
        )
        at_lr = "run this experiment at LR / F once a run has measured F"
    return Finding(
        "D6",
        "error" if f.known else "warning",
        shown,
        f"the token rule changes the per-token SGD step {up_to}x{f.factor:.2f} relative to the all-tokens control at the same LR",
        tuple(evidence),
        f"Set `loss.normalizer: valid` (each token's step equal to the control's at the same LR), or keep the normalizer and {at_lr}, "
        "so its per-token step matches the control's at LR.",
    )


def _adam(spec: Spec, shown: str, f: StepFactor, limit: float) -> Finding:
    opt = spec.training.optimizer
    scale = f"{'up to ' if f.bound else ''}x{f.factor:.2f}"
    evidence = (
        f"loss.normalizer: {spec.loss.normalizer}; {f.origin}; {_f_text(f)}",
        f"{opt.name}: the update m/(sqrt(v)+eps) does not change when every step's loss is scaled by a constant, so F does not "
        "change the step size, and `normalizer: valid` would not make it the control's (a masked Adam run takes lr-sized steps "
        "driven by its selected tokens alone, whatever the normalizer)",
        "what the normalizer changes: each step's loss is divided by that step's own count, so steps with few selected tokens "
        "weigh as much as steps with many; this changes the direction of the moment estimates, not their size",
    )
    if opt.name == "adam" and opt.weight_decay > 0:
        return Finding(
            "D6",
            "warning",
            shown,
            f"the token rule scales the loss {scale} against the control, and `adam` adds its L2 weight decay to the gradient "
            "unscaled: the balance of data gradient and decay differs from the control's",
            evidence
            + (
                f"training.optimizer.weight_decay: {opt.weight_decay:g} (L2 in the gradient): relative to the data gradient "
                f"it is 1/F times the control's",
            ),
            "Use `adamw` (decoupled decay, independent of the loss scale), or `loss.normalizer: valid` (the control's balance).",
        )
    keep = (
        (
            " Keep `selected` where the selected share is small: with `valid` the gradients shrink by the share toward Adam's "
            "eps, which then damps the step."
        )
        if spec.loss.normalizer == "selected"
        else ""
    )
    return Finding(
        "D6",
        "info",
        shown,
        f"the token rule scales the loss {scale} against the control; with {opt.name} this barely changes the step (Adam is "
        "invariant to the loss scale), so the same-LR comparison with the control holds",
        evidence,
        "Nothing to change for the comparison." + keep,
    )


def _same_dose(a: Spec, b: Spec) -> bool:
    """Same per-token step by construction: rank rules fixing the same count, same normalizer, optimizer,
    LR grid and control (a `where` rule's share depends on its scores, so it is never matched by construction)."""
    ta, tb = a.tokens, b.tokens
    return (
        ta.mode == tb.mode == "top"
        and (ta.k, ta.fraction) == (tb.k, tb.fraction)
        and a.loss.normalizer == b.loss.normalizer
        and a.training.optimizer == b.training.optimizer
        and sorted(a.training.lrs) == sorted(b.training.lrs)
        and a.control == b.control
    )


def dose_peers(entry: Entry, peers: list[Entry]) -> list[Entry]:
    """The other checked experiments of `entry`'s study (same control) that take the same per-token step."""
    spec = entry.spec
    assert spec is not None
    return [
        p
        for p in peers
        if p.spec is not None
        and p.spec.magic is None
        and p.path.resolve() != entry.path.resolve()
        and _same_dose(spec, p.spec)
    ]


def _dose_matched(spec: Spec, shown: str, f: StepFactor, limit: float, peers: list[Entry]) -> Optional[Finding]:
    """D6 as an `info` when the study holds a negative control at the same per-token step (or this is one)."""
    negatives = [p for p in peers if p.spec is not None and p.spec.role == "negative_control"]
    evidence = (
        f"loss.normalizer: {spec.loss.normalizer}; {f.origin}; {_f_text(f)} > --lr-factor {limit:g}",
        "SGD: each token's step is F times the all-tokens control's at the same LR",
    )
    if spec.role == "negative_control" and peers:
        names = ", ".join(p.shown for p in peers)
        return Finding(
            "D6",
            "info",
            shown,
            f"this negative control takes a per-token SGD step {'up to ' if f.bound else ''}x{f.factor:.2f} the all-tokens "
            "control's, as do the experiments it is the null for: it measures what that step does without the selection",
            evidence + (f"same token count, normalizer, optimizer and LR grid: {names}",),
            "Nothing to change: read those experiments' effects against this control as well as the all-tokens one.",
        )
    if not negatives:
        return None
    names = ", ".join(p.shown for p in negatives)
    return Finding(
        "D6",
        "info",
        shown,
        f"the token rule changes the per-token SGD step {'up to ' if f.bound else ''}x{f.factor:.2f} against the all-tokens "
        f"control, and the study's negative control {names} takes the same step: it separates the selection from the step",
        evidence + (f"{names}: `role: negative_control`, same token count, normalizer, optimizer and LR grid",),
        f"Nothing to change: read the effect of the selection against {names} at the same LR (the all-tokens control "
        "alone would confound it with the larger step).",
    )


def lr_shift(entry: Entry, ws: Workspace, limit: float, study: Optional[list[Entry]] = None) -> Iterator[Finding]:
    """D6 for `entry`; `study`: the experiments checked in the same call (those sharing its control and its per-token
    step, when one is a negative control, make the shift a matched design)."""
    spec = entry.spec
    if spec is None or spec.magic is not None:
        return
    f = step_factor(entry, ws)
    if f is None or f.shift <= limit:
        return
    if spec.training.optimizer.name != "sgd":
        yield _adam(spec, entry.shown, f, limit)
        return
    matched = _dose_matched(spec, entry.shown, f, limit, dose_peers(entry, study or []))
    yield matched if matched is not None else _sgd(spec, entry.shown, f, limit)

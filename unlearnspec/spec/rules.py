"""Safe parser for boolean token-selection expressions such as ``wmdp > 0 and mmlu <= 0``.

A tiny recursive-descent grammar (no ``eval``): comparisons of a score source with a number,
joined by ``and`` / ``or`` / ``not`` and parentheses. A source is a name (``wmdp``: the mean-query
scores), a name and one leaf task (``wmdp.dual_use_virology``: the scores of one leaf task of a
`per: task` query), or an aggregation written ``agg(name)`` with no space before the parenthesis
(``min_q(wmdp) < 0``; `AGGREGATIONS`). An aggregation combines the score matrices s_u of the units of
a source: its questions (suffix ``_q``, a `per: question` producer's per-question scores [Q, N, S]) or
its leaf tasks (suffix ``_t``, a `per: task` producer's leaf files, stacked [T, N, S] in sorted leaf
order). The same three, with the same math, in both families:

- ``min_q(x)`` / ``min_t(x)``: per token, the min over units u of s_u / scale_u, scale_u = mean |s_u|
  over the valid target tokens; units with scale_u = 0 are left out. The strongest per-unit proponent
  score, normalised per unit: most negative = strongest.
- ``rank_q(x)`` / ``rank_t(x)``: per token, the min over units of the token's 0-based rank among u's
  valid tokens sorted ascending by s_u (most negative first, ties by grid position); invalid tokens get
  N x S. Lower = stronger, so `mode: top` with `order: most_negative` on it selects every unit's top-1
  token, then every unit's second, ...: the union of the per-unit top-j lists.
- ``wsum_q(x)`` / ``wsum_t(x)``: sum over u of a_u s_u / scale_u, a_u = max(0, -min over valid tokens
  of s_u) / (the sum of those): units weighted by the strength of their own strongest proponent.

An aggregation reads a whole source (``min_q(wmdp.toxin)`` is refused), never a built-in one, and its
producer must have the matching `magic.query.per` (`AGGREGATION_PER`). Evaluation works on anything that
supports comparison and ``&``/``|``/``~`` (torch tensors, numpy arrays), so this module imports no torch.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op>>=|<=|==|!=|>|<|≤|≥)"
    r"|(?P<agg>(?!(?i:and|or|not)\()[A-Za-z_][A-Za-z0-9_]*\([A-Za-z0-9_.]*\))"
    r"|(?P<paren>[()])|(?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)?)|(?P<bad>\S))"
)
_UNICODE_OPS = {"≤": "<=", "≥": ">="}

MAX_RULE_CHARS = 2000
"""Longest selection expression accepted (the shipped ones are under 40 characters)."""
MAX_RULE_TERMS = 64
"""Most comparisons in one expression."""
MAX_RULE_DEPTH = 32
"""Deepest nesting of parentheses and `not` (the parser and the evaluator recurse once per level)."""


SOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)?$")
"""A score source as the rules name it: `name` or `name.leaf` (one dot); see `source_name_problem` for
the aggregations `agg(name)`."""
_AGGREGATE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\(([^()]*)\)$")

_KINDS = {
    "min": "per token, the min over {u} of s_u / (mean |s_u| over valid tokens)",
    "rank": "per token, the best (lowest) 0-based rank over {u}, each ranking most negative first",
    "wsum": "the sum over {u} of a_u s_u / (mean |s_u|), a_u ~ max(0, -min s_u) (summing to 1)",
}
AGGREGATION_PER: dict[str, str] = {"q": "question", "t": "task"}
"""The `magic.query.per` a producer needs for each family of aggregations, by suffix (`min_q`: question)."""
_UNITS = {"q": "questions", "t": "leaf tasks"}
AGGREGATIONS: dict[str, str] = {
    f"{kind}_{fam}": text.format(u=_UNITS[fam]) for fam in AGGREGATION_PER for kind, text in _KINDS.items()
}
"""The aggregations a rule may name as `agg(source)`: `min_q`, `rank_q`, `wsum_q` over the questions of a
`per: question` producer, `min_t`, `rank_t`, `wsum_t` over the leaf tasks of a `per: task` one (see the
module docstring)."""


def aggregation_parts(agg: str) -> tuple[str, str]:
    """`min_t` -> ("min", "t"): the kind (key of `unlearnspec.scores.aggregate.AGGREGATES`) and the family suffix
    (key of `AGGREGATION_PER`) of an aggregation in `AGGREGATIONS`."""
    kind, _, fam = agg.rpartition("_")
    return kind, fam


def aggregation_units(agg: str) -> str:
    """What aggregation `agg` combines, for messages: "questions" (`_q`) or "leaf tasks" (`_t`)."""
    return _UNITS[aggregation_parts(agg)[1]]


def source_name_problem(name: str) -> str | None:
    """Why `name` is not a score source name (None when it is one): `name`, `name.leaf` or `agg(name)` with
    `agg` one of `AGGREGATIONS` and `name` a plain source (no leaf)."""
    if SOURCE_NAME.match(name):
        return None
    m = _AGGREGATE.match(name)
    if m is None:
        return (
            f"{name[:60]!r} is not `name`, `name.leaf` or `agg(name)` (letters, digits and `_`; an aggregation "
            "has no space before its parenthesis)"
        )
    agg, inner = m.groups()
    if agg not in AGGREGATIONS:
        return (
            f"unknown aggregation {agg[:40]!r}; the aggregations are min_q, rank_q, wsum_q (over the questions of "
            "a `per: question` producer) and min_t, rank_t, wsum_t (over the leaf tasks of a `per: task` one)"
        )
    if not SOURCE_NAME.match(inner):
        return f"{agg}(...) needs a score source name inside the parentheses, e.g. `{agg}(wmdp)` (found {inner[:40]!r})"
    if "." in inner:
        base = inner.partition(".")[0]
        per = AGGREGATION_PER[aggregation_parts(agg)[1]]
        return (
            f"{name!r} aggregates one leaf task; an aggregation reads the per-{per} scores of a whole source "
            f"(a `per: {per}` producer): write `{agg}({base})`"
        )
    return None


def parse_source(name: str) -> tuple[str | None, str, str | None]:
    """(aggregation, source, leaf) of a valid source name: `min_q(wmdp)` -> ("min_q", "wmdp", None),
    `wmdp.toxin` -> (None, "wmdp", "toxin"), `wmdp` -> (None, "wmdp", None)."""
    m = _AGGREGATE.match(name)
    agg, name = (m.group(1), m.group(2)) if m else (None, name)
    base, _, leaf = name.partition(".")
    return agg, base, (leaf or None)


def split_source(name: str) -> tuple[str, str | None]:
    """`wmdp.dual_use_virology` -> ("wmdp", "dual_use_virology"); `wmdp` and `min_q(wmdp)` -> ("wmdp", None)."""
    _, base, leaf = parse_source(name)
    return base, leaf


class RuleSyntaxError(ValueError):
    """An expression that does not parse; the message points at the offending position."""


@dataclass(frozen=True)
class Compare:
    source: str
    op: str
    value: float


@dataclass(frozen=True)
class Not:
    arg: "Expr"


@dataclass(frozen=True)
class And:
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class Or:
    left: "Expr"
    right: "Expr"


Expr = Union[Compare, Not, And, Or]


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    if len(text) > MAX_RULE_CHARS:
        raise RuleSyntaxError(f"the expression is {len(text)} characters long; at most {MAX_RULE_CHARS} are accepted")
    out: list[tuple[str, str, int]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace can fail to match
            break
        kind = m.lastgroup or "bad"
        value = m.group(kind)
        start = m.start(kind)
        if kind == "bad":
            raise RuleSyntaxError(f"unexpected character {value!r} at position {start} in {text!r}")
        if kind == "op":
            value = _UNICODE_OPS.get(value, value)
        if kind == "agg":
            problem = source_name_problem(value)
            if problem is not None:
                raise RuleSyntaxError(f"{problem} (at position {start} in {text[:80]!r})")
            kind = "word"
        if kind == "word" and value.lower() in ("and", "or", "not"):
            kind, value = "kw", value.lower()
        out.append((kind, value, start))
        pos = m.end()
    terms = sum(1 for kind, _, _ in out if kind == "op")
    if terms > MAX_RULE_TERMS:
        raise RuleSyntaxError(f"the expression has {terms} comparisons; at most {MAX_RULE_TERMS} are accepted")
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    def _peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _fail(self, what: str) -> RuleSyntaxError:
        tok = self._peek()
        where = f"at position {tok[2]} ({tok[1]!r})" if tok else "at the end"
        return RuleSyntaxError(f"expected {what} {where} in {self.text!r}")

    def parse(self) -> Expr:
        if not self.toks:
            raise RuleSyntaxError("empty expression")
        expr = self._or()
        if self._peek() is not None:
            raise self._fail("'and', 'or' or the end")
        return expr

    def _or(self) -> Expr:
        left = self._and()
        while (tok := self._peek()) and tok[:2] == ("kw", "or"):
            self.i += 1
            left = Or(left, self._and())
        return left

    def _and(self) -> Expr:
        left = self._not()
        while (tok := self._peek()) and tok[:2] == ("kw", "and"):
            self.i += 1
            left = And(left, self._not())
        return left

    def _not(self) -> Expr:
        tok = self._peek()
        if tok and tok[:2] in (("kw", "not"), ("paren", "(")):
            self.depth += 1
            if self.depth > MAX_RULE_DEPTH:
                raise RuleSyntaxError(
                    f"parentheses and `not` are nested more than {MAX_RULE_DEPTH} deep at position {tok[2]}; simplify the expression"
                )
            try:
                return self._nested(tok)
            finally:
                self.depth -= 1
        return self._compare()

    def _nested(self, tok: tuple[str, str, int]) -> Expr:
        self.i += 1
        if tok[1] == "not":
            return Not(self._not())
        inner = self._or()
        close = self._peek()
        if not close or close[:2] != ("paren", ")"):
            raise self._fail("')'")
        self.i += 1
        return inner

    def _compare(self) -> Expr:
        tok = self._peek()
        if not tok or tok[0] != "word":
            raise self._fail("a score source name")
        self.i += 1
        op = self._peek()
        if not op or op[0] != "op":
            hint = (
                f" (an aggregation has no space before its parenthesis: `{tok[1]}(name)`)"
                if op and op[1] == "("
                else ""
            )
            raise self._fail(f"a comparison operator (> >= < <= == !=){hint}")
        self.i += 1
        num = self._peek()
        if not num or num[0] != "num":
            raise self._fail("a number")
        self.i += 1
        return Compare(tok[1], op[1], float(num[1]))


def parse_rule(text: str) -> Expr:
    """Parse a selection expression; raises RuleSyntaxError with the position on bad input."""
    return _Parser(text).parse()


def sources(expr: Expr) -> set[str]:
    """Names of the score sources an expression reads."""
    if isinstance(expr, Compare):
        return {expr.source}
    if isinstance(expr, Not):
        return sources(expr.arg)
    return sources(expr.left) | sources(expr.right)


def evaluate(expr: Expr, scores: Mapping[str, Any]) -> Any:
    """Evaluate on arrays/tensors: returns a boolean array of the scores' shape."""
    if isinstance(expr, Compare):
        return _OPS[expr.op](scores[expr.source], expr.value)
    if isinstance(expr, Not):
        return ~evaluate(expr.arg, scores)
    if isinstance(expr, And):
        return evaluate(expr.left, scores) & evaluate(expr.right, scores)
    return evaluate(expr.left, scores) | evaluate(expr.right, scores)


def render(expr: Expr) -> str:
    """Canonical text of an expression (fully parenthesised where needed)."""
    if isinstance(expr, Compare):
        return f"{expr.source} {expr.op} {expr.value:g}"
    if isinstance(expr, Not):
        return f"not ({render(expr.arg)})"
    if isinstance(expr, And):
        return f"({render(expr.left)} and {render(expr.right)})"
    return f"({render(expr.left)} or {render(expr.right)})"

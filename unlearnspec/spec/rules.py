"""Safe parser for boolean token-selection expressions such as ``wmdp > 0 and mmlu <= 0``.

A tiny recursive-descent grammar (no ``eval``): comparisons of a score source with a number,
joined by ``and`` / ``or`` / ``not`` and parentheses. A source is a name (``wmdp``: the mean-query
scores) or a name and one leaf task (``wmdp.dual_use_virology``: the scores of one leaf task of a
`per: task` query). Evaluation works on anything that supports
comparison and ``&``/``|``/``~`` (torch tensors, numpy arrays), so this module imports no torch.
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
"""A score source as the rules name it: `name` or `name.leaf` (one dot)."""


def split_source(name: str) -> tuple[str, str | None]:
    """`wmdp.dual_use_virology` -> ("wmdp", "dual_use_virology"); `wmdp` -> ("wmdp", None)."""
    base, _, leaf = name.partition(".")
    return base, (leaf or None)


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
                raise RuleSyntaxError(f"parentheses and `not` are nested more than {MAX_RULE_DEPTH} deep at position {tok[2]}; simplify the expression")
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
            raise self._fail("a comparison operator (> >= < <= == !=)")
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

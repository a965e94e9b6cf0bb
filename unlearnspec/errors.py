"""User-facing errors: one `Problem` per mistake (file, line, field, what is wrong, the fix).

Anything raised as `UserError` is rendered as a short message with exit code 2, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, TypeVar


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input, with enough context to fix it."""

    file: str
    loc: str
    message: str
    line: Optional[int] = None

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.loc}:" if self.loc else ""
        return f"{where}{field} {self.message}"


E = TypeVar("E", bound="UserError")


class UserError(Exception):
    """A user mistake in a spec, profile, override, score file or dataset (exit code 2)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))

    @classmethod
    def one(cls: type[E], file: str, message: str, loc: str = "", line: Optional[int] = None) -> E:
        return cls([Problem(file, loc, message, line)])


def first_line(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` of a library exception, for a one-line UserError
    (safe on an empty message, where `str(exc).splitlines()[0]` would itself raise)."""
    lines = str(exc).strip().splitlines()
    text = lines[0][:limit] if lines else "(no message)"
    return f"{type(exc).__name__}: {text}"

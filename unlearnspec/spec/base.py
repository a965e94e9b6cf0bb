"""Shared pieces of the spec schema: the section base class and the cross-field rule error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

SPEC_SCHEMA_VERSION = 1

class SpecRuleError(ValueError):
    """A cross-field rule failed. `loc` is relative to the model that raised it."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _exactly_one(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) != 1:
        listed = ", ".join(f"`{n}`" for n in names)
        found = ", ".join(f"`{n}`" for n in given) or "none"
        raise SpecRuleError(
            (given[1],) if len(given) > 1 else (),
            f"{what} needs exactly one of {listed} (found: {found}). Keep one and delete the others.",
        )



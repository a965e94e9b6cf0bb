"""Shared pieces of the spec schema: the section base class and the cross-field rule error."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

SPEC_SCHEMA_VERSION = 1

STRICT_CONFIG = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, strict=True, allow_inf_nan=False)
"""Config of every section of a spec, profile or toy-world file. `strict`: no silent coercion
(`batch_size: true` is not 1, `lr: "1e-5"` is not a number, `count: 2.5` is not 2); an int is
still accepted where a float is meant. `allow_inf_nan=False`: `.inf` and `.nan` are refused in
every float field, as a run cannot take them."""

Seed = Annotated[int, Field(ge=0, lt=2**32)]
"""A random seed: numpy, which the HF Trainer seeds too, takes 0 <= seed < 2**32."""


class SpecRuleError(ValueError):
    """A cross-field rule failed. `loc` is relative to the model that raised it."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


class _Section(BaseModel):
    model_config = STRICT_CONFIG


def _exactly_one(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) != 1:
        listed = ", ".join(f"`{n}`" for n in names)
        found = ", ".join(f"`{n}`" for n in given) or "none"
        raise SpecRuleError(
            (given[1],) if len(given) > 1 else (),
            f"{what} needs exactly one of {listed} (found: {found}). Keep one and delete the others.",
        )

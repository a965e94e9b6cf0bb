"""The records the tool writes and reads back, shared by the layers that produce them: the pydantic base and field
types of results.json, an evaluation's task metrics (evaluation) and a weight grid's token statistics (scores)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

JsonValue = Union[None, bool, int, float, str, list["JsonValue"], dict[str, "JsonValue"]]
"""A value as `json.loads` gives it. Read-back files are untrusted: narrow with isinstance before using a field."""
JsonDict = dict[str, JsonValue]
"""A JSON object read back from disk (a state file, a marker, a record)."""

Count = Annotated[int, Field(ge=0, le=2**53)]
"""A count read back (questions, tokens): an int a float holds exactly; `n: 1e400` is a broken file."""


def _inside_folder(value: Optional[str]) -> Optional[str]:
    """A path recorded relative to the results.json folder: it may not leave it (no absolute path, no `..`)."""
    if value is None:
        return value
    parts = PurePosixPath(value).parts
    if not value or value.startswith(("/", "\\")) or ".." in parts or any(ord(c) < 32 for c in value):
        raise ValueError(f"must be a path inside the run folder (relative, no `..`), not {value[:80]!r}")
    return value


InsidePath = Annotated[str, AfterValidator(_inside_folder)]


class Record(BaseModel):
    # NaN and inf are refused unless a field says otherwise: a NaN accuracy or LR is a broken
    # file, not a result (reports would call it "collapsed", diff would call it "within noise").
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


class TaskMetrics(Record):
    """lm-eval numbers of one task (or group)."""

    acc: float = Field(ge=0.0, le=1.0)
    """Accuracy."""
    acc_stderr: Optional[float] = Field(default=None, allow_inf_nan=True)
    """lm-eval's standard error of acc (NaN where lm-eval could not estimate it; reports then use
    the binomial stderr)."""
    acc_norm: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    """Length-normalised accuracy, when the task reports it."""
    acc_norm_stderr: Optional[float] = Field(default=None, allow_inf_nan=True)
    """Standard error of acc_norm."""
    n: Count
    """Number of questions."""


class TokenStats(Record):
    """Selected-token statistics of one run's weight grid (valid = non-pad target tokens)."""

    valid_tokens: Count
    """Valid target tokens in the grid."""
    selected_tokens: Count
    """Valid tokens with nonzero weight."""
    selected_fraction: float = Field(ge=0.0, le=1.0)
    """selected_tokens / valid_tokens."""
    ascending_tokens: Count
    """Tokens with negative weight (gradient ascent)."""
    descending_tokens: Count
    """Tokens with positive weight (gradient descent)."""
    mean_abs_weight: float
    """Mean |weight| over valid tokens."""
    normalizer: str
    """The spec's loss normalizer."""
    per_token_lr_factor: float = Field(allow_inf_nan=True)
    """Per-token step relative to an all-tokens run with normalizer `valid` (1.0 = same; inf when
    the normalizer's divisor is 0)."""


@dataclass(frozen=True)
class HeldOut:
    """The relearning attack's held-out rows (run.attack)'s rows: the grid trained on, and how many selected rows were dropped as shared (`drop`)."""

    grid: Any
    dropped: int = 0

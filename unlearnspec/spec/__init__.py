"""Specs: the schema (pydantic, no torch), the safe `where` parser, YAML io, loading and profiles.

`from unlearnspec.spec import Spec, load_spec` is the public entry point.
"""

from unlearnspec.spec.attack import AttackSpec
from unlearnspec.spec.base import SPEC_SCHEMA_VERSION, SpecRuleError
from unlearnspec.spec.load import dump_spec, load_spec
from unlearnspec.spec.objectives import (
    GradDiffObjective,
    NpoObjective,
    ObjectiveSpec,
    RmuObjective,
    SimNpoObjective,
    WeightedObjective,
)
from unlearnspec.spec.parallel import FsdpSpec, ParallelSpec
from unlearnspec.spec.schema import Spec, json_schema
from unlearnspec.spec.sections import (
    ChatSpec,
    DataSourceSpec,
    DataSpec,
    FilesDataSpec,
    HubDataSpec,
    LossSpec,
    ModelSpec,
    ScoreSourceSpec,
    SelectSpec,
    TokenRuleSpec,
    ToyDataSpec,
)
from unlearnspec.spec.training import (
    BaselineSpec,
    EvalSpec,
    EvalTaskSpec,
    LdsSpec,
    LoraSpec,
    MagicMemorySpec,
    MagicSpec,
    OptimizerSpec,
    OutputSpec,
    QuerySpec,
    RecordedBaseline,
    TrainingSpec,
)

__all__ = [
    "SPEC_SCHEMA_VERSION",
    "SpecRuleError",
    "Spec",
    "json_schema",
    "load_spec",
    "dump_spec",
    "ChatSpec",
    "DataSourceSpec",
    "DataSpec",
    "FilesDataSpec",
    "HubDataSpec",
    "LossSpec",
    "ModelSpec",
    "ScoreSourceSpec",
    "SelectSpec",
    "TokenRuleSpec",
    "ToyDataSpec",
    "BaselineSpec",
    "EvalSpec",
    "EvalTaskSpec",
    "LoraSpec",
    "LdsSpec",
    "MagicMemorySpec",
    "MagicSpec",
    "OptimizerSpec",
    "OutputSpec",
    "QuerySpec",
    "RecordedBaseline",
    "TrainingSpec",
    "FsdpSpec",
    "ParallelSpec",
    "ObjectiveSpec",
    "WeightedObjective",
    "GradDiffObjective",
    "NpoObjective",
    "SimNpoObjective",
    "RmuObjective",
    "AttackSpec",
]

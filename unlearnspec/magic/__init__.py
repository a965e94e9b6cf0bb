"""Exact MAGIC metagradients: record an SGD, Adam or AdamW run (optionally clipped), then score every
training token by d(query loss)/d(token weight) with one reverse pass (Ilyas & Engstrom 2025).
"""

from unlearnspec.magic.attention import REPLAY_ATTENTION, register_replay_attention, replay_attention, replay_mode
from unlearnspec.magic.checks import check_model_replayable, check_optimizer, check_training_args, optimizer_config
from unlearnspec.magic.optimizers import OptimizerConfig
from unlearnspec.magic.output import SCORES_FORMAT_VERSION, ScoreProvenance, scores_metadata, write_scores
from unlearnspec.magic.reference import ReferenceRun, sgd_train, trainable_params, unrolled_query, unrolled_scores
from unlearnspec.magic.replay import GridLike
from unlearnspec.magic.replay_options import ReplayOptions
from unlearnspec.magic.reverse import Query, ReplayStats, magic_scores, query_gradient
from unlearnspec.magic.trajectory import (
    DiskStore,
    RamStore,
    Schedule,
    StateStore,
    Step,
    Trajectory,
    TrajectoryRecorder,
    kept_steps,
    plan_steps,
    split_micro_batches,
)

__all__ = [
    "REPLAY_ATTENTION",
    "SCORES_FORMAT_VERSION",
    "DiskStore",
    "GridLike",
    "OptimizerConfig",
    "Query",
    "RamStore",
    "ReferenceRun",
    "ReplayOptions",
    "ReplayStats",
    "Schedule",
    "ScoreProvenance",
    "StateStore",
    "Step",
    "Trajectory",
    "TrajectoryRecorder",
    "check_model_replayable",
    "check_optimizer",
    "check_training_args",
    "kept_steps",
    "magic_scores",
    "optimizer_config",
    "plan_steps",
    "query_gradient",
    "register_replay_attention",
    "replay_attention",
    "replay_mode",
    "scores_metadata",
    "sgd_train",
    "split_micro_batches",
    "trainable_params",
    "unrolled_query",
    "unrolled_scores",
    "write_scores",
]

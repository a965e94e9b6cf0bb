"""Scores -> weights: score files (safe load, checks, alignment), built-in sources (`random`, a world's producers),
aggregates over questions and leaf tasks, and token rules -> signed per-token weights [N, S]."""

from unlearnspec.scores.files import (
    SCORES_FILE,
    SIDECAR_FILE,
    ScoreFile,
    check_fingerprint,
    check_score_file,
    checked_scores,
    leaf_score_path,
    load_score_file,
    task_block,
    to_target_alignment,
    valid_targets,
)
from unlearnspec.scores.weights import token_stats, token_weights, top_weights

__all__ = [
    "SCORES_FILE",
    "SIDECAR_FILE",
    "ScoreFile",
    "check_fingerprint",
    "check_score_file",
    "checked_scores",
    "leaf_score_path",
    "load_score_file",
    "task_block",
    "to_target_alignment",
    "valid_targets",
    "token_stats",
    "token_weights",
    "top_weights",
]

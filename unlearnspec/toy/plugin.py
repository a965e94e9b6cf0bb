"""The toy world's one registration with the core (`unlearnspec.worlds`): names, assets, the `toy:truth`
producer, the score-quality hook and the numerics pin. Every heavy import waits until a callable runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from unlearnspec import worlds
from unlearnspec.toy.names import DAMAGED_FIX, TOY_CORPORA, TOY_MODELS, TOY_TASKS

if TYPE_CHECKING:
    import torch

    from unlearnspec.data import SpecGrid
    from unlearnspec.magic.output import QueryScores
    from unlearnspec.toy.build import ToyWorld


def _build(config: Optional[Path], log: worlds.Log) -> "ToyWorld":
    from unlearnspec.toy.build import ensure_toy_world

    return ensure_toy_world(config, log=log)


def _key(config: Optional[Path]) -> str:
    from unlearnspec.toy.build import load_config, world_key

    return world_key(load_config(config))


def _check_config(path: Path) -> object:
    from unlearnspec.toy.config import load_world_config

    return load_world_config(path)


def _pin_for_profile(profile: Optional[Path]) -> None:
    from unlearnspec.toy.numerics import pin_for_profile

    pin_for_profile(profile)


def _model_dims() -> tuple[str, dict[str, int]]:
    from unlearnspec.toy.config import load_world_config

    world = (
        Path(__file__).resolve().parents[1] / "profiles" / "toy_world.yaml"
    )  # toy.build.DEFAULT_CONFIG, import-light
    m = load_world_config(world).model
    dims = {
        "layers": m.layers,
        "hidden": m.hidden,
        "heads": m.heads,
        "vocab_size": m.vocab_size,
        "intermediate": m.intermediate,
    }
    return f"toy world ({world.name})", dims


def _truth(on: "SpecGrid", task: Optional[str], retain_task: Optional[str]) -> tuple["torch.Tensor", dict[str, object]]:
    from unlearnspec.toy.truth import DEFAULT_TASK, grid_truth

    truth = grid_truth(on, task or DEFAULT_TASK, retain_task)
    return truth.scores, truth.info


def _score_quality(on: "SpecGrid", scored: "QueryScores", say: worlds.Log = print) -> dict[str, object]:
    from unlearnspec.toy.quality import score_job_quality

    return score_job_quality(on, scored, say)


WORLD = worlds.World(
    name=worlds.TOY,
    plugin="unlearnspec.toy",
    models=TOY_MODELS,
    corpora=TOY_CORPORA,
    tasks=TOY_TASKS,
    build=_build,
    key=_key,
    check_config=_check_config,
    pin_for_profile=_pin_for_profile,
    damaged_fix=DAMAGED_FIX,
    model_dims=_model_dims,
    producers={
        "toy:truth": worlds.Producer(
            "the toy world's ground truth: -1 on the tokens stating a value of a fact `task` asks", _truth
        )
    },
    score_quality=_score_quality,
)


def register() -> None:
    worlds.register(WORLD)

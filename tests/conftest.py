"""Shared test setup: offline, CPU-only, hermetic caches; tiny models are built from configs in code."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def toy_world():
    """The embedded toy world, built once into a stable cache (UNLEARNSPEC_CACHE, default .cache/ in the repo)."""
    os.environ.setdefault("UNLEARNSPEC_CACHE", str(REPO / ".cache" / "unlearnspec"))
    from unlearnspec.toy.build import ensure_toy_world

    return ensure_toy_world()

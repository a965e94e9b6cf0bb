"""Shared test setup: offline, CPU-only, hermetic caches; tiny models are built from configs in code."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One torch thread in every test and subprocess, as the toy world's numerics pin it (`numerics.threads`): a
# float reduction over 2 threads differs in the last bits, so bit-exact checks would otherwise depend on
# whether a toy-world test (whose set-up pins the thread count) happened to run earlier in the session.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The toy world pins CPU numerics (specs/profiles/toy_world.yaml `numerics`); ATen and MKL read the
# pins at torch's first operation, so they are set here, before any test module imports torch.
from unlearnspec.toy.numerics import pin_for_world  # noqa: E402

pin_for_world()

import sys  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `first` (the few longest) go to the front, in their collected order: pytest-xdist hands out
    tests in this order, so a 4-6 minute test starts at once beside the rest instead of running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("first") is None)  # stable: the rest keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`-n N` without an explicit `--dist`: work stealing, so an idle worker takes queued tests from the busy one and
    the long `first` tests do not leave one worker running alone at the end (pytest-xdist's default, `load`, hands
    each worker a fixed share up front). Optional: a run without xdist (`-p no:xdist`) never calls it."""
    if any(arg == "--dist" or arg.startswith("--dist=") for arg in config.invocation_params.args):
        return None  # the user chose a mode
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)


@pytest.fixture(autouse=True)
def _torch_numerics_restored():
    """A toy-world run applies the world's numerics to this process (oneDNN, threads); put them back after
    every test, so a bit-exact test gives the same bits whichever tests ran before it in the same process
    (serially or in a pytest-xdist worker)."""
    torch = sys.modules.get("torch")
    before = (torch.backends.mkldnn.enabled, torch.get_num_threads()) if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is None:
        return
    mkldnn, threads = before if before is not None else (True, int(os.environ["OMP_NUM_THREADS"]))
    torch.backends.mkldnn.enabled = mkldnn
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def toy_world():
    """The embedded toy world in a stable cache (UNLEARNSPEC_CACHE, default .cache/ in the repo): on first use
    installed from the shipped pretrained copy in seconds (tests/test_toy_shipped.py), never pretrained."""
    os.environ.setdefault("UNLEARNSPEC_CACHE", str(REPO / ".cache" / "unlearnspec"))
    from unlearnspec.toy.build import ensure_toy_world

    return ensure_toy_world()

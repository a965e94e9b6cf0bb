"""The library example on the docs' API page (docs/examples/magic_library.py) runs as shown: its scores match
autograd through the unrolled run, and it writes the three score files with the grid shape and fingerprint."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "magic_library.py"


def test_magic_library_example_runs_and_writes_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "max |MAGIC - unrolled autograd|" in out
    files = sorted(p.name for p in (tmp_path / "scores_out").iterdir())
    assert files == ["per_example_scores.pt", "per_token_scores.pt", "scores.json"]
    meta = json.loads((tmp_path / "scores_out" / "scores.json").read_text())
    assert (meta["N"], meta["S"], meta["data_fingerprint"]) == (4, 6, "my-data-v1")

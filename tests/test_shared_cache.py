"""Concurrent runs on one cache (two pytest-xdist workers, two `unlearnspec run` processes, SLURM jobs) make the
same baseline entry: the one that finishes second keeps the first one's folder, and a folder seen mid-replace is
not mistaken for a foreign one."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearnspec.errors import UserError
from unlearnspec.run import rundirs
from unlearnspec.run.rundirs import atomic_dir, check_replaceable


def _entry(final: Path, text: str) -> None:
    with atomic_dir(final, kind="baseline") as tmp:
        (tmp / "eval.json").write_text(text)


def test_a_shared_entry_finished_first_by_another_process_is_kept(tmp_path):
    final = tmp_path / "baselines" / "key"
    _entry(final, "first")
    inode = final.stat().st_ino
    with atomic_dir(final, keep_existing=True, kind="baseline") as tmp:
        (tmp / "eval.json").write_text("second")
    assert final.stat().st_ino == inode and (final / "eval.json").read_text() == "first"
    assert [p.name for p in final.parent.iterdir()] == ["key"]  # the second copy is gone, no temp folder left
    with atomic_dir(final, kind="point") as tmp:  # a job folder (no keep_existing) is still replaced by a rerun
        (tmp / "eval.json").write_text("rerun")
    assert (final / "eval.json").read_text() == "rerun"


def test_a_folder_seen_between_another_process_renames_is_not_foreign(tmp_path, monkeypatch):
    final = tmp_path / "key"
    _entry(final, "x")
    real, calls = rundirs.marker, []

    def marker_mid_replace(folder: Path):  # the first look lands while another process has moved it aside
        calls.append(folder)
        return None if len(calls) == 1 else real(folder)

    monkeypatch.setattr(rundirs, "marker", marker_mid_replace)
    check_replaceable(final)  # no error: looked again
    assert len(calls) >= 2


def test_a_foreign_folder_in_the_way_is_still_refused(tmp_path):
    final = tmp_path / "key"
    final.mkdir()
    (final / "mine.txt").write_text("user data")
    with pytest.raises(UserError, match="not created by unlearnspec is in the way"):
        check_replaceable(final)
    assert (final / "mine.txt").read_text() == "user data"

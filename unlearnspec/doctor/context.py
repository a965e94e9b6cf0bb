"""What doctor reads about a spec: the spec (or why it is invalid), its control and score producers,
score sidecars, results.json in its output dir, and the recorded reference — each loaded once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from unlearnspec.errors import UserError
from unlearnspec.report.reference import ReferenceFile, find_reference
from unlearnspec.run.results import RESULTS_FILE, Results, load_results
from unlearnspec.safeio import read_json
from unlearnspec.spec import ScoreSourceSpec, Spec
from unlearnspec.spec.load import load_spec, resolve_path

SIDECAR_FILE = "scores.json"


def display(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when below it."""
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    return resolved.relative_to(cwd).as_posix() if resolved.is_relative_to(cwd) else str(path)


@dataclass
class Entry:
    """One spec file: the validated spec, or the error that stopped validation."""

    path: Path
    spec: Optional[Spec]
    error: Optional[UserError]

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else self.path.stem

    @property
    def shown(self) -> str:
        return display(self.path)

    @property
    def is_experiment(self) -> bool:
        return self.spec is not None and self.spec.magic is None


class Workspace:
    """Caches specs, sidecars, results and references by resolved path."""

    def __init__(self, profile: Optional[Path] = None) -> None:
        self.profile = profile
        self._specs: dict[Path, Entry] = {}
        self._sidecars: dict[Path, Optional[dict[str, Any]]] = {}
        self._results: dict[Path, Optional[tuple[Results, Path]]] = {}
        self._score_files: dict[tuple[Path, str], Optional[str]] = {}

    def spec(self, path: Path) -> Entry:
        key = path.resolve()
        if key not in self._specs:
            try:
                self._specs[key] = Entry(path, load_spec(path, profile=self.profile, check_refs=False), None)
            except UserError as exc:
                self._specs[key] = Entry(path, None, exc)
        return self._specs[key]

    def control(self, entry: Entry) -> Optional[Entry]:
        if entry.spec is None or entry.spec.control is None:
            return None
        path = resolve_path(entry.path, entry.spec.control)
        return self.spec(path) if path.is_file() else None

    def producer(self, entry: Entry, src: ScoreSourceSpec) -> Optional[Entry]:
        """The spec that produces `src` (None for a file, a built-in source or a missing producer)."""
        if src.produced_by is None or src.built_in:
            return None
        path = resolve_path(entry.path, src.produced_by)
        return self.spec(path) if path.is_file() else None

    def score_dir(self, entry: Entry, src: ScoreSourceSpec) -> Path:
        """The folder of a score source's file: beside a `path:` file, else the producer's output dir
        (call only when `sidecar` found one, so the producer exists)."""
        if src.path is not None:
            return resolve_path(entry.path, src.path).parent
        producer = self.producer(entry, src)
        assert producer is not None and producer.spec is not None
        return resolve_path(producer.path, producer.spec.output.dir)

    def sidecar(self, entry: Entry, src: ScoreSourceSpec) -> Optional[dict[str, Any]]:
        """The producer's `scores.json` (in its output dir), or the one beside a `path` source; None for a
        built-in source (`random`, `toy:truth`: no file, built for the grid at run time)."""
        if src.built_in:
            return None
        if src.path is not None:
            where = resolve_path(entry.path, src.path).parent / SIDECAR_FILE
        else:
            producer = self.producer(entry, src)
            if producer is None or producer.spec is None:
                return None
            where = resolve_path(producer.path, producer.spec.output.dir) / SIDECAR_FILE
        key = where.resolve()
        if key not in self._sidecars:
            try:
                raw = read_json(where, "score sidecar", "missing", "")
                self._sidecars[key] = raw if isinstance(raw, dict) else None
            except UserError:  # a `path:` source's unreadable sidecar is reported by the score-file rule
                self._sidecars[key] = None
        return self._sidecars[key]

    def score_file_problem(self, entry: Entry, src: ScoreSourceSpec, name: str) -> Optional[str]:
        """Why a `path:` score source cannot be used, from the same safe loader and checks as the
        run (missing, a folder, a pickle with code, unreadable, NaN, wrong N, too few columns,
        unknown alignment); None when it would load. Imports torch only for such sources."""
        if src.path is None or entry.spec is None:
            return None
        from unlearnspec.scores import check_score_file, load_score_file

        spec = entry.spec
        key = (entry.path.resolve(), name)
        if key not in self._score_files:
            problem = None
            try:
                sf = load_score_file(resolve_path(entry.path, src.path))
                check_score_file(sf, src, name, spec.data.select.count, spec.data.max_seq_len)
            except UserError as exc:
                problem = "; ".join(p.message for p in exc.problems)
            self._score_files[key] = problem
        return self._score_files[key]

    def results(self, entry: Entry) -> Optional[tuple[Results, Path]]:
        """results.json in the spec's output dir, when a run has written one."""
        if entry.spec is None:
            return None
        folder = resolve_path(entry.path, entry.spec.output.dir)
        key = folder.resolve()
        if key not in self._results:
            found = None
            if (folder / RESULTS_FILE).is_file():
                try:
                    found = (load_results(folder), folder)
                except UserError:
                    found = None
            self._results[key] = found
        return self._results[key]

    def reference(self, entry: Entry) -> Optional[ReferenceFile]:
        if entry.spec is None or self.profile is not None:
            return None  # recorded numbers belong to the real model, not to a profile's world
        try:
            return find_reference(entry.spec.name)
        except UserError:
            return None


def sidecar_number(sidecar: Optional[dict[str, Any]], *keys: str) -> Optional[float]:
    """A sidecar value that must be a number: None when absent or not a finite number (sidecars are
    written by other tools; a string or NaN there must not crash doctor)."""
    value = sidecar_value(sidecar, *keys)
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else number  # shown as written


def sidecar_value(sidecar: Optional[dict[str, Any]], *keys: str) -> Any:
    """First present key of a sidecar (the writer's key names may vary: N/n/rows, S/columns)."""
    if not sidecar:
        return None
    for key in keys:
        node: Any = sidecar
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None

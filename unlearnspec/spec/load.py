"""Loading specs: read, override, map through a profile, validate, cross-check producers and controls.

Relative paths in a spec resolve against the spec's project root. Imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import ValidationError

from unlearnspec.errors import Problem, UserError
from unlearnspec.spec.profile import MappedKnob, apply_profile, load_profile
from unlearnspec.spec.rules import AGGREGATION_PER, aggregation_parts, parse_source, split_source
from unlearnspec.spec.schema import Spec
from unlearnspec.spec.yamlio import _fmt_loc, _line_of, apply_overrides, read_yaml_file, validation_problems

SPEC_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------- paths
def project_root(spec_path: Path) -> Path:
    """Relative paths in a spec resolve against the nearest folder above the spec holding a
    pyproject.toml or .git (the project root); with none, the current directory."""
    for parent in Path(os.path.abspath(spec_path)).parents:
        if (parent / "pyproject.toml").is_file() or (parent / ".git").exists():
            return parent
    return Path.cwd()


def resolve_path(spec_path: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else project_root(spec_path) / p


# --------------------------------------------------------------------------- loading
def require_mapping(data: Any, file: str) -> dict[str, Any]:
    """The document as a mapping: an empty file, a list or a bare value is not a spec."""
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise UserError(
            [
                Problem(
                    file,
                    "",
                    f"the document is {what}; a spec is a YAML mapping of sections (name, model, data, training, ...).",
                )
            ]
        )
    return data


def validate_data(data: Any, node: Optional[yaml.Node], file: str) -> Spec:
    data = require_mapping(data, file)
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise UserError(validation_problems(exc, data, node, file)) from None


def load_spec(
    path: str | Path,
    overrides: Iterable[str] = (),
    profile: Optional[str | Path] = None,
    check_refs: bool = True,
    changes: Optional[list[MappedKnob]] = None,
) -> Spec:
    """Read, override, (optionally) map through a profile, validate and cross-check one spec. `changes`
    receives the knobs the profile changed (see profile.MappedKnob)."""
    path = Path(path)
    data, node = read_yaml_file(path)
    file = str(path)
    data = require_mapping(data, file)  # before overrides and profiles, which index the mapping
    if overrides:
        apply_overrides(data, list(overrides))
        file += " (with --set)"
    if profile is not None:
        data = apply_profile(data, Path(profile), spec_path=path, changes=changes)
        node = None  # lines refer to the original file, not the mapped result
        file += f" (through profile {profile})"
    spec = validate_data(data, node, file)
    if check_refs:
        problems = reference_problems(spec, path, node, profile=Path(profile) if profile is not None else None)
        if problems:
            raise UserError(problems)
    return spec


def _load_ref(path: Path, cache: dict[Path, Spec | UserError], profile: Optional[Path] = None) -> Spec | UserError:
    key = path.resolve()
    if key not in cache:
        try:
            cache[key] = load_spec(path, profile=profile, check_refs=False)
        except UserError as exc:
            cache[key] = exc
    return cache[key]


def reference_problems(
    spec: Spec,
    path: Path,
    node: Optional[yaml.Node] = None,
    cache: Optional[dict[Path, Spec | UserError]] = None,
    profile: Optional[Path] = None,
) -> list[Problem]:
    """Cross-file rules: producers and controls exist and fit this spec."""
    cache = {} if cache is None else cache
    file = str(path)
    problems = []
    for name, src in spec.scores.items():
        if src.path is not None:
            loc: tuple[str, ...] = ("scores", name, "path")
            target = resolve_path(path, src.path)
            if target.is_dir():
                problems.append(
                    Problem(
                        file,
                        _fmt_loc(loc),
                        f"{src.path} is a folder, not a score file (looked at {target}).",
                        _line_of(node, loc),
                    )
                )
            elif not target.is_file():
                problems.append(
                    Problem(
                        file,
                        _fmt_loc(loc),
                        f"the score file {src.path} does not exist (looked at {target}). Fix the path or produce it first.",
                        _line_of(node, loc),
                    )
                )
        if src.produced_by is None or src.built_in:
            continue  # `random` and `toy:truth` are built for the grid when the run prepares it
        loc = ("scores", name, "produced_by")
        target = resolve_path(path, src.produced_by)
        if not target.is_file():
            problems.append(
                Problem(
                    file,
                    _fmt_loc(loc),
                    f"the producing spec {src.produced_by} does not exist (looked at {target}).",
                    _line_of(node, loc),
                )
            )
            continue
        producer = _load_ref(target, cache, profile)
        if isinstance(producer, UserError):
            flag = f" --profile {profile}" if profile is not None else ""
            problems.append(
                Problem(
                    file,
                    _fmt_loc(loc),
                    f"the producing spec {src.produced_by} is invalid; run `unlearnspec validate {src.produced_by}{flag}`.",
                    _line_of(node, loc),
                )
            )
            continue
        if producer.magic is None:
            problems.append(
                Problem(
                    file,
                    _fmt_loc(loc),
                    f"{src.produced_by} has no `magic` section, so it produces no scores.",
                    _line_of(node, loc),
                )
            )
            continue
        world = world_problem(spec, producer, src.produced_by)
        if world is not None:  # columns, N and data of another world are not comparable: say which world to use
            problems.append(Problem(file, _fmt_loc(loc), world, _line_of(node, loc)))
            continue
        leaves = sorted(
            leaf for base, leaf in map(split_source, spec.tokens.referenced_sources()) if base == name and leaf
        )
        if leaves and producer.magic.query.per != "task":
            loc2: tuple[str, ...] = ("tokens",)
            problems.append(
                Problem(
                    file,
                    _fmt_loc(loc2),
                    f"the token rule reads the leaf task scores {', '.join(f'{name}.{x}' for x in leaves)}, but "
                    f"{src.produced_by} writes only mean-query scores (`magic.query.per: mean`). Set `per: task` under "
                    f"magic.query there, or read plain `{name}`.",
                    _line_of(node, loc2),
                )
            )
        for fam, per in AGGREGATION_PER.items():
            aggs = sorted(
                full
                for full in spec.tokens.referenced_sources()
                if (parts := parse_source(full))[0] and parts[1] == name and aggregation_parts(parts[0])[1] == fam
            )
            if aggs and producer.magic.query.per != per:
                loc2 = ("tokens",)
                problems.append(
                    Problem(
                        file,
                        _fmt_loc(loc2),
                        f"the token rule reads the per-{per} aggregate {', '.join(aggs)}, but "
                        f"{src.produced_by} writes no per-{per} scores (`magic.query.per: {producer.magic.query.per}`). "
                        f"Set `per: {per}` under magic.query there and rerun it, or read plain `{name}`.",
                        _line_of(node, loc2),
                    )
                )
        columns = producer.data.max_seq_len
        msl = spec.data.max_seq_len
        if msl > columns:
            loc2 = ("data", "max_seq_len")
            problems.append(
                Problem(
                    file,
                    _fmt_loc(loc2),
                    f"data.max_seq_len={msl} is larger than the {columns} score columns produced by {src.produced_by}; lower max_seq_len or rescore.",
                    _line_of(node, loc2),
                )
            )
        elif msl < columns and not src.truncate_columns:
            loc2 = ("scores", name, "truncate_columns")
            problems.append(
                Problem(
                    file,
                    _fmt_loc(loc2),
                    f"{src.produced_by} produces {columns} columns but data.max_seq_len={msl}; using a prefix of the columns must be explicit: set `truncate_columns: true`.",
                    _line_of(node, loc),
                )
            )
    cycle = producer_cycle(path, spec, cache, profile)
    if cycle is not None:
        problems.append(
            Problem(
                file,
                "scores",
                f"the `produced_by` chain leads back to this spec ({cycle}); a spec cannot depend "
                "on its own scores. Point scores.*.produced_by at a MAGIC spec outside the cycle.",
                _line_of(node, ("scores",)),
            )
        )
    if spec.control is not None:
        loc = ("control",)
        target = resolve_path(path, spec.control)
        if not target.is_file():
            problems.append(
                Problem(
                    file,
                    "control",
                    f"the control spec {spec.control} does not exist (looked at {target}).",
                    _line_of(node, loc),
                )
            )
        elif isinstance(_load_ref(target, cache, profile), UserError):
            problems.append(
                Problem(
                    file,
                    "control",
                    f"the control spec {spec.control} is invalid; run `unlearnspec validate {spec.control}`.",
                    _line_of(node, loc),
                )
            )
    return problems


def _world(spec: Spec) -> str:
    return (
        f"the toy world (`model.toy: {spec.model.toy}`)"
        if spec.model.toy is not None
        else f"the real model {spec.model.name_or_path}"
    )


def world_problem(spec: Spec, producer: Spec, produced_by: str) -> Optional[str]:
    """Why a producer of another world (toy vs real model) cannot feed `spec`, with the fix that fits: a
    toy-world spec reading a real producer is checked through the toy profile (which maps the producer);
    a real spec needs a real producer. None when both run on the same world (always so through a profile,
    which maps both onto its world)."""
    if (spec.model.toy is None) == (producer.model.toy is None):
        return None
    if spec.model.toy is not None:
        return (
            f"this spec is toy-only: it trains on {_world(spec)}, but its producer {produced_by} scores {_world(producer)}, "
            "so its scores belong to another model and token grid. Check it as it runs: validate, doctor and run it with "
            "`--toy` (the toy profile maps the producer onto the toy world), or point produced_by at a toy-world MAGIC "
            "spec (one with `model.toy`)."
        )
    return (
        f"this spec trains {_world(spec)}, but its producer {produced_by} scores {_world(producer)}; toy scores cannot "
        "steer the real model. Point produced_by at a real-model MAGIC spec (one without `model.toy`), or run "
        "both on the toy world with `--toy`."
    )


def producer_cycle(
    start: Path, first: Spec, cache: dict[Path, Spec | UserError], profile: Optional[Path] = None
) -> Optional[str]:
    """The `produced_by` chain from the spec `first` (file `start`) back to itself (`a.yaml -> b.yaml ->
    a.yaml`), or None when following producers never returns to it. Producers are read through `cache`."""
    begin = start.resolve()

    def producers(path: Path) -> list[Path]:
        spec = first if path == begin else _load_ref(path, cache, profile)
        if isinstance(spec, UserError):
            return []
        found = (
            resolve_path(path, s.produced_by)
            for s in spec.scores.values()
            if s.produced_by is not None and not s.built_in
        )
        return [p.resolve() for p in found if p.is_file()]

    seen: set[Path] = set()
    stack: list[tuple[Path, list[Path]]] = [(begin, [begin])]
    while stack:
        path, chain = stack.pop()
        for nxt in producers(path):
            if nxt == begin:
                root = project_root(begin)
                return " -> ".join(_shown(p, root) for p in [*chain, begin])
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*chain, nxt]))
    return None


def _shown(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


MAX_SCAN_FOLDERS = 5_000
"""Most folders walked below one folder argument (`validate /` would otherwise parse every YAML file
of the machine)."""
MAX_SCAN_FILES = 2_000
"""Most .yaml/.yml files taken from one folder argument."""


def _yaml_files_under(folder: Path) -> list[Path] | Problem:
    """The YAML files below `folder`, sorted; hidden folders (.git, .venv, .cache) are skipped and
    symlinked folders not followed. Too large a tree is a Problem asking for the specs folder."""
    found: list[Path] = []
    for walked, (root, dirnames, filenames) in enumerate(os.walk(folder), start=1):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(root) / f for f in filenames if f.endswith(SPEC_SUFFIXES)]
        if walked > MAX_SCAN_FOLDERS or len(found) > MAX_SCAN_FILES:
            what = f"{MAX_SCAN_FOLDERS:,} folders" if walked > MAX_SCAN_FOLDERS else f"{MAX_SCAN_FILES:,} YAML files"
            return Problem(
                str(folder), "", f"holds more than {what}; give the folder that holds your specs (e.g. specs/)."
            )
    return sorted(q for q in found if q.is_file())


def find_spec_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Spec files under the given files/folders (recursive, sorted); missing paths and too large
    folders are problems."""
    found: list[Path] = []
    problems = []
    for p in map(Path, paths):
        if p.is_dir():
            under = _yaml_files_under(p)
            if isinstance(under, Problem):
                problems.append(under)
            else:
                found.extend(under)
        elif p.is_file():
            found.append(p)
        elif p.exists():
            problems.append(
                Problem(
                    str(p),
                    "",
                    "is not a regular file or folder (a device, FIFO or socket); give spec files or folders.",
                )
            )
        else:
            problems.append(Problem(str(p), "", "no such file or folder."))
    return found, problems


def dump_spec(spec: Spec) -> str:
    """The resolved spec as YAML (defaults included, unset optionals omitted)."""
    return yaml.safe_dump(
        spec.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True, width=100
    )


def is_profile_path(path: Path) -> bool:
    return "profiles" in path.parent.parts


def validate_files(files: Iterable[Path], profile: Optional[Path] = None) -> tuple[int, list[Problem]]:
    """Validate spec files (and profile files under a `profiles/` folder); returns (count, problems).
    With a `profile` (`validate --toy`), each spec and its producers and controls are checked as mapped."""
    cache: dict[Path, Spec | UserError] = {}
    problems: list[Problem] = []
    count = 0
    for path in files:
        count += 1
        try:
            if is_profile_path(path):
                load_profile(path)
                continue
            data, node = read_yaml_file(path)
            file = str(path)
            if profile is not None:
                data = apply_profile(require_mapping(data, file), profile, spec_path=path)
                node, file = None, f"{file} (through profile {profile})"
            spec = validate_data(data, node, file)
            cache[path.resolve()] = spec
            problems.extend(reference_problems(spec, path, node, cache, profile))
        except UserError as exc:
            problems.extend(exc.problems)
    return count, problems

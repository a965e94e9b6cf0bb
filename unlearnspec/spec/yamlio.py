"""Spec YAML: parsing with line numbers, `--set` overrides, and pydantic errors as friendly Problems.

Every user mistake becomes a `UserError` holding one `Problem` per error (file, line, field path,
what is wrong and the fix); callers render it and exit 2. Imports no torch.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml
from pydantic import BaseModel, ValidationError

from unlearnspec.errors import Problem, UserError
from unlearnspec.spec.base import SpecRuleError
from unlearnspec.spec.schema import Spec

# --------------------------------------------------------------------------- YAML
MAX_YAML_BYTES = 256_000
"""Largest YAML file read: a spec is a few KB; pure-Python parsing takes ~3 s at this size."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of lists and mappings, aliases expanded (specs nest about 5 levels)."""
MAX_YAML_NODES = 100_000
"""Most values in one document with every alias expanded (stops 'billion laughs' documents)."""


class _Refused(Exception):
    """A document the loader refuses (too deep, too large, duplicate key), with where it happened."""

    def __init__(self, message: str, mark: Optional[yaml.Mark]):
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1 if mark is not None else None


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float (YAML 1.2), as people write learning rates, and
    refuses what would break later code or silently lose data: nesting deeper than MAX_YAML_DEPTH,
    more than MAX_YAML_NODES values with aliases expanded, recursive aliases, duplicate keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._composed = 0
        # id(node) -> (values, depth) with aliases expanded; a node still being composed has none.
        self._measure: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        alias = self.check_event(yaml.AliasEvent)
        mark = self.peek_event().start_mark
        self._depth += 1
        try:
            # Checked before descending: PyYAML's composer recurses once per level.
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(
                    f"nested more than {MAX_YAML_DEPTH} levels deep; a spec needs about 5. Flatten the document.", mark
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            if id(node) not in self._measure:
                raise _Refused(
                    "a recursive alias: it refers to a mapping or list that contains it. Remove the alias.", mark
                )
            return node
        self._composed += 1
        if self._composed > MAX_YAML_NODES:  # early: without aliases the total is only known at the end
            raise _Refused(f"holds more than {MAX_YAML_NODES:,} values. A spec holds a few hundred.", mark)
        count, depth = 1, 1
        if isinstance(node, yaml.MappingNode):
            self._check_duplicates(node)
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        for child in children:
            c_count, c_depth = self._measure[id(child)]
            count += c_count
            depth = max(depth, c_depth + 1)
        if depth > MAX_YAML_DEPTH:
            raise _Refused(
                f"nested more than {MAX_YAML_DEPTH} levels deep once its aliases are expanded. Flatten the document.",
                mark,
            )
        if count > MAX_YAML_NODES:
            raise _Refused(
                f"holds more than {MAX_YAML_NODES:,} values once its aliases are expanded. Write the values out, without aliases.",
                mark,
            )
        self._measure[id(node)] = (count, depth)
        return node

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        """A key written twice in one mapping: YAML keeps the last silently, so refuse it.
        Keys brought in by a `<<` merge may be overridden (that is what merging is for)."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the constructor reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _Refused(
                    f"duplicate key `{key}` (first at line {first}); YAML would silently keep only the last one. Delete one of them.",
                    key_node.start_mark,
                )
            seen[key] = line


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, file: str) -> tuple[Any, Optional[yaml.Node]]:
    """Parse YAML text into data plus its node tree (for line numbers); every failure is a UserError."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(
            [
                Problem(
                    file,
                    "",
                    f"the YAML text is larger than {MAX_YAML_BYTES:,} characters; a spec is a few KB. Check the file.",
                )
            ]
        )
    try:
        loader = _Loader(text)  # the reader checks the characters here (e.g. control characters)
    except yaml.YAMLError as exc:
        raise UserError([Problem(file, "", f"YAML error: {exc}. Remove the control or special characters.")]) from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        raise UserError([Problem(file, "", f"YAML refused: {exc.message}", exc.line)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise UserError([Problem(file, "", f"YAML syntax error: {what}. Fix the YAML at this line.", line)]) from None
    except yaml.YAMLError as exc:
        raise UserError([Problem(file, "", f"YAML error: {exc}")]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML's own constructors raise these for values it recognises but cannot build,
        # e.g. the timestamp `2024-13-01`.
        raise UserError(
            [
                Problem(
                    file,
                    "",
                    f"YAML value error: {type(exc).__name__}: {str(exc)[:160]}. Quote the value if it is text.",
                )
            ]
        ) from None
    finally:
        loader.dispose()
    return data, node


def read_yaml_file(path: Path) -> tuple[Any, Optional[yaml.Node]]:
    """Read and parse a YAML file (at most MAX_YAML_BYTES); every failure is a UserError naming it."""
    from unlearnspec.safeio import read_bytes

    # a regular file only (a FIFO would block, /dev/zero never ends), at most MAX_YAML_BYTES
    raw = read_bytes(path, "YAML file", "", MAX_YAML_BYTES, missing="file not found. Check the path.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            [Problem(str(path), "", f"not UTF-8 text (byte {exc.start}). Save the file as UTF-8.")]
        ) from None
    return parse_yaml(text, str(path))


def _line_of(node: Optional[yaml.Node], loc: tuple[Any, ...]) -> Optional[int]:
    """Line (1-based) of the deepest node along `loc` that exists in the YAML."""
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    best = key.start_mark.line + 1
                    node = value
                    break
            else:
                return best
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            return best
    return best


# --------------------------------------------------------------------------- overrides
def apply_overrides(data: Any, overrides: Iterable[str]) -> Any:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a plain-data spec, in place."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(
                Problem("--set", item, "an override must look like `section.field=value`, e.g. `training.lr=1e-5`.")
            )
            continue
        value, _ = parse_yaml(raw, f"--set {key}") if raw.strip() else (None, None)
        # ASCII digits only: str.isdigit() is also true for '²', which int() refuses.
        parts: list[Any] = [int(p) if p.isascii() and p.isdigit() else p for p in key.strip().split(".")]
        if not isinstance(data, dict):
            problems.append(Problem("--set", key, "the spec is not a mapping; fix the file first."))
            continue
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            elif isinstance(node, dict):
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
            else:
                problems.append(
                    Problem("--set", key, f"cannot index {'.'.join(map(str, parts[: i + 1]))}: not a mapping or list.")
                )
                break
        else:
            last = parts[-1]
            if isinstance(node, list) and isinstance(last, int) and last < len(node):
                node[last] = value
            elif isinstance(node, dict):
                node[last] = value
            else:
                problems.append(Problem("--set", key, "the path does not name a field or list element."))
    if problems:
        raise UserError(problems)
    return data


# --------------------------------------------------------------------------- validation errors
def _unwrap_model(annotation: Any) -> Optional[type[BaseModel]]:
    """The BaseModel inside Optional[...]/dict[str, ...]/list[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        for arg in typing.get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def _tagged_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """The members of a union of models told apart by a `name` literal (e.g. `objective`), by name."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    members = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel) and "name" in a.model_fields]
    return {typing.get_args(m.model_fields["name"].annotation)[0]: m for m in members} if len(members) > 1 else {}


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] = Spec) -> Optional[type[BaseModel]]:
    """The model at `loc` (pydantic's raw loc: a tagged union's member tag picks the member)."""
    model: Optional[type[BaseModel]] = root
    pending_container = False
    tagged: dict[str, type[BaseModel]] = {}
    for part in loc:
        if tagged:
            model, tagged = tagged.get(part), {}
            continue
        if model is None:
            return None
        if pending_container:  # a dict key or list index inside a container field
            pending_container = False
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        origin = typing.get_origin(field.annotation)
        inner = [typing.get_origin(a) for a in typing.get_args(field.annotation)]
        pending_container = origin in (list, dict) or any(o in (list, dict) for o in inner)
        tagged = _tagged_members(field.annotation)
        model = _unwrap_model(field.annotation)
    return None if pending_container or tagged else model


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop pydantic's union-member tags (e.g. 'float', 'list[float]') that are not data keys."""
    out: list[Any] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part not in node and node.get("name") == part:
            continue  # the member tag of a union told apart by `name` (e.g. objective.npo.beta)
        if isinstance(node, dict):
            out.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if part < len(node) else None
        elif i == len(loc) - 1 and node is None:
            out.append(part)
        # else: a union tag: skip it
    return tuple(out)


def _fmt_loc(loc: Iterable[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(err: Mapping[str, Any], loc: tuple[Any, ...], root: type[BaseModel] = Spec) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(tuple(err["loc"])[:-1], root)
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        return f"unknown key `{loc[-1]}`.{hint} Valid keys here: {', '.join(valid)}."
    if kind == "missing":
        return "required field is missing; add it."
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{err['msg'][0].lower()}{err['msg'][1:]} (got {shown})."


def _misspelled_missing(errors: list[Any], data: Any) -> set[tuple[Any, ...]]:
    """Locs of 'missing' errors explained by an unknown sibling key that is a close match:
    one "did you mean" message says it all."""
    extra: dict[tuple[Any, ...], list[str]] = {}
    for err in errors:
        if err["type"] == "extra_forbidden":
            loc = _clean_loc(tuple(err["loc"]), data)
            extra.setdefault(loc[:-1], []).append(str(loc[-1]))
    explained = set()
    for err in errors:
        if err["type"] == "missing":
            loc = _clean_loc(tuple(err["loc"]), data)
            if difflib.get_close_matches(str(loc[-1]), extra.get(loc[:-1], []), n=1, cutoff=0.6):
                explained.add(loc)
    return explained


def _union_noise_removed(errors: list[Any], data: Any) -> list[Any]:
    """A union field (e.g. `lr: float | list[float]`) reports one error per member. Drop a member's
    "wrong type" error when another member got further (an error at or below the same place), and
    merge the rest into one "a valid number or a valid list" message."""
    locs = [_clean_loc(tuple(e["loc"]), data) for e in errors]
    is_type = [e["type"].endswith("_type") for e in errors]
    kept: list[Any] = []
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err, loc, typ in zip(errors, locs, is_type):
        if not typ:
            kept.append(err)
            continue
        if any(not t and other[: len(loc)] == loc for other, t in zip(locs, is_type)):
            continue
        if loc in merged:
            first = merged[loc]
            what = err["msg"].removeprefix("Input should be ")
            first["msg"] = f"{first['msg']} or {what}"
            continue
        merged[loc] = err = dict(err)
        kept.append(err)
    return kept


def validation_problems(exc: ValidationError, data: Any, node: Optional[yaml.Node], file: str) -> list[Problem]:
    return validation_problems_for(Spec, exc, data, node, file)


def validation_problems_for(
    root: type[BaseModel], exc: ValidationError, data: Any, node: Optional[yaml.Node], file: str
) -> list[Problem]:
    """One Problem per validation error of `root` (did-you-mean for unknown keys, YAML line numbers)."""
    problems: dict[tuple[str, str], Problem] = {}
    errors = _union_noise_removed(exc.errors(include_url=False), data)
    skip = _misspelled_missing(errors, data)
    for err in errors:
        if err["type"] == "missing" and _clean_loc(tuple(err["loc"]), data) in skip:
            continue
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, SpecRuleError):
            loc = _clean_loc(tuple(err["loc"]), data) + ctx_error.loc
            message = ctx_error.message
        else:
            loc = _clean_loc(tuple(err["loc"]), data)
            message = _message(err, loc, root)
        key = (_fmt_loc(loc), err["type"] if not ctx_error else message)
        if key in problems:  # one union member's error is enough
            continue
        problems[key] = Problem(file, _fmt_loc(loc), message, _line_of(node, loc))
    return list(problems.values())

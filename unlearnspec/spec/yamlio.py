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
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float (YAML 1.2), as people write learning rates."""


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
    """Parse YAML text into data plus its node tree (for line numbers)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise UserError([Problem(file, "", f"YAML syntax error: {what}. Fix the YAML at this line.", line)]) from None
    except yaml.YAMLError as exc:
        raise UserError([Problem(file, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    return data, node


def read_yaml_file(path: Path) -> tuple[Any, Optional[yaml.Node]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError([Problem(str(path), "", "file not found. Check the path.")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError([Problem(str(path), "", f"cannot read the file: {exc}")]) from None
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
            problems.append(Problem("--set", item, "an override must look like `section.field=value`, e.g. `training.lr=1e-5`."))
            continue
        value, _ = parse_yaml(raw, f"--set {key}") if raw.strip() else (None, None)
        parts: list[Any] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
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
                problems.append(Problem("--set", key, f"cannot index {'.'.join(map(str, parts[: i + 1]))}: not a mapping or list."))
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


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] = Spec) -> Optional[type[BaseModel]]:
    model: Optional[type[BaseModel]] = root
    pending_container = False
    for part in loc:
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
        model = _unwrap_model(field.annotation)
    return None if pending_container else model


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop pydantic's union-member tags (e.g. 'float', 'list[float]') that are not data keys."""
    out: list[Any] = []
    node = data
    for i, part in enumerate(loc):
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
        model = _model_at(loc[:-1], root)
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
    extra = {}
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


def validation_problems(exc: ValidationError, data: Any, node: Optional[yaml.Node], file: str) -> list[Problem]:
    return validation_problems_for(Spec, exc, data, node, file)


def validation_problems_for(
    root: type[BaseModel], exc: ValidationError, data: Any, node: Optional[yaml.Node], file: str
) -> list[Problem]:
    """One Problem per validation error of `root` (did-you-mean for unknown keys, YAML line numbers)."""
    problems: dict[tuple[str, str], Problem] = {}
    errors = exc.errors(include_url=False)
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

"""The run path is typed: no `typing.Any` anywhere in unlearnspec/run/ (annotations, string annotations, casts,
aliases, imports) and no function there takes more than 6 parameters (an options object instead)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

RUN = REPO / "unlearnspec" / "run"
MAX_PARAMS = 6


def _parsed(text: str) -> list[ast.AST]:
    """The expression a string annotation holds ([] when the string is not one)."""
    try:
        return [ast.parse(text.strip(), mode="eval")]
    except SyntaxError:
        return []


def _is_any(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "Any") or (isinstance(node, ast.Attribute) and node.attr == "Any")


def _type_roots(tree: ast.AST) -> list[tuple[ast.AST, int]]:
    """Every place a type expression can sit, with its line: annotations, returns, subscripts (aliases), the type
    argument of cast/TypeVar/NewType, and `# type:` comments (parsed)."""
    roots: list[tuple[ast.AST, int]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append((node.annotation, line))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            roots.append((node.returns, line))
        elif isinstance(node, ast.AnnAssign):
            roots.append((node.annotation, line))
        elif isinstance(node, ast.Subscript):
            roots.append((node.slice, line))
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in ("cast", "TypeVar", "NewType", "TypeAliasType"):
                roots.extend((arg, line) for arg in [*node.args, *(k.value for k in node.keywords)])
        comment = getattr(node, "type_comment", None)
        if comment:
            roots.extend((expr, line) for expr in _parsed(comment.split("->")[-1]))
    return roots


def any_uses(source: str) -> list[int]:
    """Line numbers where `Any` (or `typing.Any`) is used or imported, also inside string annotations."""
    tree = ast.parse(source, type_comments=True)
    found: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "Any" for a in node.names):
            found.append(node.lineno)
        elif _is_any(node):
            found.append(getattr(node, "lineno", 0))
    todo = _type_roots(tree)
    while todo:
        root, line = todo.pop()
        for node in ast.walk(root):
            if _is_any(node):
                found.append(line)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                todo.extend((inner, line) for inner in _parsed(node.value))
    return sorted(set(found))


def long_signatures(source: str) -> list[tuple[str, int]]:
    """(function, parameter count) of every def or lambda over MAX_PARAMS parameters; a method's self/cls is not
    counted, *args and **kwargs are."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        a = node.args
        positional = [*a.posonlyargs, *a.args]
        count = len(positional) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
        if positional and positional[0].arg in ("self", "cls"):
            count -= 1
        if count > MAX_PARAMS:
            out.append((getattr(node, "name", "<lambda>"), count))
    return out


def _run_files() -> list[Path]:
    files = sorted(RUN.rglob("*.py"))
    assert len(files) > 25, f"found only {len(files)} modules under {RUN}"  # the walk itself is not empty
    return files


def test_no_any_on_the_run_path():
    found = {
        str(p.relative_to(REPO)): lines for p in _run_files() if (lines := any_uses(p.read_text(encoding="utf-8")))
    }
    assert not found, f"`Any` on the run path (file: lines): {found}"


def test_no_long_parameter_lists_on_the_run_path():
    found = {
        str(p.relative_to(REPO)): sigs for p in _run_files() if (sigs := long_signatures(p.read_text(encoding="utf-8")))
    }
    assert not found, f"functions over {MAX_PARAMS} parameters (use an options dataclass): {found}"


@pytest.mark.parametrize(
    "source",
    [
        "from typing import Any",
        "from typing import Optional, Any as A",
        "def f(x: Any) -> None: ...",
        "def f(x) -> 'Any': ...",
        "def f(x: Optional['dict[str, Any]']) -> None: ...",
        "import typing\nx: typing.Any = 1",
        "y = cast(Any, x)",
        "y = cast('list[Any]', x)",
        "Alias = dict[str, 'Any']",
        "T = TypeVar('T', bound='Any')",
        "x = []  # type: list[Any]",
        "class C:\n    def m(self, *args: 'Any') -> None: ...",
    ],
)
def test_the_any_check_finds_every_spelling(source):
    assert any_uses(source), source


@pytest.mark.parametrize(
    "source",
    [
        "from typing import Optional\ndef f(x: Optional[int]) -> 'dict[str, object]': ...",
        "message = 'Any text at all'",
        "def f(x: 'JsonValue') -> None: ...",
        "AnyThing = 1",
    ],
)
def test_the_any_check_leaves_other_names(source):
    assert any_uses(source) == []


def test_the_parameter_check_counts_as_documented():
    six = "def f(a, b, c, d, e, g): ..."
    seven = "def f(a, b, c, d, e, g, *, h=1): ..."
    method = "class C:\n    def m(self, a, b, c, d, e, g): ...\n    def n(self, a, b, c, d, e, g, **k): ..."
    assert long_signatures(six) == []
    assert long_signatures(seven) == [("f", 7)]
    assert long_signatures(method) == [("n", 7)]
    assert long_signatures("f = lambda a, b, c, d, e, g, *h: 0") == [("<lambda>", 7)]

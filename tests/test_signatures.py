"""No function in the package takes more than MAX_PARAMS parameters: values that travel together are one typed
object (a frozen dataclass or TypedDict) named for what it is. Typer commands are exempt: each parameter is a flag."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "unlearnspec"
MAX_PARAMS = 6

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def count_params(node: FunctionNode, in_class: bool) -> int:
    """Positional (incl. positional-only), keyword-only, *args and **kwargs; a method's self/cls is not counted."""
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if in_class and not is_static and positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    return len(positional) + len(args.kwonlyargs) + (args.vararg is not None) + (args.kwarg is not None)


def is_typer_command(node: FunctionNode) -> bool:
    """Decorated `@<app>.command(...)` or `@<app>.command`: its parameters are the command's CLI options."""
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Attribute) and target.attr == "command":
            return True
    return False


def long_signatures(path: Path, package: Path = PACKAGE, limit: int = MAX_PARAMS) -> list[str]:
    """`path:line name (n)` for each function in `path` (a module of `package`) with more than `limit` parameters."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_cli = path.relative_to(package).parts[0] == "cli"
    found: list[str] = []

    def visit(node: ast.AST, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = count_params(child, in_class)
                if n > limit and not (in_cli and is_typer_command(child)):
                    found.append(f"{path.relative_to(package.parent)}:{child.lineno} {child.name} ({n})")
                visit(child, False)
            else:
                visit(child, isinstance(child, ast.ClassDef))

    visit(tree, False)
    return found


def checked_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))  # the whole package, run/ included


def test_no_function_takes_more_than_six_parameters():
    found = [hit for path in checked_files() for hit in long_signatures(path)]
    assert not found, f"functions with more than {MAX_PARAMS} parameters (group them in a typed object):\n" + "\n".join(
        found
    )


def test_the_checker_counts_every_kind_of_parameter(tmp_path):
    """The check must be able to fail: each parameter kind counts, self does not, and only cli/ commands are exempt."""
    source = (
        "def f(a, /, b, *args, c, **kw): ...\n"
        "class K:\n"
        "    def m(self, a, b, c, d, e, f): ...\n"
        "    @staticmethod\n"
        "    def s(self, a, b, c, d, e, f): ...\n"
        "@app.command()\n"
        "def cmd(a, b, c, d, e, f, g): ...\n"
    )
    pkg = tmp_path / "unlearnspec"
    for folder in ("magic", "cli"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "mod.py").write_text(source, encoding="utf-8")
    tree = ast.parse(source)
    f, k, cmd = tree.body[0], tree.body[1], tree.body[2]
    assert isinstance(f, ast.FunctionDef) and isinstance(k, ast.ClassDef) and isinstance(cmd, ast.FunctionDef)
    assert count_params(f, in_class=False) == 5
    m, s = k.body
    assert isinstance(m, ast.FunctionDef) and isinstance(s, ast.FunctionDef)
    assert count_params(m, in_class=True) == 6
    assert count_params(s, in_class=True) == 7
    assert is_typer_command(cmd) and not is_typer_command(f)

    def hits(folder: str) -> list[str]:
        return [h.split()[1] for h in long_signatures(pkg / folder / "mod.py", package=pkg, limit=4)]

    assert hits("magic") == ["f", "m", "s", "cmd"]
    assert hits("cli") == ["f", "m", "s"]

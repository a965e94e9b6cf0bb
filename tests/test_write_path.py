"""Every file the package writes goes through the one write path (unlearnspec.safewrite): no module writes a
file another way, so none can follow a link, leave its folder, half-write a file or write NaN into JSON."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "unlearnspec"
WRITE_PATH = PACKAGE / "safewrite.py"
LIBRARY_WRITERS = {"save", "savefig", "save_file"}
"""Library calls that write a file: allowed only as the writer a lambda hands to `write_with` (a file object
or the write path's own temp file)."""


def _open_mode(call: ast.Call) -> str:
    if len(call.args) > 1 and isinstance(call.args[1], ast.Constant):
        return str(call.args[1].value)
    return next(
        (str(k.value.value) for k in call.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)), "r"
    )


def raw_writes(path: Path) -> list[str]:
    """`file:line what` of each write that bypasses the write path."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def in_lambda(node: ast.AST) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.Lambda):
                return True
        return False

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        what = None
        if (
            isinstance(func, ast.Attribute)
            and name in ("write_text", "write_bytes")
            and owner not in ("safeio", "safewrite")
        ):
            what = f"Path.{name}"
        elif name == "open" and owner in ("", "io") and any(c in _open_mode(node) for c in "wax+"):
            what = f"open(..., {_open_mode(node)!r})"
        elif name in ("dump",) and owner == "json":
            what = "json.dump"
        elif name in LIBRARY_WRITERS and owner not in ("safeio", "safewrite") and not in_lambda(node):
            what = f"{owner + '.' if owner else ''}{name} outside a write_with writer"
        if what:
            found.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{node.lineno} {what}")
    return found


def test_every_file_write_goes_through_the_write_path():
    offenders = [hit for p in sorted(PACKAGE.rglob("*.py")) if p != WRITE_PATH for hit in raw_writes(p)]
    assert not offenders, "writes bypassing unlearnspec.safewrite:\n" + "\n".join(offenders)


def test_the_check_finds_a_raw_write(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, torch\nfrom pathlib import Path\n"
        "def f(p, t):\n    Path(p).write_text('x')\n    open(p, 'w')\n    json.dump({}, p)\n    torch.save(t, p)\n"
    )
    hits = raw_writes(probe)
    assert [h.split(" ", 1)[1] for h in hits] == [
        "Path.write_text",
        "open(..., 'w')",
        "json.dump",
        "torch.save outside a write_with writer",
    ]

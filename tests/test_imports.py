"""No import cycle among mailguard's modules, read from the source with ``ast``.

What counts as an import (our choice, checked here):

- every ``import`` and ``from ... import`` statement that can run: at module
  level, and inside functions and methods too (a lazy import still makes
  one module depend on the other, it only delays the cycle to the first
  call);
- ``__import__(...)`` and ``importlib.import_module(...)`` calls: a constant
  name counts as an import, and a computed one (``f"mailguard.{name}"``, how
  config once reached the adapters) is refused outright, since no reader,
  human or ``ast``, can tell where it leads;
- not those under ``if TYPE_CHECKING:``, which never run; they may point
  anywhere (type annotations are strings here).

An edge goes to the module named (``from .stores import memory`` names
``mailguard.stores.memory``; ``from .stores import MemoryStore`` names
``mailguard.stores``), never implicitly to a parent package: importing
``mailguard.stores.memory`` runs ``mailguard/stores/__init__.py`` first, but a
package importing its own children is not a cycle anyone has to untangle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mailguard"
PACKAGE = "mailguard"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` that can run: ``if TYPE_CHECKING:`` bodies left out."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield stmt
                yield from _nodes(stmt)
            continue
        yield child
        yield from _nodes(child)


def _dynamic_import(node: ast.AST) -> ast.expr | None:
    """The name argument of an ``__import__`` / ``import_module`` call, if ``node`` is one."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    return node.args[0] if name in ("__import__", "import_module") else None


def _target(name: str) -> str | None:
    """The mailguard module ``name`` is, or is an attribute of."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """The mailguard modules ``module`` imports (statements that can run)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    named: list[str] = []
    for stmt in _nodes(tree):
        argument = _dynamic_import(stmt)
        if argument is not None:
            if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)):
                DYNAMIC.append(f"{module}:{getattr(stmt, 'lineno', '?')}")
            elif not argument.value.startswith("."):
                named.append(argument.value)
        if isinstance(stmt, ast.Import):
            named.extend(alias.name for alias in stmt.names)
        elif isinstance(stmt, ast.ImportFrom):
            origin = stmt.module or ""
            if stmt.level:
                base = package.split(".")[: len(package.split(".")) - (stmt.level - 1)]
                origin = ".".join([*base, origin] if origin else base)
            for alias in stmt.names:
                submodule = f"{origin}.{alias.name}"
                named.append(submodule if submodule in MODULES else origin)
    found = {_target(name) for name in named if name.split(".")[0] == PACKAGE}
    return {target for target in found if target is not None and target != module}


DYNAMIC: list[str] = []  # where a module imports by a computed name
GRAPH = {module: imports_of(module) for module in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found is not None:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found is not None:
                return found
    return None


def test_the_parser_sees_what_we_know_is_there() -> None:
    assert "mailguard.config" in GRAPH["mailguard.asgi"]
    assert "mailguard.policies" in GRAPH["mailguard.asgi"]
    assert "mailguard.stores.redis" in GRAPH["mailguard"]  # inside __getattr__: counted
    assert "mailguard.stores.redis" in GRAPH["mailguard.config"]  # inside a function: counted
    assert {"mailguard.asgi", "mailguard.wsgi"} <= GRAPH["mailguard.fronts"]  # from . import a, b


def test_config_imports_neither_adapter() -> None:
    assert not GRAPH["mailguard.config"] & {"mailguard.asgi", "mailguard.wsgi"}
    for adapter in ("mailguard.asgi", "mailguard.wsgi"):
        others = {"mailguard.asgi", "mailguard.wsgi"} - {adapter}
        assert not GRAPH[adapter] & others


def test_no_import_by_computed_name() -> None:
    assert DYNAMIC == [], "imports whose target cannot be read: " + ", ".join(DYNAMIC)


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "cyclic"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_the_cycle_finder(graph: dict[str, set[str]], cyclic: bool) -> None:
    assert (find_cycle(graph) is not None) is cyclic

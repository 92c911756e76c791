"""netcore's modules import each other in one direction only: no circle.

Every import counts, those under ``if TYPE_CHECKING:`` and inside functions
included: a circle that only the type checker follows is still a circle in
the design (a Connection that cannot be understood, or tested, without a
whole server).
"""

import ast
import os
from typing import Dict, List, Set

import netcore

PACKAGE = os.path.dirname(netcore.__file__)


def netcore_imports(source: str) -> Set[str]:
    """The netcore modules ``source`` imports, by module name (``server``)."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module and node.module.split(".")[0] == "netcore":
                parts = node.module.split(".")
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "netcore" and len(parts) > 1:
                    found.add(parts[1])
    return found


def import_graph() -> Dict[str, Set[str]]:
    graph = {}
    for name in sorted(os.listdir(PACKAGE)):
        if name.endswith(".py") and name != "__init__.py":
            with open(os.path.join(PACKAGE, name), encoding="utf-8") as f:
                graph[name[:-3]] = netcore_imports(f.read())
    modules = set(graph)
    return {m: deps & modules for m, deps in graph.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """A circle of imports as [a, b, ..., a], or [] if there is none."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in graph}
    stack: List[str] = []

    def visit(m: str) -> List[str]:
        colour[m] = GREY
        stack.append(m)
        for dep in sorted(graph[m]):
            if colour.get(dep) == GREY:
                return stack[stack.index(dep):] + [dep]
            if colour.get(dep) == WHITE:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[m] = BLACK
        return []

    for m in sorted(graph):
        if colour[m] == WHITE:
            found = visit(m)
            if found:
                return found
    return []


def test_the_detector_sees_type_checking_imports_and_circles():
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .server import TCPServer\n"
    assert netcore_imports(src) == {"server"}
    assert netcore_imports("from . import loop, tick\nimport netcore.web\n") == {
        "loop", "tick", "web"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_netcore_has_no_import_circle():
    graph = import_graph()
    assert {"connection", "server", "web", "sniff", "handler"} <= set(graph)
    assert find_cycle(graph) == []


def test_a_connection_does_not_know_what_owns_it():
    graph = import_graph()
    assert not graph["connection"] & {"server", "web", "sniff", "handler"}
    assert "server" not in graph["web"] and "server" not in graph["sniff"]


def test_netcore_never_imports_the_game():
    for name in os.listdir(PACKAGE):
        if name.endswith(".py"):
            with open(os.path.join(PACKAGE, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                assert not any(m.split(".")[0] in ("spelltraction", "tests") for m in mods), name


def test_the_package_docstring_lists_modules_in_dependency_order():
    import re

    listed = re.findall(r":mod:`netcore\.(\w+)`", netcore.__doc__ or "")
    graph = import_graph()
    assert sorted(listed) == sorted(graph), "every module listed once"
    for i, module in enumerate(listed):
        later = set(listed[i + 1:])
        assert not graph[module] & later, f"{module} imports {graph[module] & later}, listed below it"

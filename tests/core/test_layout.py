"""tests/core/ is netcore's own suite: none of it may reach the game, even through a kit.

netcore travels without the game, so its tests must run without it too. This
follows every import of every module here into the helper modules of tests/
(gamekit, fuzzkit, ...) and fails on a path that ends in ``spelltraction``.
"""

import ast
import os

CORE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(CORE)


def imported(path, lazy_too):
    """Top-level names of the modules ``path`` imports.

    ``lazy_too``: imports inside functions count as well. They do for a test module
    (its tests run them); in a helper module they run only if called, and
    conftest imports the game's kit inside the game fixtures for exactly this reason.
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not lazy_too:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]
        todo.extend(ast.iter_child_nodes(node))


def path_to_the_game(path, seen, lazy_too=False):
    """The chain of modules from ``path`` to spelltraction, or None."""
    for name in imported(path, lazy_too):
        if name == "spelltraction":
            return [name]
        local = os.path.join(TESTS, name + ".py")
        if os.path.exists(local) and local not in seen:
            seen.add(local)
            chain = path_to_the_game(local, seen)
            if chain:
                return [name] + chain
    return None


def test_no_core_test_imports_the_game():
    offenders = {}
    for entry in sorted(os.listdir(CORE)):
        if entry.endswith(".py"):
            chain = path_to_the_game(os.path.join(CORE, entry), set(), lazy_too=True)
            if chain:
                offenders[entry] = " -> ".join(chain)
    assert offenders == {}, f"move these out of tests/core/ or cut the import: {offenders}"

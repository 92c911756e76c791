"""spelltraction.py as a map: its banners, its contents list and its index agree.

The module docstring's contents list is what a newcomer reads first, and
``grep -n '^# ====' -A1 spelltraction.py`` is how they find their way; these
tests keep the two telling the same story as the file changes.
"""

from __future__ import annotations

import ast
import re
from typing import List, Tuple

import spelltraction as st

SECTION, SUBSECTION = "# " + "=" * 77, "# " + "-" * 77


def _banners() -> List[Tuple[int, str]]:
    """(depth, title) for each banner in the file: 0 a section, 1 a sub-section."""
    with open(st.__file__, encoding="utf-8") as f:
        lines = f.read().split("\n")
    found = []
    for i, line in enumerate(lines[:-2]):
        if line in (SECTION, SUBSECTION) and lines[i + 2] == line:
            assert lines[i + 1].startswith("# "), f"line {i + 2}: a banner without a title"
            found.append((0 if line == SECTION else 1, lines[i + 1][2:]))
    return found


def _contents() -> List[Tuple[int, str]]:
    """(depth, title) for each line of the docstring's contents list."""
    doc = st.__doc__ or ""
    block = doc[doc.index("\nProtocol"):doc.index("\nRun it:")]
    found = []
    for line in block.strip("\n").split("\n"):
        if line.strip().startswith("->") or not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        found.append((depth, line.strip()))
    return found


def test_the_docstring_contents_are_the_banners_in_order() -> None:
    assert _contents() == _banners()


def test_sections_follow_the_design_order() -> None:
    sections = [title.split(" ")[0].rstrip(":") for depth, title in _banners() if depth == 0]
    assert sections == ["Protocol", "Rules", "Store", "World", "Front", "Server", "Upgrade", "Bus",
                        "Cluster", "Bots", "Clients", "View", "Operations", "CLI"]


def test_every_sub_section_belongs_to_its_section() -> None:
    section = ""
    for depth, title in _banners():
        if depth == 0:
            section = title.split(" ")[0].rstrip(":")
        else:
            assert title.startswith(section + ": "), title


def test_entry_points_named_in_the_contents_exist() -> None:
    doc = st.__doc__ or ""
    named = 0
    for line in doc.split("\n"):
        if not line.strip().startswith("->"):
            continue
        for name, methods in re.findall(r"(\w+)(?: \(([\w, ]+)\))?", line.split("->", 1)[1]):
            assert hasattr(st, name), f"the contents name {name}, which does not exist"
            for method in filter(None, methods.split(", ")):
                assert hasattr(getattr(st, name), method), f"{name}.{method} does not exist"
            named += 1
    assert named >= 20


def test_the_index_lists_every_public_class_and_function() -> None:
    with open(st.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    public = {node.name for node in tree.body
              if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")}
    assert public <= set(st.__all__), sorted(public - set(st.__all__))
    missing = [name for name in st.__all__ if not hasattr(st, name)]
    assert not missing
    assert len(st.__all__) == len(set(st.__all__))

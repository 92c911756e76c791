"""The README and docs/ as a newcomer reads them: short, linked, reproducible, self-contained.

The README is the front door (at most 250 lines); every headline figure in its
table links to a section of docs/MEASURED.md that gives the same command; every
relative link lands on a file and a heading that exist; nothing points at an
issue tracker's numbers or at files outside the repository; and the benches
write their reports under the ignored bench/results/ unless told otherwise.
"""

from __future__ import annotations

import ast
import glob
import os
import re
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MEASURED = os.path.join(ROOT, "docs", "MEASURED.md")
DOCS = [README, os.path.join(ROOT, "netcore", "README.md"), os.path.join(ROOT, "tests", "HOSTILE.md")] \
    + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _prose(text: str) -> str:
    """The Markdown without its fenced code blocks (no links or headings in those)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: str) -> Set[str]:
    """The heading anchors GitHub makes for a Markdown file."""
    found: Set[str] = set()
    seen: Dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _prose(_read(path)), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_the_readme_is_a_front_door() -> None:
    text = _read(README)
    assert len(text.splitlines()) <= 250
    for section in ("## Run it", "## Play", "## Load-test it", "## Figures", "## Architecture"):
        assert section in text, section
    assert "Front" in text and "World" in text and "serve   = Front + World" in text


def test_every_relative_link_lands_on_a_file_and_a_heading() -> None:
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(_read(path))):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            assert os.path.exists(dest), f"{os.path.relpath(path, ROOT)}: {target} is missing"
            assert os.path.commonpath([ROOT, dest]) == ROOT, f"{target} leaves the repository"
            if anchor and dest.endswith(".md"):
                assert anchor in _anchors(dest), f"{os.path.relpath(path, ROOT)}: no heading for {target}"


def test_every_headline_figure_is_in_measured_with_its_command() -> None:
    table = _read(README).split("## Figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "bench/" in line]
    assert len(rows) >= 8
    measured = _read(MEASURED)
    for row in rows:
        commands = re.findall(r"`(python3 bench/[^`]+)`", row)
        links = re.findall(r"\(docs/MEASURED\.md#([^)]+)\)", row)
        assert commands and links, row
        for command in commands:
            assert command in measured, f"{command!r} is not in docs/MEASURED.md"


def test_no_issue_numbers_or_files_outside_the_repository() -> None:
    texts: List[str] = [_read(path) for path in DOCS if path != os.path.join(ROOT, "tests", "HOSTILE.md")]
    texts.append(_read(os.path.join(ROOT, "tests", "HOSTILE.md")).splitlines()[0])
    texts += [_read(path) for path in sorted(glob.glob(os.path.join(ROOT, "bench", "*.py")))]
    for text in texts:
        assert not re.search(r"\bissues? #?\d", text, flags=re.I), re.search(r".*\bissues? #?\d.*", text, re.I)
        assert "../shared" not in text


def test_the_benches_write_under_bench_results_by_default() -> None:
    """A default output path is os.path.join(HERE, "results", ...): ignored, never a tracked file."""
    ignored = _read(os.path.join(ROOT, ".gitignore")).splitlines()
    assert "bench/results/" in ignored
    checked = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "bench", "*.py"))):
        for node in ast.walk(ast.parse(_read(path))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
                continue
            for kw in node.keywords:
                if kw.arg == "default" and isinstance(kw.value, ast.Call) \
                        and isinstance(kw.value.func, ast.Attribute) and kw.value.func.attr == "join" \
                        and isinstance(kw.value.func.value, ast.Attribute) \
                        and kw.value.func.value.attr == "path":
                    first, second = kw.value.args[0], kw.value.args[1]
                    where = f"{os.path.basename(path)} line {node.lineno}"
                    assert isinstance(first, ast.Name) and first.id == "HERE", where
                    assert isinstance(second, ast.Constant) and second.value == "results", where
                    checked += 1
    assert checked >= 8

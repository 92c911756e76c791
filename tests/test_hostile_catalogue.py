"""tests/HOSTILE.md, the hostile-input catalogue, names only tests that exist."""

import ast
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def rows():
    with open(os.path.join(HERE, "HOSTILE.md"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\| (\d+) \| (\w+) \| (.+?) \| (tests/\S+?)::(\w+) \| (.+) \|$", line)
            if m:
                yield m.groups()


def test_every_row_names_a_test_that_exists_and_rows_are_numbered_in_order():
    found = list(rows())
    assert len(found) >= 40  # issue 11: at least 40 hostile tests
    assert [int(r[0]) for r in found] == list(range(1, len(found) + 1))
    for number, kind, attack, path, name, gets in found:
        assert kind in ("binary", "connection", "http", "websocket", "signals", "fuzz",
                        "files", "bus", "store", "tls"), kind
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"row {number}: no {name} in {path}"

"""Shared fixtures and helpers for every test, and the ``slow`` gate.

Two halves:

* **Generic** (top): ``netcore.testing``'s helpers, re-exported (``run_until``:
  drive an ``EventLoop`` until a condition holds; ``bound_socket``: a listening
  socket instead of a "free port" number; an echo handler and server, a test
  client socket, a refusing port, a fake clock), and the skip-or-fail rule for
  missing tools and optional packages. They never import the game, so
  ``tests/core/`` (netcore's own tests) can use them without ``spelltraction``.
* **Game** (bottom): fixtures around ``gamekit.Harness`` (a game server in this
  process). ``gamekit`` is imported inside the fixtures, so collecting netcore's
  tests never imports the game.

Plain helpers are imported as ``from conftest import run_until, Echo``
(``tests/`` is on pytest's pythonpath); fixtures are used by name.

``slow``: bots, browsers, the Tk window, the capacity smoke test, 1,000+
clients, subprocess servers that run for many seconds, and fuzzing with
hundreds of examples. ``pytest -m "not
slow"`` is the quick loop; tox runs the quick tests on every interpreter and
the slow ones on the newest; CI runs both.
"""

from __future__ import annotations

import importlib
import inspect
import os
import select
import shutil
import socket
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from netcore import EventLoop, TCPServer
from netcore.testing import (  # noqa: F401 - shared with the tests
    Echo,
    FakeClock,
    LoopClient,
    bound_socket,
    port_of,
    refusing_socket,
    run_until,
    serve,
)

# -- generic: the loop, an echo server, sockets, a clock -----------------------------
# They live in netcore.testing (they ship with netcore, for its vendoring users).

# -- generic: missing tools and optional packages --------------------------------------


def in_ci() -> bool:
    """CI sets CI=true: there every test must run, so what is missing fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(ok: object, missing: str, install: str) -> None:
    """Skip the test (outside CI) or fail it (CI=true) unless ``ok``.

    ``install`` is the exact line that puts the missing piece on this machine, e.g.
    ``apt-get install chromium``; the skip reason shows it.
    """
    if ok:
        return
    why = f"{missing} (install: {install})"
    if in_ci():
        pytest.fail(f"CI must run this test, but {why}", pytrace=False)
    pytest.skip(why)


#: Programs the end-to-end tests drive -> the Debian/Ubuntu package that installs each.
TOOLS: Dict[str, str] = {
    "chromium": "chromium",
    "nginx": "nginx-light libnginx-mod-stream",
    "openssl": "openssl",
    "Xvfb": "xvfb",
    "xdotool": "xdotool",
    "xwd": "x11-apps",
    "systemd-analyze": "systemd",
    "redis-server": "redis-server",
    "ip": "iproute2",
}


def require_tool(name: str, path: Optional[str] = None) -> str:
    """The full path of program ``name`` (or of ``path``), else skip/fail with its install line."""
    found = (path if path and os.access(path, os.X_OK) else None) if path else (
        shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin"))
    require(found, f"{path or name} is not installed",
            f"apt-get install {TOOLS.get(name, name)}")
    assert found is not None
    return found


#: Optional test-only packages (the ``test`` extra) -> the line that installs each.
PACKAGES: Dict[str, str] = {
    "prometheus_client": "pip install prometheus_client",
    "websockets": "pip install websockets",
    "playwright": "pip install playwright",
    "hypothesis": "pip install hypothesis",
}


def require_ipv6_loopback() -> None:
    """Skip (outside CI) or fail (CI=true) unless this host can bind ``::1``."""
    why = "" if socket.has_ipv6 else "this Python has no IPv6 support"
    if not why:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError as exc:
            why = f"no IPv6 loopback here ({exc})"
    require(not why, why, "sysctl -w net.ipv6.conf.lo.disable_ipv6=0")


def loopback_only(connect: Callable[..., Any]) -> Dict[str, Any]:
    """``proxy=None`` for the ``websockets`` library's ``connect`` where it takes
    one (it would follow the environment's proxy settings): tests talk to
    loopback only. Empty for versions without the parameter."""
    return {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}


_missing_in_ci: List[str] = []


def require_module(name: str) -> ModuleType:
    """Import optional test-only package ``name`` or skip, like ``pytest.importorskip``.

    Works at module level: a missing package skips only the tests that need it and never
    aborts the collection of the others. The skip names the install line. Under CI=true
    the run goes on too, but ends failed, listing what was missing.
    """
    top = name.split(".")[0]
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        why = f"{name} is not installed (install: {PACKAGES.get(top, f'pip install {top}')})"
        if in_ci():
            _missing_in_ci.append(f"{why}: {exc}")
        pytest.skip(why, allow_module_level=True)
        raise  # not reached: skip() raises


def systemd_words(words: List[str], env: Optional[Dict[str, str]] = None) -> List[str]:
    """A unit's command line (split as shlex does) with its environment variables
    expanded as systemd does: a word that is ``$VAR`` alone becomes the value's
    words (none when unset), ``${VAR}`` is replaced in place (empty when unset)."""
    import re

    env = env or {}
    out: List[str] = []
    for word in words:
        alone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if alone:
            out += env.get(alone[1], "").split()
        else:
            out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                              lambda m: env.get(m[1], m[0]), word))
    return out


def parse_metrics(text: str) -> Tuple[Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float],
                                     Dict[str, str]]:
    """Prometheus text through prometheus_client's own parser (skips if it is missing).

    ``({(sample name, ((label, value), ...)): value}, {family name: type})``.
    """
    parser = require_module("prometheus_client.parser")
    samples, types = {}, {}
    for family in parser.text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def metric(samples: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """One sample's value from ``parse_metrics``'s samples."""
    return samples[(name, tuple(sorted(labels.items())))]


# -- generic fixtures ------------------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    ev = EventLoop()
    yield ev
    ev.close()


@pytest.fixture
def echo_server(loop: EventLoop) -> Iterator[Tuple[EventLoop, TCPServer, Echo]]:
    """``(loop, server, handler)``: an ``Echo`` ``TCPServer`` listening on 127.0.0.1."""
    handler = Echo()
    _, server, _ = serve(handler, loop)
    yield loop, server, handler
    server.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A bound, listening (blocking) socket nobody accepts on until the test does."""
    sock = bound_socket()
    sock.setblocking(True)
    yield sock
    sock.close()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port of 127.0.0.1 held bound but not listening: every connection to it is refused."""
    sock = refusing_socket()
    yield port_of(sock)
    sock.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- the slow gate -----------------------------------------------------------------------------

_deselected = [0]


def pytest_deselected(items: List[pytest.Item]) -> None:
    _deselected[0] += len(items)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for why in dict.fromkeys(_missing_in_ci):
        terminalreporter.write_line(f"CI must run every test, but {why}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A ``-m`` selection that leaves no test is "nothing to do", not a failure.

    tox splits the suite with ``-m "not slow"`` and ``-m slow``; a run restricted to
    files without slow tests (``tox -e slow -- tests/test_rules.py``) must not fail
    with pytest's exit code 5. With no ``-m``, or nothing deselected, 5 stands.
    Under CI=true a missing optional package fails the run (see ``require_module``).
    """
    if (exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and _deselected[0]
            and session.config.getoption("markexpr")):
        session.exitstatus = pytest.ExitCode.OK
    if _missing_in_ci and session.exitstatus in (pytest.ExitCode.OK,
                                                  pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- game fixtures (import the game lazily) ---------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module marked ``both_pollers`` runs each harness test on each poller the loop has."""
    if ("poller" in metafunc.fixturenames
            and metafunc.definition.get_closest_marker("both_pollers") is not None):
        from netcore.poller import POLLERS

        metafunc.parametrize("poller", [
            pytest.param(kind, marks=pytest.mark.skipif(
                kind == "epoll" and not hasattr(select, "epoll"), reason="epoll is Linux-only"))
            for kind in POLLERS])


@pytest.fixture
def poller() -> Optional[str]:
    """The harness's poller (None: the default); see pytest_generate_tests."""
    return None


@pytest.fixture
def make_harness(poller: Optional[str]) -> Iterator[Callable[..., Any]]:
    """``make_harness(tick_ms=20, **ServerOptions)``: game servers closed after the test."""
    from gamekit import Harness

    made: List[Harness] = []

    def make(**opts: Any) -> Harness:
        if poller is not None:
            opts.setdefault("poller", poller)
        made.append(Harness(**opts))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def h(make_harness: Callable[..., Any]) -> Any:
    """A game server in this process on defaults (20 ms ticks, seed 1)."""
    return make_harness()


# -- end-to-end fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's /usr/bin/chromium through playwright), one per module.

    Not one per session: playwright's sync API keeps an event loop in this thread
    while it runs, and later tests that call ``asyncio.run`` would find it.

    Missing playwright or Chromium: skipped with the line that installs it (failed under CI).
    """
    from browserkit import CHROMIUM, CHROMIUM_ARGS, require_browser

    with require_browser()() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()

#!/usr/bin/env python3
"""Capacity: SpellTraction on netcore against the same game on asyncio and uvloop.

For every server and every step of a ladder of player counts, this starts the
server (pinned to CPU 0), connects ``spelltraction.py bots`` (spread over
processes, pinned to the other CPUs), holds the load, and measures:

- the server process from ``/proc/PID``: RSS, and CPU time split into user
  and system, sampled four times a second;
- the server's own tick timing (lateness p99/max, tick work p99, late and
  skipped ticks), which it writes on exit (``--stats-out``);
- the ticks it actually delivered during the hold, seen by an observer
  client the driver keeps connected (so an overloaded server's CPU is
  divided by the ticks it really ran, not the nominal 4 Hz);
- what the bots saw (``bots --json``): tick interval and move->echo latency.

``--load c`` replaces the Python bots with ``bench/peers/loadgen.c`` (built
with ``cc``): the same protocol and schedule, but enough moves for every
player moving at 15,000 players, which the Python bots, on the one core they
get, cannot send (they fall to about half the moves there). Its latency is
timed on every move, not on probes.

Two scenarios: **idle-ish** (each bot moves every 80 s, as the original's
load script) across the ladder, and **active** (every bot moves every tick)
at 5,000 players. Steps are interleaved across servers (1,000 for each
server, then 5,000 for each, ...) so that the servers being compared are
measured minutes, not a quarter of an hour, apart on a shared machine.

A third, the **tick-rate axis** (``--tick-axis 250,100,50``), asks what the
servers do at 10 or 20 Hz: for each tick period, an idle-ish ladder
(``--tick-ladder``) per server, and the most players each holds, "held"
meaning the server's tick lateness p99 under 10 ms and every player
receiving at least 99 % of the ticks (counted by tick number, so skipped
ticks count as missed). Once a step misses, that server's larger steps at
that period are not run. Where a server cannot hold the rate, the table
gives the ticks it delivered (the observer's count), not the nominal rate;
the bots' CPU is reported next to the server's, since at 20 Hz the Python
bots on one core may be what gives out first.

Our server runs as shipped, its store on (sqlite3 in a fresh ``--data``
directory per step, removed after it): the memory targets are for the
default configuration. ``--ours-store off`` runs it memory only
(``--no-data``), as the peers are.

Why a fresh server per step rather than one server ramped up the ladder:
each step then has its own clean baseline (RSS per player is the step's RSS
minus the same process's RSS before any player joined, with no allocator
high-water mark left over from a bigger step), its own bots run and thus its
own latency figures (the bots report once, at the end), and a failure at
19,000 cannot taint the 10,000 figures. It costs a few seconds of ramp per
step, which the budget below accounts for.

Ports: the bots close with RST (SO_LINGER 0), so neither side keeps
TIME_WAIT entries; each step also uses a fresh server port, so a connection
left in TIME_WAIT by an earlier step can never collide with a new 4-tuple.
Before each step the driver counts the loopback sockets in use and waits if
the ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``) would not
hold the step.

The whole default run (3 servers x 5 steps + 3 active steps) is budgeted to
finish in under 15 minutes: ``--budget`` (default 840 s) is split between the
steps from an estimate of each step's ramp, and holds shrink if the run falls
behind. Every process is started in its own process group and killed (only
those groups) on exit, on Ctrl-C and on SIGTERM; with Linux's
PR_SET_PDEATHSIG they die even if the driver is killed outright.

    python3 bench/capacity.py --server all                       # the full run
    python3 bench/capacity.py --ladder 200,1000 --hold 5         # a quick look
    python3 bench/capacity.py --server ours,asyncio --ladder 200 --active 200 --hold 2
    python3 bench/capacity.py --ladder none --active 0 --tick-axis 250,100,50 --hold 8 \
        --budget 1800 --json bench/results/tick-rates.json --report '' --svg ''

Outputs, all under the ignored ``bench/results/`` unless told otherwise:
``capacity.json`` (every sample), ``capacity.html`` (the report, inline SVG
charts, stdlib only), ``capacity.svg`` (the four charts as one image) and a
Markdown table on stdout (also saved beside the JSON as ``capacity.md``).
The chart in docs/MEASURED.md is a committed copy of one run's; a run
replaces it only when asked: ``--svg docs/img/capacity.svg``.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import select
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import (
    Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, TypedDict, cast,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GAME = os.path.join(ROOT, "spelltraction.py")
PEER = os.path.join(HERE, "peers", "asyncio_server.py")
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from procstat import (  # noqa: E402
    Children, build_c, cpu_runtime, cpu_seconds, cpu_sets, free_port, group_cpu_seconds, machine, median,
    read_line, rss_bytes, stoppable, wait_for_ports,
)
from report import (  # noqa: E402
    Series, composite_svg, fmt, fmt_table, html_page, html_table, line_chart,
)

from netcore import FrameParser  # noqa: E402
from netcore.poller import DEFAULT_POLLER, POLLERS  # noqa: E402
from netcore.stats import percentile  # noqa: E402

SERVERS = ("ours", "asyncio", "uvloop")
LABELS = {"ours": "netcore (ours)", "asyncio": "asyncio", "uvloop": "uvloop"}
COLOURS = {"ours": "#1b6ac9", "asyncio": "#e8710a", "uvloop": "#2a9d3c"}
# --pollers: our server once per poller, side by side. "ours" runs as shipped
# (the default poller, epoll on Linux); "ours-selectors" with --poller selectors.
for _poller, _colour in zip([p for p in POLLERS if p != DEFAULT_POLLER], ("#7b2cbf", "#c2185b")):
    LABELS[f"ours-{_poller}"] = f"netcore (ours, {_poller})"
    COLOURS[f"ours-{_poller}"] = _colour


def ours_kind(poller: str) -> str:
    """Our server's name in the steps when it runs on ``poller``."""
    return "ours" if poller == DEFAULT_POLLER else f"ours-{poller}"


def is_ours(kind: str) -> bool:
    return kind == "ours" or kind.startswith("ours-")
DEFAULT_LADDER = (1000, 5000, 10000, 15000, 19000)
IDLE, ACTIVE, RATE = "idle", "active", "rate"
SCENARIO_ORDER = {IDLE: 0, ACTIVE: 1, RATE: 2}
IDLE_MOVE_EVERY = 80.0  # the original's load script
ACTIVE_MOVE_EVERY = 0.25  # every tick
TICK_MS = 250
# The tick-rate axis: a step "holds" its tick period when the server's own
# tick lateness p99 stays under this and every player gets this share of ticks.
HELD_LATENESS_P99_MS = 10.0
HELD_TICK_FRACTION = 0.99
DEFAULT_TICK_LADDER = (1000, 2500, 5000, 10000, 15000)
SAMPLE_EVERY = 0.25  # seconds between /proc samples
BOTS_SAMPLE_EVERY = 0.5  # the bots' CPU: a scan of all of /proc, so less often

# Budget model, calibrated on the 2-core machine this runs on: a step costs a
# fixed overhead (start the server, settle, start the bots, stop both) plus
# the ramp (bots connect at a few thousand per second; asyncio under load is
# the slowest) plus the hold.
STEP_OVERHEAD_S = 5.0
RAMP_PLAYERS_PER_S = 1500.0
MIN_HOLD_S = 6.0
DEFAULT_BUDGET_S = 840.0  # 14 minutes: the run must end in under 15

HOST = "127.0.0.1"


# =============================================================================
# Observer: one quiet client that timestamps the ticks the server delivers.
# =============================================================================


class Observer:
    """Counts delivered ticks during the hold (the players' view of the tick rate)."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        import spelltraction as st

        self._tick_kind = st.TICK
        self._welcome_kind = st.WELCOME
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.sendall(st.frame(st.Hello()))
        self.parser = FrameParser(65535)
        self.ticks: List[Tuple[float, int]] = []  # (driver clock, TICK number)
        self.welcomed = False
        deadline = time.monotonic() + timeout
        while not self.welcomed:
            if time.monotonic() > deadline:
                raise RuntimeError("observer: no WELCOME from the server")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            self._handle(self.sock.recv(65536), time.monotonic())
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self) -> None:
        now = time.monotonic()
        while True:
            try:
                data = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                raise RuntimeError("observer: the server closed the connection")
            self._handle(data, now)

    def _handle(self, data: bytes, now: float) -> None:
        if not data:
            raise RuntimeError("observer: the server closed the connection")
        for payload in self.parser.feed(data):
            if payload[0] == self._tick_kind:
                self.ticks.append((now, int.from_bytes(payload[1:5], "big")))
            elif payload[0] == self._welcome_kind:
                self.welcomed = True

    def close(self) -> None:
        self.sock.close()


# =============================================================================
# One step: a server, N bots, a hold; figures out.
# =============================================================================


class StepPlan(NamedTuple):
    server: str
    scenario: str  # IDLE, ACTIVE or RATE (idle-ish, on the tick-rate axis)
    players: int
    tick_ms: int = TICK_MS
    repeat: int = 0  # which of --repeats runs of this step (servers' order rotating)

    @property
    def move_every(self) -> float:
        return ACTIVE_MOVE_EVERY if self.scenario == ACTIVE else IDLE_MOVE_EVERY

    def label(self) -> str:
        text = f"{self.server} {self.scenario} {self.players}"
        text += f" #{self.repeat + 1}" if self.repeat else ""
        return text + f" @{self.tick_ms} ms" if self.scenario == RATE else text


class Derived(TypedDict, total=False):
    """A step's figures, from its samples and the two reports (:func:`derive`).

    Keys are missing where the step did not get far enough to measure them;
    ``ok`` says whether it did.
    """

    ok: bool
    players: int  #: bots connected (the bots' own count)
    window_samples: int  #: /proc samples in the hold window (settle .. hold)
    window_s: float
    cpu_pct: float  #: user + system, % of one core, over the window
    cpu_user_pct: float
    cpu_system_pct: float
    rss_mb: float  #: median RSS over the window
    rss_start_mb: float  #: RSS before any player joined
    bytes_per_player: float  #: (rss - rss_start) / players
    observer_interval_p99_ms: float  #: gaps between ticks the observer received
    tick_rate_hz: float  #: ticks the observer received per second (0 if none)
    tick_rate_nominal_hz: float
    cpu_s_per_tick: float  #: CPU per delivered tick (not per nominal tick)
    cpu_user_s_per_tick: float
    cpu_us_per_player_tick: float
    cpu_user_us_per_player_tick: float
    # The server's own tick figures (--stats-out), over its last 1,024 ticks.
    tick_lateness_p99_ms: float
    tick_lateness_p50_ms: float
    tick_lateness_max_ms: float
    tick_work_p99_ms: float
    ticks_fired: int
    ticks_late: int
    ticks_skipped: int
    # As the bots reported them (bots --json).
    failed: Optional[int]
    dropped: Optional[int]
    ramp_s: Optional[float]
    tick_interval_ms_p50: Optional[float]
    tick_interval_ms_p99: Optional[float]
    move_latency_ms_p50: Optional[float]
    move_latency_ms_p99: Optional[float]
    latency_samples: Optional[int]
    bots_below_95pct_ticks: Optional[int]
    tick_fraction_min: Optional[float]
    bots_cpu_pct: float  #: the bots' process group, % of one core, over the window


class _StepStart(TypedDict):
    server: str  #: ours, asyncio or uvloop
    scenario: str  #: IDLE, ACTIVE or RATE
    players_target: int
    move_every_s: float
    hold_s: float
    settle_s: float
    tick_ms: int
    port: int
    started_at: str  #: wall clock, HH:MM:SS
    samples: List[List[float]]  #: [t, RSS bytes, user s, system s, runtime s], t from start
    observer_ticks: List[List[float]]  #: [t, TICK number] the observer received
    bots: Optional[Dict[str, Any]]  #: the bots' --json report
    server_final: Optional[Dict[str, Any]]  #: the server's --stats-out figures
    errors: List[str]  #: what went wrong; empty for a good step


class Step(_StepStart, total=False):
    """One step's record, as written to capacity.json: raw samples and reports,
    then :class:`Derived` figures. Times (``*_s``) count from the server's start."""

    store: bool  #: our server ran with its store on (a --data directory), as shipped
    repeat: int  #: which of --repeats runs of this step
    ports_before: Dict[str, int]  #: loopback ports in use before the step
    logs: List[str]  #: the children's stderr, under capacity-logs/
    pids: List[int]  #: server, bots (each the leader of its process group)
    rss_start: float  #: bytes, before any player joined
    bots_started_s: float
    ramp_done_s: float  #: when the bots printed their ramp line
    bots_exit: int
    server_exit: Optional[int]
    bots_cpu: List[List[float]]  #: [t, CPU s of the bots' process group], twice a second
    derived: Derived


OURS_EXTRA: List[str] = []  # --ours-args: more arguments for our server
# --ours-store: our server as shipped, its store on (a fresh --data directory per step),
# or memory only (--no-data) like the peers
OURS_STORE = [True]
LOAD_LABELS = {"python": "bots", "c": "C players (bench/peers/loadgen.c)"}
# --load c: the C players (bench/peers/loadgen.c), built at start; else the Python bots
LOADGEN: List[str] = []


def load_command(port: int, players: int, hold: float, move_every: float, probes: int,
                 ramp_timeout: float) -> List[str]:
    """The players: ``spelltraction.py bots``, or the C load generator (--load c)."""
    head = LOADGEN or [sys.executable, GAME, "bots"]
    return [*head, "--host", HOST, "--port", str(port), "--count", str(players),
            "--duration", str(hold), "--move-every", str(move_every), "--probes", str(probes),
            "--ramp-timeout", str(ramp_timeout), "--json"]


def server_command(kind: str, port: int, max_clients: int, stats_out: str,
                   tick_ms: int, data: Optional[str] = None) -> List[str]:
    common = ["--host", HOST, "--port", str(port), "--tick-ms", str(tick_ms),
              "--max-clients", str(max_clients), "--stats-out", stats_out,
              "--log-level", "warning"]
    if is_ours(kind):
        store = ["--data", data] if data else ["--no-data"]
        poller = ["--poller", kind.split("-", 1)[1]] if kind != "ours" else []
        return [sys.executable, GAME, "serve", *store, *common, *poller, *OURS_EXTRA]
    if kind == "asyncio":
        return [sys.executable, PEER, *common]
    if kind == "uvloop":
        return [sys.executable, PEER, "--uvloop", *common]
    raise ValueError(f"unknown server {kind!r}")


def run_step(children: Children, plan: StepPlan, hold: float, settle: float, tick_ms: int,
             ramp_timeout: float, probes: int, log: Callable[[str], None]) -> Step:
    """Run one step and return everything measured (raw samples included)."""
    server_cpus, load_cpus = cpu_sets()
    port = free_port(HOST)
    fd, stats_file = tempfile.mkstemp(prefix="capacity-", suffix=".json")
    os.close(fd)
    os.unlink(stats_file)  # the server creates it on exit: its presence means a clean stop
    step: Step = {
        "server": plan.server, "scenario": plan.scenario, "players_target": plan.players,
        "move_every_s": plan.move_every, "hold_s": hold, "settle_s": settle, "tick_ms": tick_ms,
        "port": port, "started_at": time.strftime("%H:%M:%S"), "samples": [],
        "observer_ticks": [], "bots": None, "server_final": None, "errors": [],
    }
    step["ports_before"] = wait_for_ports(plan.players + 1, log)
    # Picked again after the wait: on a shared host another process's client
    # may have taken the first pick as its ephemeral port meanwhile.
    step["port"] = port = free_port(HOST)
    name = f"{plan.server}-{plan.scenario}-{plan.players}" + (
        f"-{plan.repeat + 1}" if plan.repeat else "")
    step["logs"] = [f"{name}-server.log", f"{name}-bots.log"]
    data = (tempfile.mkdtemp(prefix="capacity-data-")
            if is_ours(plan.server) and OURS_STORE[0] else None)
    step["store"] = data is not None
    server = children.start(
        server_command(plan.server, port, plan.players + 100, stats_file, tick_ms, data),
        server_cpus, f"{name}-server")
    step["pids"] = [server.pid]
    bots: Optional["subprocess.Popen[str]"] = None
    observer: Optional[Observer] = None
    samples: List[List[float]] = step["samples"]
    bots_cpu: List[List[float]] = []
    t0 = time.monotonic()

    def sample() -> None:
        """[t, RSS bytes, user s, system s, runtime s] (runtime: ns-precise user + system)."""
        try:
            user, system = cpu_seconds(server.pid)
            runtime = cpu_runtime(server.pid)
            samples.append([round(time.monotonic() - t0, 4), rss_bytes(server.pid), user, system,
                            round(runtime, 6)])
        except (OSError, ValueError, IndexError):
            pass

    try:
        line = read_line(server, 15.0)
        if "listening" not in line:
            raise RuntimeError(f"server did not start: {line!r} "
                               f"{children.log_tail(name + '-server')}")
        time.sleep(0.5)
        sample()
        step["rss_start"] = samples[-1][1]
        observer = Observer(port)
        cmd = load_command(port, plan.players, hold, plan.move_every, probes, ramp_timeout)
        bots = children.start(cmd, load_cpus, f"{name}-bots")
        step["pids"].append(bots.pid)
        log(f"  server pid {server.pid}, bots pid {bots.pid} (process groups)")
        assert bots.stdout is not None
        t_bots = time.monotonic() - t0
        step["bots_started_s"] = round(t_bots, 3)
        step["bots_cpu"] = bots_cpu
        next_bots_sample = time.monotonic()
        lines: List[str] = []
        partial = ""
        next_sample = time.monotonic()
        hard_deadline = time.monotonic() + ramp_timeout + hold + 60
        bots_out = bots.stdout.fileno()
        bots_open = True
        while bots_open or bots.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                sample()
                next_sample += SAMPLE_EVERY
                if next_sample < now:
                    next_sample = now + SAMPLE_EVERY
            if now >= next_bots_sample:  # bots and their workers: a /proc scan
                bots_cpu.append([round(now - t0, 4), round(group_cpu_seconds(bots.pid), 3)])
                next_bots_sample = now + BOTS_SAMPLE_EVERY
            if now > hard_deadline:
                raise RuntimeError("bots did not finish in time")
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode} during the step")
            watch: List[Any] = [observer]
            if bots_open:
                watch.append(bots_out)
            ready, _, _ = select.select(watch, [], [], max(0.0, next_sample - time.monotonic()))
            if observer in ready:
                observer.pump()
            if bots_out in ready:
                chunk = os.read(bots_out, 65536).decode()
                if not chunk:
                    bots_open = False
                    continue
                partial += chunk
                *done, partial = partial.split("\n")
                for text in done:
                    lines.append(text)
                    if text.startswith("ramp"):
                        step["ramp_done_s"] = round(time.monotonic() - t0, 3)
                        log(f"  {text.strip()}")
        sample()
        step["bots_exit"] = bots.wait()
        if partial:
            lines.append(partial)
        json_lines = [x for x in lines if x.startswith("{")]
        if not json_lines:
            raise RuntimeError(f"bots printed no figures: {children.log_tail(name + '-bots')}")
        step["bots"] = json.loads(json_lines[-1])
        step["observer_ticks"] = [[round(t - t0, 4), n] for t, n in observer.ticks]
    except Exception as exc:  # noqa: BLE001 - one failed step must not lose the run
        step["errors"].append(f"{type(exc).__name__}: {exc}")
        log(f"  step failed: {exc}")
    finally:
        if observer is not None:
            observer.close()
        if bots is not None:
            children.stop(bots, timeout=5.0)
        step["server_exit"] = children.stop(server, timeout=15.0)
        if server.returncode not in (0, None) and not step["errors"]:
            step["errors"].append(f"server exited with {server.returncode}")
        try:
            with open(stats_file) as f:
                step["server_final"] = json.load(f)
        except (OSError, ValueError):
            step["errors"].append("server wrote no --stats-out figures")
        finally:
            if os.path.exists(stats_file):
                os.unlink(stats_file)
            if data is not None:
                shutil.rmtree(data, ignore_errors=True)
    step["derived"] = derive(step)
    return step


def derive(step: Step) -> Derived:
    """The step's figures, from its raw samples, the server's and the bots' reports."""
    out: Derived = {}
    bots = step.get("bots") or {}
    final = step.get("server_final") or {}
    ticks = final.get("ticks") or {}
    players = int(bots.get("connected", 0))
    out["players"] = players
    samples = step.get("samples") or []
    ramp_done = step.get("ramp_done_s")
    hold = float(step.get("hold_s", 0.0))
    window: List[List[float]] = []
    if ramp_done is not None and samples:
        start = ramp_done + float(step.get("settle_s", 0.0))
        end = ramp_done + hold
        window = [s for s in samples if start <= s[0] <= end]
    out["window_samples"] = len(window)
    if len(window) >= 2:
        wall = window[-1][0] - window[0][0]
        # The total from the scheduler's ns-precise runtime; the user/system
        # split from /proc/PID/stat's clock-tick counts, in proportion.
        total = window[-1][4] - window[0][4]
        ticks_user = window[-1][2] - window[0][2]
        ticks_system = window[-1][3] - window[0][3]
        user_share = ticks_user / (ticks_user + ticks_system) if ticks_user + ticks_system else 0.5
        user, system = total * user_share, total * (1 - user_share)
        out["window_s"] = round(wall, 3)
        out["cpu_pct"] = 100.0 * (user + system) / wall
        out["cpu_user_pct"] = 100.0 * user / wall
        out["cpu_system_pct"] = 100.0 * system / wall
        out["rss_mb"] = median(s[1] for s in window) / 1e6
        rss_start = step.get("rss_start", window[0][1])
        out["rss_start_mb"] = rss_start / 1e6
        out["bytes_per_player"] = (median(s[1] for s in window) - rss_start) / max(1, players)
        obs = [(t, n) for t, n in step.get("observer_ticks") or []
               if window[0][0] <= t <= window[-1][0]]
        nominal = 1000.0 / float(step.get("tick_ms", TICK_MS))
        if len(obs) >= 2 and obs[-1][0] > obs[0][0]:
            rate = (obs[-1][1] - obs[0][1]) / (obs[-1][0] - obs[0][0])
            gaps = [b[0] - a[0] for a, b in zip(obs, obs[1:])]
            out["observer_interval_p99_ms"] = percentile(gaps, 99) * 1000
        else:
            rate = 0.0
        out["tick_rate_hz"] = rate
        bots_window = [b for b in step.get("bots_cpu") or [] if start <= b[0] <= end]
        if len(bots_window) >= 2 and bots_window[-1][0] > bots_window[0][0]:
            out["bots_cpu_pct"] = 100.0 * ((bots_window[-1][1] - bots_window[0][1])
                                           / (bots_window[-1][0] - bots_window[0][0]))
        out["tick_rate_nominal_hz"] = nominal
        if rate > 0 and players > 0:
            out["cpu_s_per_tick"] = (user + system) / wall / rate
            out["cpu_user_s_per_tick"] = user / wall / rate
            out["cpu_us_per_player_tick"] = out["cpu_s_per_tick"] / players * 1e6
            out["cpu_user_us_per_player_tick"] = out["cpu_user_s_per_tick"] / players * 1e6
    if ticks:
        out["tick_lateness_p99_ms"] = ticks["lateness_p99_s"] * 1000
        out["tick_lateness_p50_ms"] = ticks["lateness_p50_s"] * 1000
        out["tick_lateness_max_ms"] = ticks["lateness_max_s"] * 1000
        out["tick_work_p99_ms"] = ticks["duration_p99_s"] * 1000
        out["ticks_fired"] = ticks["fired"]
        out["ticks_late"] = ticks["late"]
        out["ticks_skipped"] = ticks["skipped"]
    if bots:
        out["failed"] = bots.get("failed")
        out["dropped"] = bots.get("dropped")
        out["ramp_s"] = bots.get("ramp_s")
        out["tick_interval_ms_p50"] = bots.get("tick_interval_ms_p50")
        out["tick_interval_ms_p99"] = bots.get("tick_interval_ms_p99")
        out["move_latency_ms_p50"] = bots.get("move_latency_ms_p50")
        out["move_latency_ms_p99"] = bots.get("move_latency_ms_p99")
        out["latency_samples"] = bots.get("latency_samples")
        out["bots_below_95pct_ticks"] = bots.get("bots_below_95pct_ticks")
        out["tick_fraction_min"] = bots.get("tick_fraction_min")
    out["ok"] = bool(bots) and not step.get("errors") and "cpu_pct" in out
    return out


# =============================================================================
# Planning and the budget
# =============================================================================


def estimate_step(players: int, hold: float, server: str) -> float:
    ramp = players / RAMP_PLAYERS_PER_S
    if not is_ours(server):
        ramp *= 1.5  # asyncio/uvloop accept between ticks that take most of the period
    return STEP_OVERHEAD_S + ramp + hold + 2.0


def rotated(servers: Sequence[str], repeat: int) -> List[str]:
    """The servers' order for one repeat: each goes first in turn."""
    k = repeat % len(servers) if servers else 0
    return list(servers[k:]) + list(servers[:k])


def plan_steps(servers: Sequence[str], ladder: Sequence[int], active: int,
               tick_ms: int = TICK_MS, tick_axis: Sequence[int] = (),
               tick_ladder: Sequence[int] = DEFAULT_TICK_LADDER,
               repeats: int = 1) -> List[StepPlan]:
    """Each ladder step (then the active one) ``repeats`` times, the servers alternating
    within each and their order rotating between repeats; then the tick-rate axis."""
    steps = [StepPlan(s, IDLE, n, tick_ms, r) for n in ladder for r in range(repeats)
             for s in rotated(servers, r)]
    if active > 0:
        steps += [StepPlan(s, ACTIVE, active, tick_ms, r) for r in range(repeats)
                  for s in rotated(servers, r)]
    steps += [StepPlan(s, RATE, n, period) for period in tick_axis for n in tick_ladder
              for s in servers]
    return steps


def held(d: Derived) -> bool:
    """Did this step hold its tick period (the tick-rate axis's criterion)?"""
    return (bool(d.get("ok")) and not d.get("failed") and not d.get("dropped")
            and d.get("tick_lateness_p99_ms", float("inf")) < HELD_LATENESS_P99_MS
            and (d.get("tick_fraction_min") or 0.0) >= HELD_TICK_FRACTION)


def fit_hold(steps: Sequence[StepPlan], hold: float, budget: float) -> float:
    """The longest hold <= ``hold`` for which the estimate fits ``budget``."""
    fixed = sum(estimate_step(p.players, 0.0, p.server) for p in steps)
    if not steps:
        return hold
    room = (budget - fixed) / len(steps)
    return max(min(MIN_HOLD_S, hold), min(hold, room))


def fmt_clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


# =============================================================================
# Slopes and targets
# =============================================================================


def least_squares(points: Sequence[Tuple[float, float]]) -> Tuple[float, float]:
    """(slope, intercept) of the least-squares line through ``points``."""
    n = len(points)
    if n == 0:
        return 0.0, 0.0
    if n == 1:
        x, y = points[0]
        return (y / x if x else 0.0), 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return 0.0, my
    slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    return slope, my - slope * mx


def ok_steps(steps: Iterable[Step], server: str, scenario: str) -> List[Step]:
    return sorted((s for s in steps if s["server"] == server and s["scenario"] == scenario
                   and s["derived"].get("ok")), key=lambda s: s["derived"]["players"])


def compute_slopes(steps: List[Step], servers: Sequence[str]) -> Dict[str, Any]:
    """Per server: bytes per player and CPU us per player per tick, least squares over the ladder."""
    out: Dict[str, Any] = {}
    for server in servers:
        idle = ok_steps(steps, server, IDLE)
        active = ok_steps(steps, server, ACTIVE)
        # Each step's own RSS before any player joined is a measured point at 0 players.
        rss_pts = [(s["derived"]["players"], s["derived"]["rss_mb"] * 1e6) for s in idle]
        rss_pts += [(0, s["derived"]["rss_start_mb"] * 1e6) for s in idle]
        cpu_pts = [(s["derived"]["players"], s["derived"]["cpu_s_per_tick"]) for s in idle
                   if "cpu_s_per_tick" in s["derived"]]
        user_pts = [(s["derived"]["players"], s["derived"]["cpu_user_s_per_tick"]) for s in idle
                    if "cpu_user_s_per_tick" in s["derived"]]
        rss_slope, rss_icpt = least_squares(rss_pts)
        cpu_slope, cpu_icpt = least_squares(cpu_pts)
        user_slope, _ = least_squares(user_pts)
        entry: Dict[str, Any] = {
            "steps": len(idle),
            "bytes_per_player": rss_slope,
            "rss_intercept_mb": rss_icpt / 1e6,
            "cpu_us_per_player_tick": cpu_slope * 1e6,
            "cpu_ms_per_tick_intercept": cpu_icpt * 1e3,
            # User time only: the part a server's own code decides (on loopback
            # the kernel's send path, charged as system time, is most of a send).
            "cpu_user_us_per_player_tick": user_slope * 1e6,
        }
        if active:
            d = active[-1]["derived"]
            entry["active_players"] = d["players"]
            entry["active_cpu_us_per_player_tick"] = d.get("cpu_us_per_player_tick")
            entry["active_cpu_user_us_per_player_tick"] = d.get("cpu_user_us_per_player_tick")
            entry["active_cpu_pct"] = d.get("cpu_pct")
        out[server] = entry
    return out


def check_targets(steps: List[Step], slopes: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The targets, where this run has the figures to judge them."""
    out: List[Dict[str, Any]] = []
    ours, base = slopes.get("ours"), slopes.get("asyncio")

    def ratio_target(name: str, key: str, limit: float) -> None:
        if not ours or not base or ours.get(key) is None or base.get(key) is None:
            return
        a, b = ours[key], base[key]
        if b <= 0:  # too short a hold to see any CPU time (the clock ticks at 10 ms)
            out.append({"target": name, "measured": f"n/a ({a:.2f} vs {b:.2f})",
                        "limit": f"<= {limit}x", "met": None})
            return
        out.append({"target": name, "measured": f"{a / b:.2f}x ({a:.2f} vs {b:.2f})",
                    "limit": f"<= {limit}x", "met": a / b <= limit})

    ratio_target("RSS per player, ours / asyncio", "bytes_per_player", 0.5)
    ratio_target("CPU per player-tick (idle-ish), ours / asyncio", "cpu_us_per_player_tick", 0.8)
    ratio_target("CPU per player-tick (active), ours / asyncio",
                 "active_cpu_us_per_player_tick", 0.8)
    top = ok_steps(steps, "ours", IDLE)
    if top:
        d = top[-1]["derived"]
        p99 = d.get("tick_lateness_p99_ms", float("inf"))
        rate = d.get("tick_rate_hz", 0.0)
        held = rate >= 0.97 * d.get("tick_rate_nominal_hz", 4.0) and d.get("ticks_skipped", 1) == 0
        out.append({"target": f"ours at {d['players']} players: tick held, p99 lateness < 50 ms",
                    "measured": f"{rate:.2f} Hz, {d.get('ticks_skipped')} skipped, "
                                f"p99 {p99:.1f} ms",
                    "limit": "4 Hz, p99 < 50 ms", "met": held and p99 < 50.0})
    return out


# =============================================================================
# Charts: inline SVG, standard library only
# =============================================================================


def charts(steps: List[Step], servers: Sequence[str]) -> List[str]:
    """The four charts: RSS, CPU %, tick lateness p99, client-seen latency."""

    def pts(server: str, scenario: str, key: str, scale: float = 1.0) -> List[Tuple[float, float]]:
        figures = [cast(Dict[str, Any], s["derived"]) for s in ok_steps(steps, server, scenario)]
        return [(float(d["players"]), float(d[key]) * scale)
                for d in figures if d.get(key) is not None]

    def with_active(key: str, scale: float = 1.0) -> List[Series]:
        out = [Series(LABELS[s], COLOURS[s], pts(s, IDLE, key, scale)) for s in servers]
        out += [Series(f"{LABELS[s]}, active", COLOURS[s], pts(s, ACTIVE, key, scale),
                       marker="diamond", line=False) for s in servers]
        return out

    rss = line_chart("Server RSS", "MB", with_active("rss_mb"))
    cpu = line_chart("Server CPU (one core = 100 %)", "% of one core", with_active("cpu_pct"))
    late = line_chart("Tick lateness p99 (server's own)", "ms (log)",
                      with_active("tick_lateness_p99_ms"), log_y=True,
                      target=(50.0, "target 50 ms"))
    lat: List[Series] = []
    for s in servers:
        lat.append(Series(f"{LABELS[s]} p99", COLOURS[s], pts(s, IDLE, "move_latency_ms_p99")))
        lat.append(Series(f"{LABELS[s]} p50", COLOURS[s], pts(s, IDLE, "move_latency_ms_p50"),
                          dash="5,4"))
    client = line_chart("Move -> echo latency seen by clients", "ms (log)", lat, log_y=True)
    return [rss, cpu, late, client]


# =============================================================================
# Tables and the report
# =============================================================================


def step_order(s: Step, servers: Dict[str, int]) -> Tuple[int, int, int, int]:
    """Idle-ish, then active, then the tick-rate axis (slowest tick first); by players."""
    return (SCENARIO_ORDER.get(s["scenario"], 9), -s["tick_ms"], s["players_target"],
            servers.get(s["server"], 9))


def scenario_label(s: Step) -> str:
    return f"rate {s['tick_ms']} ms" if s["scenario"] == RATE else s["scenario"]


def step_rows(steps: List[Step], servers: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    headers = ["scenario", "players", "server", "RSS MB", "CPU % (user+sys)", "tick p99 ms",
               "tick max ms", "ticks/s held", "client p50/p99 ms", "B/player", "us/player-tick",
               "notes"]
    order = {s: i for i, s in enumerate(servers)}
    rows: List[List[str]] = []
    for s in sorted(steps, key=lambda s: step_order(s, order)):
        d = s["derived"]
        notes = []
        if d.get("failed"):
            notes.append(f"{d['failed']} failed")
        if d.get("dropped"):
            notes.append(f"{d['dropped']} dropped")
        if d.get("ticks_skipped"):
            notes.append(f"{d['ticks_skipped']} ticks skipped")
        notes += s.get("errors") or []
        cpu = "-"
        if "cpu_pct" in d:
            cpu = f"{d['cpu_pct']:.1f} ({d['cpu_user_pct']:.1f}+{d['cpu_system_pct']:.1f})"
        rows.append([
            scenario_label(s), str(d.get("players") or s["players_target"]), LABELS[s["server"]],
            fmt(d.get("rss_mb"), ".1f"), cpu, fmt(d.get("tick_lateness_p99_ms"), ".1f"),
            fmt(d.get("tick_lateness_max_ms"), ".0f"), fmt(d.get("tick_rate_hz"), ".2f"),
            f"{fmt(d.get('move_latency_ms_p50'), '.0f')} / {fmt(d.get('move_latency_ms_p99'), '.0f')}",
            fmt(d.get("bytes_per_player"), ".0f"), fmt(d.get("cpu_us_per_player_tick"), ".2f"),
            "; ".join(notes),
        ])
    return headers, rows


def slope_rows(slopes: Dict[str, Any], servers: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    headers = ["server", "bytes / player", "CPU us / player-tick, idle-ish: total (user)",
               "CPU us / player-tick, active: total (user)",
               "vs asyncio: RSS, CPU idle-ish, CPU active"]
    base = slopes.get("asyncio") or {}
    rows = []
    for s in servers:
        e = slopes.get(s)
        if not e:
            continue

        def rel(key: str) -> str:
            a, b = e.get(key), base.get(key)
            return f"{a / b:.2f}x" if a is not None and b else "-"

        rows.append([LABELS[s], fmt(e.get("bytes_per_player"), ".0f"),
                     f"{fmt(e.get('cpu_us_per_player_tick'), '.2f')} "
                     f"({fmt(e.get('cpu_user_us_per_player_tick'), '.2f')})",
                     f"{fmt(e.get('active_cpu_us_per_player_tick'), '.2f')} "
                     f"({fmt(e.get('active_cpu_user_us_per_player_tick'), '.2f')})",
                     f"{rel('bytes_per_player')}, {rel('cpu_us_per_player_tick')} "
                     f"(user {rel('cpu_user_us_per_player_tick')}), "
                     f"{rel('active_cpu_us_per_player_tick')} "
                     f"(user {rel('active_cpu_user_us_per_player_tick')})"])
    return headers, rows


def readme_rows(steps: List[Step], servers: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    """The short table: servers x steps, RSS, CPU % and tick p99."""
    headers = ["players", "server", "RSS MB", "CPU %", "tick lateness p99 ms", "ticks/s"]
    order = {s: i for i, s in enumerate(servers)}
    rows: List[List[str]] = []
    for s in sorted(steps, key=lambda s: step_order(s, order)):
        d = s["derived"]
        players = str(d.get("players") or s["players_target"])
        if s["scenario"] == ACTIVE:
            players += " active"
        elif s["scenario"] == RATE:
            players += f" @{s['tick_ms']} ms"
        rows.append([players, LABELS[s["server"]], fmt(d.get("rss_mb"), ".1f"),
                     fmt(d.get("cpu_pct"), ".1f"), fmt(d.get("tick_lateness_p99_ms"), ".1f"),
                     fmt(d.get("tick_rate_hz"), ".2f")])
    return headers, rows


def tick_rate_rows(steps: List[Step],
                   servers: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    """The tick-rate axis: per tick period and server, the most players held."""
    headers = ["tick period", "server",
               f"most players held (tick p99 < {HELD_LATENESS_P99_MS:g} ms, every player "
               f">= {HELD_TICK_FRACTION:.0%} of ticks)", "server CPU % there", "bots CPU % there",
               "next step up: players, ticks/s delivered (nominal), tick p99 ms, "
               "fewest ticks a player got"]
    rate = [s for s in steps if s["scenario"] == RATE]
    rows: List[List[str]] = []
    for period in sorted({s["tick_ms"] for s in rate}, reverse=True):
        for server in servers:
            mine = sorted((s for s in rate if s["tick_ms"] == period and s["server"] == server),
                          key=lambda s: s["players_target"])
            if not mine:
                continue
            best: Optional[Step] = None
            miss: Optional[Step] = None
            for s in mine:
                if not held(s["derived"]):
                    miss = s
                    break
                best = s
            cells = [f"{period} ms ({1000 / period:g} Hz)", LABELS[server]]
            if best is not None:
                b = best["derived"]
                cells += [str(b.get("players")) + ("" if miss else " (all)"),
                          fmt(b.get("cpu_pct"), ".1f"), fmt(b.get("bots_cpu_pct"), ".1f")]
            else:
                cells += [f"< {mine[0]['players_target']}", "-", "-"]
            if miss is not None:
                m = miss["derived"]
                frac = m.get("tick_fraction_min")
                cells.append(f"{m.get('players') or miss['players_target']}: "
                             f"{fmt(m.get('tick_rate_hz'), '.2f')} "
                             f"({fmt(m.get('tick_rate_nominal_hz'), 'g')}), "
                             f"{fmt(m.get('tick_lateness_p99_ms'), '.1f')}, "
                             + ("-" if frac is None else f"{frac:.1%}")
                             + ("; " + "; ".join(miss["errors"]) if miss["errors"] else ""))
            else:
                cells.append("-")
            rows.append(cells)
    return headers, rows


def _met(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")


def markdown(result: Dict[str, Any]) -> str:
    servers = result["servers"]
    steps = result["steps"]
    h, rows = step_rows(steps, servers)
    sh, srows = slope_rows(result["slopes"], servers)
    rh, rrows = readme_rows(steps, servers)
    out = [fmt_table(rh, rrows), "", footer(result), "", "Every step in detail:", "",
           fmt_table(h, rows), "", "Slopes (least squares over the idle-ish ladder):", "",
           fmt_table(sh, srows)]
    if any(s["scenario"] == RATE for s in steps):
        th, trows = tick_rate_rows(steps, servers)
        out += ["", "Tick-rate axis (idle-ish players):", "", fmt_table(th, trows)]
        if result.get("not_run"):
            out += ["", "Not run (a smaller step at that tick period had already missed): "
                    + ", ".join(result["not_run"])]
    if result["targets"]:
        out += ["", fmt_table(["target", "measured", "limit", "met"],
                              [[t["target"], t["measured"], t["limit"],
                                _met(t["met"])] for t in result["targets"]])]
    if result.get("skipped"):
        out += ["", f"Skipped to keep to the time budget: {', '.join(result['skipped'])}"]
    if result.get("medians"):
        out += ["", f"Medians of the repeats (--repeats {result.get('repeats', 1)}, servers "
                    "alternating):", "", fmt_table(*median_rows(result["medians"]))]
    out += ["", footer(result)]
    return "\n".join(out)


MEDIAN_KEYS = ("cpu_us_per_player_tick", "cpu_user_us_per_player_tick", "bytes_per_player",
               "rss_mb")


def median_figures(steps: List[Step], servers: Sequence[str]) -> List[Dict[str, Any]]:
    """Per step of the plan (scenario, players, tick) and server: the median over its
    repeats of CPU per player-tick and RSS per player; beside each of our other pollers,
    its ratio to ours on the default poller (of the medians)."""
    out: List[Dict[str, Any]] = []
    keys = sorted({(s["scenario"], s["tick_ms"], s["players_target"]) for s in steps},
                  key=lambda k: (SCENARIO_ORDER.get(k[0], 9), -k[1], k[2]))
    for scenario, tick_ms, players in keys:
        rows: Dict[str, Dict[str, Any]] = {}
        for server in servers:
            ok = [cast(Dict[str, Any], s["derived"]) for s in steps
                  if (s["scenario"], s["tick_ms"], s["players_target"], s["server"])
                  == (scenario, tick_ms, players, server) and s["derived"].get("ok")]
            if not ok:
                continue
            row: Dict[str, Any] = {"scenario": scenario, "tick_ms": tick_ms,
                                   "players": players, "server": server, "runs": len(ok)}
            for key in MEDIAN_KEYS:
                values = [d[key] for d in ok if d.get(key) is not None]
                row[key] = median(values) if values else None
            rows[server] = row
        base = rows.get("ours")
        for server, row in rows.items():
            if base is not None and is_ours(server) and server != "ours":
                for key in MEDIAN_KEYS:
                    a, b = row[key], base[key]
                    row[key + "_vs_ours"] = a / b if a is not None and b else None
            out.append(row)
    return out


def median_rows(medians: List[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    headers = ["scenario", "players", "server", "runs", "CPU us / player-tick (user)",
               "B / player", "RSS MB", "vs ours (default poller): CPU, RSS per player"]
    rows = []
    for m in medians:
        vs = "-"
        if "cpu_us_per_player_tick_vs_ours" in m:
            vs = (f"{fmt(m['cpu_us_per_player_tick_vs_ours'], '.3f')}x, "
                  f"{fmt(m['bytes_per_player_vs_ours'], '.3f')}x")
        scenario = m["scenario"] if m["scenario"] != RATE else f"rate {m['tick_ms']} ms"
        rows.append([scenario, str(m["players"]), LABELS[m["server"]], str(m["runs"]),
                     f"{fmt(m['cpu_us_per_player_tick'], '.2f')} "
                     f"({fmt(m['cpu_user_us_per_player_tick'], '.2f')})",
                     fmt(m["bytes_per_player"], ".0f"), fmt(m["rss_mb"], ".1f"), vs])
    return headers, rows


def footer(result: Dict[str, Any]) -> str:
    m = result["machine"]
    return (f"Measured {result['started']} to {result['finished']} ({result['elapsed']}), "
            f"{m['cpus']} x {m['cpu_model']}, {m['mem_gib']} GiB, Linux {m['kernel']}, "
            f"Python {result['python']}"
            + (f", uvloop {result['uvloop']}" if result.get("uvloop") else "")
            + ("; ours with its store on (as shipped)" if result.get("ours_store")
               else "; ours memory only (--no-data)")
            + f"; server pinned to CPU 0, {LOAD_LABELS[result.get('load', 'python')]} on the "
              f"others; hold {result['hold_s']:g} s per step. "
            f"Command: {result['command']}")


def report_html(result: Dict[str, Any], panels: List[str]) -> str:
    e = html.escape
    servers = result["servers"]
    h, rows = step_rows(result["steps"], servers)
    sh, srows = slope_rows(result["slopes"], servers)
    targets = ""
    if result["targets"]:
        targets = "<h2>Targets</h2>" + html_table(
            ["target", "measured", "limit", "met"],
            [[t["target"], t["measured"], t["limit"], _met(t["met"])]
             for t in result["targets"]])
    rates = ""
    if any(s["scenario"] == RATE for s in result["steps"]):
        rates = "<h2>Tick-rate axis (idle-ish players)</h2>" + html_table(
            *tick_rate_rows(result["steps"], servers))
    partial = ""
    if result.get("interrupted"):
        partial = f'<p class="warn">Interrupted ({e(result["interrupted"])}): partial results.</p>'
    if result.get("skipped"):
        partial += (f'<p class="warn">Skipped to keep to the time budget: '
                    f'{e(", ".join(result["skipped"]))}.</p>')
    return html_page("SpellTraction capacity: netcore vs asyncio vs uvloop", f"""{partial}
<p>The same game (rules, wire format, one send per player per tick) served by netcore and by
an asyncio <code>Protocol</code> with a drift-free tick task, on asyncio's default loop and on
uvloop. A fresh server per step, pinned to CPU 0; <code>spelltraction.py bots</code> on the
other CPU. Idle-ish: each bot moves every 80 s (as the original); active: every bot moves every
tick (diamonds). CPU is user + system time of the server process over the hold, as a
percentage of one core; CPU per player-tick divides by the ticks the server actually
delivered.</p>
<div class="charts">{"".join(panels)}</div>
<h2>Slopes (least squares over the idle-ish ladder)</h2>
{html_table(sh, srows)}
{targets}{rates}
<h2>Every step</h2>
{html_table(h, rows)}
<p class="small">{e(footer(result))}</p>
<p class="small">Tick p99/max: the server's own lateness figures over its last 1,024 ticks
(the whole step: ramp, hold and the bots leaving). "ticks/s held": ticks an observer client
received per second during the hold. Client latency: move sent to its YOU echo, measured by
20 probe bots moving about once a second.</p>
""")


# =============================================================================
# Main
# =============================================================================


def parse_servers(text: str) -> List[str]:
    if text == "all":
        return list(SERVERS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    for s in names:
        if s not in SERVERS:
            raise argparse.ArgumentTypeError(f"unknown server {s!r} (ours, asyncio, uvloop, all)")
    return names


def parse_ladder(text: str) -> List[int]:
    if text.strip().lower() == "none":
        return []  # the active scenario only
    try:
        ladder = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ladder wants numbers like 1000,5000: {text!r}")
    if not ladder or any(n < 1 or n > 19_500 for n in ladder):
        raise argparse.ArgumentTypeError("ladder steps must be 1..19500 players")
    return ladder


def parse_periods(text: str) -> List[int]:
    try:
        periods = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tick-axis wants periods in ms like 250,100,50: "
                                         f"{text!r}")
    if any(p < 10 or p > 60_000 for p in periods):
        raise argparse.ArgumentTypeError("tick periods must be 10..60000 ms")
    return periods


def uvloop_version() -> Optional[str]:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return str(getattr(uvloop, "__version__", "?"))


def write_outputs(result: Dict[str, Any], args: argparse.Namespace,
                  log: Callable[[str], None]) -> None:
    servers = result["servers"]
    result["slopes"] = compute_slopes(result["steps"], servers)
    if result.get("repeats", 1) > 1 or any(s != "ours" and is_ours(s) for s in servers):
        result["medians"] = median_figures(result["steps"], servers)
    result["targets"] = check_targets(result["steps"], result["slopes"])
    panels = charts(result["steps"], servers)
    for path in (args.json, args.report, args.svg):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
        f.write(md + "\n")
    if args.report:
        with open(args.report, "w") as f:
            f.write(report_html(result, panels))
    if args.svg:
        caption = (f"SpellTraction capacity, {result['started']}, "
                   f"{result['machine']['cpus']} x {result['machine']['cpu_model']}; "
                   f"idle-ish ladder (lines) and active (diamonds)")
        with open(args.svg, "w") as f:
            f.write(composite_svg(panels, caption))
    log("")
    log(md)
    log("")
    log(f"samples: {os.path.relpath(args.json)}"
        + (f"; report: {os.path.relpath(args.report)}" if args.report else "")
        + (f"; chart: {os.path.relpath(args.svg)}" if args.svg else ""))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--server", type=parse_servers, default=parse_servers("all"),
                    help="ours, asyncio, uvloop, all, or a comma list (default all)")
    ap.add_argument("--ladder", type=parse_ladder, default=list(DEFAULT_LADDER),
                    help="players per idle-ish step (default 1000,5000,10000,15000,19000; "
                         "'none': the active scenario only)")
    ap.add_argument("--active", type=int, default=5000,
                    help="players in the active scenario, every bot moving every tick "
                         "(default 5000; 0 skips it)")
    ap.add_argument("--hold", type=float, default=25.0,
                    help="seconds to hold each step once the bots are in (default 25; "
                         "shortened to fit --budget)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds after the ramp before measuring (default: 2, at most hold/4)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                    help="seconds the whole run may take (default 840)")
    ap.add_argument("--tick-ms", type=int, default=TICK_MS)
    ap.add_argument("--pollers", default="", metavar="POLLER,...",
                    help="run our server once per poller, side by side (e.g. epoll,selectors: "
                         "--poller of serve; default: as shipped, "
                         f"{DEFAULT_POLLER}); with --repeats, the medians table compares them")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each ladder and active step, the servers alternating and "
                         "their order rotating (default 1); the report adds their medians")
    ap.add_argument("--ours-args", default="", metavar="ARGS",
                    help="more arguments for our server, e.g. '--coalesce-ms 0'")
    ap.add_argument("--ours-store", choices=("on", "off"), default="on",
                    help="our server's store: 'on' as shipped (default: a fresh --data "
                         "directory per step), 'off' memory only (--no-data) like the peers")
    ap.add_argument("--tick-axis", type=parse_periods, default=[],
                    help="tick periods in ms for the tick-rate axis, e.g. 250,100,50 (default: "
                         "none): --tick-ladder idle-ish at each, for each server; once a step "
                         "misses (tick p99 >= 10 ms or a player below 99 %% of ticks), that "
                         "server's larger steps at that period are not run")
    ap.add_argument("--tick-ladder", type=parse_ladder, default=list(DEFAULT_TICK_LADDER),
                    help="players per step on the tick-rate axis (default 1000,2500,5000,10000,"
                         "15000)")
    ap.add_argument("--probes", type=int, default=20,
                    help="bots per step that move about once a second to measure latency")
    ap.add_argument("--load", choices=("python", "c"), default="python",
                    help="the players: 'python' (spelltraction.py bots, default) or 'c' "
                         "(bench/peers/loadgen.c, built with cc: for every player moving at "
                         "15,000, which the Python bots on one core cannot send)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "capacity.json"))
    ap.add_argument("--report", default=os.path.join(HERE, "results", "capacity.html"),
                    help="the HTML report (default bench/results/capacity.html; '' to skip)")
    ap.add_argument("--svg", default=os.path.join(HERE, "results", "capacity.svg"),
                    help="the four charts as one SVG (default bench/results/capacity.svg; "
                         "'' to skip; docs/img/capacity.svg replaces the docs' chart)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan and its time estimate, run nothing")
    args = ap.parse_args(argv)
    OURS_EXTRA[:] = shlex.split(args.ours_args)
    OURS_STORE[0] = args.ours_store == "on"

    def log(text: str) -> None:
        print(text, flush=True)

    servers: List[str] = list(dict.fromkeys(args.server))
    if args.pollers:
        pollers = [p.strip() for p in args.pollers.split(",") if p.strip()]
        unknown = [p for p in pollers if p not in POLLERS]
        if unknown or "ours" not in servers:
            ap.error(f"--pollers takes {', '.join(POLLERS)} and needs --server ours"
                     + (f" (not {', '.join(unknown)})" if unknown else ""))
        if any(p != DEFAULT_POLLER for p in pollers):
            LABELS["ours"] = f"netcore (ours, {DEFAULT_POLLER})"
        at = servers.index("ours")
        servers[at:at + 1] = [ours_kind(p) for p in dict.fromkeys(pollers)]
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    uv = uvloop_version()
    if "uvloop" in servers and uv is None:
        log("uvloop is not installed: skipping it (pip install uvloop, or '.[bench]')")
        servers.remove("uvloop")
    if not servers:
        log("no server to measure")
        return 2
    steps_plan = plan_steps(servers, args.ladder, args.active, args.tick_ms, args.tick_axis,
                            args.tick_ladder, args.repeats)
    if not steps_plan:
        log("nothing to run: the ladder is empty and --active is 0")
        return 2
    hold = fit_hold(steps_plan, args.hold, args.budget)
    if hold < args.hold:
        log(f"hold shortened from {args.hold:g} s to {hold:.1f} s to fit the "
            f"{fmt_clock(args.budget)} budget")
    estimate = sum(estimate_step(p.players, hold, p.server) for p in steps_plan)
    if estimate > args.budget:
        log(f"warning: even at the minimum hold this plan is estimated at {fmt_clock(estimate)}, "
            f"over the {fmt_clock(args.budget)} budget")
    settle = args.settle if args.settle is not None else min(2.0, hold / 4)
    if args.dry_run:
        for i, p in enumerate(steps_plan):
            log(f"step {i + 1}/{len(steps_plan)}: {p.label()} players, moving every "
                f"{p.move_every:g} s: ~{fmt_clock(estimate_step(p.players, hold, p.server))}")
        log(f"estimated {fmt_clock(estimate)} with hold {hold:.1f} s "
            f"(budget {fmt_clock(args.budget)})")
        return 0
    _server_cpus, load_cpus = cpu_sets()
    if load_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(load_cpus))  # keep the driver off the server's CPU
    started = time.strftime("%Y-%m-%d %H:%M")
    t_start = time.monotonic()
    command = shlex.join(["python3", "bench/capacity.py",
                          *(argv if argv is not None else sys.argv[1:])])
    result: Dict[str, Any] = {
        "started": started, "finished": None, "elapsed": None, "command": command.strip(),
        "python": sys.version.split()[0], "uvloop": uv, "machine": machine(),
        "servers": servers, "ladder": args.ladder, "active_players": args.active,
        "hold_s": hold, "settle_s": settle, "budget_s": args.budget, "tick_ms": args.tick_ms,
        "estimate_s": round(estimate), "steps": [], "skipped": [], "slopes": {}, "targets": [],
        "tick_axis": args.tick_axis, "tick_ladder": args.tick_ladder, "not_run": [],
        "repeats": args.repeats,
        "interrupted": None,
    }
    log(f"capacity: {', '.join(servers)}; ladder {args.ladder} idle-ish"
        + (f", active at {args.active}" if args.active else "")
        + (f", tick-rate axis {args.tick_axis} ms over {args.tick_ladder}"
           if args.tick_axis else "")
        + f"; {len(steps_plan)} steps, hold {hold:.1f} s; estimated {fmt_clock(estimate)} "
          f"(budget {fmt_clock(args.budget)})")

    children = Children(os.path.join(os.path.dirname(os.path.abspath(args.json)),
                                     "capacity-logs"))
    if args.load == "c":
        build_dir = tempfile.mkdtemp(prefix="capacity-loadgen-")
        exe = build_c(os.path.join(HERE, "peers", "loadgen.c"), build_dir, log, "--load c")
        if exe is None:
            return 2
        LOADGEN[:] = [exe]
    result["load"] = args.load
    result["ours_store"] = OURS_STORE[0]
    def interrupted(what: str) -> None:
        result["interrupted"] = what
        log(f"\ninterrupted ({what}): stopping the processes this run started")

    missed: Dict[Tuple[str, int], int] = {}  # (server, tick ms) -> players that missed it
    with stoppable(children, interrupted):
        for i, plan in enumerate(steps_plan):
            elapsed = time.monotonic() - t_start
            if plan.scenario == RATE and (plan.server, plan.tick_ms) in missed:
                log(f"not running {plan.label()}: {missed[plan.server, plan.tick_ms]} players "
                    f"already missed {plan.tick_ms} ms ticks")
                result["not_run"].append(plan.label())
                continue
            remaining = steps_plan[i:]
            left = args.budget - elapsed
            step_hold = fit_hold(remaining, hold, left)
            # The estimate runs ~1.4x long; skip (and say so) only when even a
            # minimum-hold step would clearly overrun the budget.
            if 0.6 * estimate_step(plan.players, step_hold, plan.server) > left:
                log(f"[{fmt_clock(elapsed)} elapsed] skipping {plan.label()}: the "
                    f"{fmt_clock(args.budget)} budget is spent")
                result["skipped"].append(plan.label())
                continue
            ramp_timeout = max(15.0, min(60.0, 3.0 * plan.players / RAMP_PLAYERS_PER_S + 10))
            rest = sum(estimate_step(p.players, step_hold, p.server) for p in remaining)
            log(f"[{fmt_clock(elapsed)} elapsed, ~{fmt_clock(rest)} to go] step {i + 1}/"
                f"{len(steps_plan)}: {plan.label()} players, moving every "
                f"{plan.move_every:g} s, hold {step_hold:.1f} s")
            step = run_step(children, plan, step_hold, min(settle, step_hold / 4), plan.tick_ms,
                            ramp_timeout, args.probes, log)
            step["repeat"] = plan.repeat
            result["steps"].append(step)
            d = step["derived"]
            if plan.scenario == RATE and not held(d):
                missed[plan.server, plan.tick_ms] = plan.players
            if d.get("ok"):
                log(f"  -> {d['players']} players: RSS {d['rss_mb']:.1f} MB "
                    f"({d['bytes_per_player']:.0f} B/player), CPU {d['cpu_pct']:.1f} %, "
                    f"{d.get('tick_rate_hz', 0):.2f} ticks/s, tick p99 "
                    f"{fmt(d.get('tick_lateness_p99_ms'), '.1f')} ms, client p99 "
                    f"{fmt(d.get('move_latency_ms_p99'), '.0f')} ms")
    result["finished"] = time.strftime("%Y-%m-%d %H:%M")
    result["elapsed"] = fmt_clock(time.monotonic() - t_start)
    write_outputs(result, args, log)
    log(f"done in {result['elapsed']} (budget {fmt_clock(args.budget)})")
    if result["interrupted"]:
        return 130
    return 0 if all(s["derived"].get("ok") for s in result["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())

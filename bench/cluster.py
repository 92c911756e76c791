#!/usr/bin/env python3
"""One world past one process: redis-server + 1 authority + N gateways on one port, bots.

Starts a redis-server of its own on a free loopback port, ``spelltraction.py
game`` and ``--gateways`` gateways on one port (SO_REUSEPORT), waits until
every /healthz says ready, joins the **observers**, then ``spelltraction.py
bots --count N`` (spread over 127.0.0.2, 127.0.0.3, ...: one source address
has ~28,000 ephemeral ports toward one server port). Ticks are 250 ms (4 a
second); bots move every ``--move-every`` seconds (default 80, as the
original's script). Then, in the same run, ``serve`` alone at
``--serve-count`` (no store, as the gateways), measured the same way.

Both sides get the same treatment:

- **Observers** (``--observers``, 4 per gateway and 4 on serve, one in four
  over WebSocket; tests/hostilekit.py's ``Crowd`` in this process) join
  as players do, through the shared port; which gateway took each is read
  from /proc (the server end's inode in /proc/net/tcp, found in the
  gateway's /proc/PID/fd), and more join until every gateway has its
  share (the extra ones stay, quiet players). Each TICK's arrival is the
  kernel's receive time (SO_TIMESTAMPNS), so this process waiting for a
  core does not count. **Tick lateness** = that arrival minus when the
  schedule of the process that ticks (the authority; serve) had that TICK
  due: its /stats.json gives the last TICK's number and due time on
  CLOCK_MONOTONIC, one clock for every process here. (Without a schedule
  it falls back to the earliest arrival's schedule and says "interval".)
  Over the hold only; p50/p99/max per gateway and overall.
- **The bots** run at ``--bots-nice`` (10): the load generator, on the same
  2 cores, yields a core to what it measures (real players are on other
  machines). Their own figures stay: players connected, failed, dropped,
  the share of ticks each received, and the tick interval they read (their
  own CPU wait in it, so not the lateness figure).
- **Pinned**: gateway k on CPU k % ncpu, serve on gateway 1's (``--no-pin``:
  none). Both gateways are woken by the same publication and broadcast at
  once; unpinned, at 3,000 players each, a broadcast took ~70 ms of wall
  time for ~31 ms of its CPU, pinned ~40 ms, and serve's last players' p99
  fell too (docs/CLUSTER.md). Redis, the authority and the bots float.

Samples each process's CPU time and RSS (/proc/PID/stat, statm) once a second
and the roles' /stats.json every 5 s, and reports over the hold: CPU % and
RSS of Redis, the authority, each gateway and the bots; the observers'
lateness; the ticks each gateway skipped because it was behind (read behind
a newer one) and the ticks serve's own tick skipped; CPU per player-tick and
memory per player of both sides; the bus per tick and its publish->send
latency; and the targets, met or not. ``--json`` gets all of it.

    python3 bench/cluster.py                          # 30,000 over 2 gateways; serve at 15,000
    python3 bench/cluster.py --count 3000 --serve-count 1500 --duration 10   # a quick look
    sudo python3 bench/cluster.py --netns             # the world across network namespaces

``--netns`` runs the same world across network namespaces it creates (one
for Redis, one for the authority, one per gateway, one for the bots and the
observers; serve runs in gateway 1's), each linked to a bridge namespace by
a veth pair, with addresses from 10.99.0.0/24 only inside them; everything
is removed on exit and on Ctrl-C. It needs root (``ip netns``): without it,
it says so and skips.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GAME = os.path.join(ROOT, "spelltraction.py")
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from hostilekit import lateness_by_window, loopback_source  # type: ignore[import-not-found]  # noqa: E402
from netcore.stats import percentile  # noqa: E402
from procstat import (  # noqa: E402
    Children, cpu_seconds, free_port, group_cpu_seconds, load_average, machine, median, rss_bytes,
)
from report import fmt, fmt_table  # noqa: E402

if TYPE_CHECKING:
    from hostilekit import Crowd, Watcher

LOG_DIR = os.path.join(HERE, "results", "cluster-logs")
RAMP_TIMEOUT_S = 240
TICK_S = 0.25  # the default --tick-ms: 4 ticks a second, what the targets are for
TARGETS = {"lateness_p99_ms": 50.0, "tick_share_pct": 99.0}
CLONE_NEWNET = 0x40000000
NETNS_PREFIX = "stc"  # our namespaces: stc<pid>-<role>; nothing else is ever touched


# -- network namespaces (--netns) ----------------------------------------------------


class Netns:
    """Namespaces of our own, each with a veth to a bridge namespace, 10.99.0.0/24 inside.

    ``roles`` name the namespaces; role k gets 10.99.0.(10 + k). The bridge
    lives in a namespace of its own too, so the host's interfaces and
    addresses are never touched. ``close()`` deletes every namespace this
    object made (their veths go with them).
    """

    def __init__(self, roles: Sequence[str]) -> None:
        self.tag = f"{NETNS_PREFIX}{os.getpid()}"
        self.made: List[str] = []
        self.address: Dict[str, str] = {}
        self.bridge = f"{self.tag}-br"
        try:
            self._ns_add(self.bridge)
            self._ip(self.bridge, "link", "add", "br0", "type", "bridge")
            self._ip(self.bridge, "link", "set", "br0", "up")
            self._ip(self.bridge, "link", "set", "lo", "up")
            for k, role in enumerate(roles):
                ns = f"{self.tag}-{role}"
                self._ns_add(ns)
                here, there = f"v{k}a", f"v{k}b"
                # Made inside the bridge namespace, one end moved into the role's.
                self._ip(self.bridge, "link", "add", here, "type", "veth", "peer", "name", there)
                self._ip(self.bridge, "link", "set", there, "netns", ns)
                self._ip(self.bridge, "link", "set", here, "master", "br0")
                self._ip(self.bridge, "link", "set", here, "up")
                address = f"10.99.0.{10 + k}"
                self._ip(ns, "addr", "add", f"{address}/24", "dev", there)
                self._ip(ns, "link", "set", there, "up")
                self._ip(ns, "link", "set", "lo", "up")
                self.address[role] = address
        except BaseException:
            self.close()
            raise

    @staticmethod
    def permitted() -> Optional[str]:
        """None if we may make namespaces here, else why not."""
        if shutil.which("ip") is None:
            return "no `ip` command (iproute2)"
        probe = f"{NETNS_PREFIX}{os.getpid()}-probe"
        result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if result.returncode != 0:
            return f"`ip netns add` is not permitted here ({result.stderr.strip()}): run as root"
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
        return None

    def _ns_add(self, name: str) -> None:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.made.append(name)

    @staticmethod
    def _ip(ns: str, *args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

    @contextlib.contextmanager
    def entered(self, role: str) -> Iterator[None]:
        """This thread in ``role``'s namespace for the block (``setns``): the
        sockets made in it stay there (a thread started in it too)."""
        libc = ctypes.CDLL(None, use_errno=True)
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/var/run/netns/{self.tag}-{role}", os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.tag}-{role}")
            try:
                yield
            finally:
                if libc.setns(here, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(here)
            os.close(there)

    def wrap(self, role: str, cmd: List[str]) -> List[str]:
        return ["ip", "netns", "exec", f"{self.tag}-{role}", *cmd]

    def close(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.made = []


# -- the world -------------------------------------------------------------------------


def redis_config(directory: str, host: str, port: int) -> str:
    """etc/redis/spelltraction.conf's settings that matter here, on our own port."""
    path = os.path.join(directory, "redis.conf")
    with open(path, "w") as f:
        f.write(f"port {port}\nbind {host}\nprotected-mode no\nsave ''\nappendonly no\n"
                f"dir {directory}\nmaxmemory-policy noeviction\n"
                "client-output-buffer-limit pubsub 64mb 16mb 60\n")
    return path


def http_json(host: str, port: int, path: str, ns: Optional[Netns] = None,
              role: str = "") -> Any:
    url = f"http://{host}:{port}{path}"
    if ns is not None:  # the admin ports are loopback inside their namespace
        out = subprocess.run(ns.wrap(role, [sys.executable, "-c",
                                            "import sys,urllib.request as u;"
                                            "sys.stdout.write(u.urlopen(sys.argv[1],timeout=5)"
                                            ".read().decode())", url]),
                             capture_output=True, text=True, timeout=20)
        return json.loads(out.stdout) if out.returncode == 0 else None
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read().decode())
    except (OSError, ValueError):
        return None


def ready(host: str, port: int, ns: Optional[Netns], role: str) -> bool:
    url = f"http://{host}:{port}/healthz"
    if ns is not None:
        out = subprocess.run(ns.wrap(role, [sys.executable, "-c",
                                            "import sys,urllib.request as u;"
                                            "u.urlopen(sys.argv[1],timeout=3)", url]),
                             capture_output=True, timeout=20)
        return out.returncode == 0
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class System:
    """What one side of the comparison runs: its processes by role, their admin ports,
    the port players join, the processes that hold players, and whose schedule ticks."""

    def __init__(self, name: str) -> None:
        self.name = name  # "world" or "serve"
        self.procs: Dict[str, "subprocess.Popen[str]"] = {}
        self.admins: Dict[str, int] = {}
        self.port = 0
        self.player_roles: List[str] = []  # the gateways, or serve
        self.schedule_role = ""  # the authority, or serve: the TICK schedule is its

    def host(self, role: str, ns: Optional[Netns]) -> str:
        """Where players of ``role`` join (with --netns, its namespace's address)."""
        return "127.0.0.1" if ns is None else ns.address[home(role)]


def home(role: str) -> str:
    """The namespace a role runs in: serve runs where gateway 1 did."""
    return "gateway1" if role == "serve" else role


def admin_port(proc: "subprocess.Popen[str]", children: Children, name: str) -> int:
    """The admin port from a server's banner (readline: its lines come together,
    and select on a buffered pipe would not see the ones already read in)."""
    for _ in range(8):
        line = proc.stdout.readline() if proc.stdout is not None else ""
        found = re.search(r"admin (?:listening on \S+:(\d+)|.* on http://\S+:(\d+)/)", line)
        if found:
            return int(found[1] or found[2])
        if not line:
            break
    raise RuntimeError(f"{name} did not start: {children.log_tail(name)}")


def start_world(children: Children, count: int, gateways: int, ns: Optional[Netns],
                data: str, python: str, pin: bool) -> System:
    """redis-server, the authority and ``gateways`` gateways on one port."""
    world = System("world")
    wrap = (lambda role, cmd: ns.wrap(role, cmd)) if ns is not None else (lambda role, cmd: cmd)
    if ns is not None:
        redis_host = ns.address["redis"]
        world.port, redis_port = 12150, 6379
    else:
        redis_host = "127.0.0.1"
        world.port, redis_port = free_port(), free_port()
    per_gateway = -(-count // gateways) + 500
    procs = world.procs
    procs["redis"] = children.start(wrap("redis", [shutil.which("redis-server") or "redis-server",
                                                   redis_config(data, redis_host, redis_port)]),
                                    [], "redis")
    url = f"redis://{redis_host}:{redis_port}"
    procs["game"] = children.start(wrap("game", [
        python, GAME, "game", "--redis", url, "--world", "bench", "--data",
        os.path.join(data, "game"), "--admin-port", "0", "--log-level", "warning"]), [], "game")
    world.admins["game"] = admin_port(procs["game"], children, "game")
    world.schedule_role = "game"
    for g in range(gateways):
        name = f"gateway{g + 1}"
        procs[name] = children.start(wrap(name, [
            python, GAME, "gateway", "--redis", url, "--world", "bench",
            "--host", world.host(name, ns), "--port", str(world.port),
            "--max-clients", str(per_gateway), "--admin-port", "0", "--log-level", "warning",
            *exempt_bots(ns)]), pinned(g, pin), name)
        world.admins[name] = admin_port(procs[name], children, name)
        world.player_roles.append(name)
    return world


def start_serve(children: Children, count: int, ns: Optional[Netns], python: str,
                pin: bool) -> System:
    """``serve`` alone (no store, as the world's gateways), where gateway 1 was."""
    alone = System("serve")
    alone.port = 12150 if ns is not None else free_port()
    cmd = [python, GAME, "serve", "--no-data", "--host", alone.host("serve", ns),
           "--port", str(alone.port), "--max-clients", str(count + 500), "--admin-port", "0",
           "--log-level", "warning", *exempt_bots(ns)]
    proc = children.start(ns.wrap("gateway1", cmd) if ns is not None else cmd, pinned(0, pin),
                          "serve")
    alone.procs["serve"] = proc
    alone.admins["serve"] = admin_port(proc, children, "serve")
    alone.player_roles = ["serve"]
    alone.schedule_role = "serve"
    return alone


def exempt_bots(ns: Optional[Netns]) -> List[str]:
    """The bots (and observers) are one address with --netns: exempt from the
    per-address limits, as loopback is by default."""
    return ["--exempt", f"{ns.address['bots']}/32"] if ns is not None else []


def pinned(k: int, pin: bool) -> List[int]:
    """Gateway k (serve as gateway 0) on CPU k % ncpu; with --no-pin, anywhere."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        return []
    return [k % (os.cpu_count() or 1)]


# -- the observers: players that timestamp every TICK with the kernel's receive time ---


def _proc_net_address(host: str, port: int) -> str:
    """``host:port`` as /proc/net/tcp writes it (IPv4: the address as a
    little-endian word in hex, then the port)."""
    word = struct.unpack("<I", socket.inet_aton(host))[0]
    return f"{word:08X}:{port:04X}"


def landed_on(crowd: "Crowd", roles: Dict[str, int]) -> Dict[int, str]:
    """Which process (role -> pid) holds each watcher's server end, by watcher index.

    SO_REUSEPORT hands a connection to one of the gateways by a hash; the
    server end is the socket in /proc/net/tcp whose remote address is the
    watcher's own, and the process holding it has its inode in /proc/PID/fd.
    """
    wanted: Dict[str, int] = {}
    for w in crowd.watchers:
        host, port = w.sock.getsockname()[:2]
        wanted[_proc_net_address(host, port)] = w.index
    inodes: Dict[int, int] = {}  # inode -> watcher
    with open("/proc/net/tcp") as f:
        next(f, None)
        for line in f:
            fields = line.split()
            if len(fields) > 9 and fields[2] in wanted:
                inodes[int(fields[9])] = wanted[fields[2]]
    out: Dict[int, str] = {}
    for role, pid in roles.items():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                index = inodes.get(int(link[8:-1]))
                if index is not None:
                    out[index] = role
    return out


def join_observers(system: System, per_role: int, ns: Optional[Netns],
                   seed: int) -> Tuple[List["Crowd"], Dict[str, List["Watcher"]]]:
    """``per_role`` observers on each process holding players (one in four over
    WebSocket), joined as players are: through the shared port, then told
    apart by which gateway took them (more are joined until each has
    ``per_role``: SO_REUSEPORT spreads them by a hash); with --netns, on each
    gateway's address from the bots' namespace."""
    from hostilekit import Crowd

    ws_count = per_role // 4
    crowds: List[Crowd] = []
    by_role: Dict[str, List[Watcher]] = {r: [] for r in system.player_roles}
    if ns is not None or len(system.player_roles) == 1:
        for k, role in enumerate(system.player_roles):
            host = system.host(role, ns)
            with (ns.entered("bots") if ns is not None else contextlib.nullcontext()):
                crowd = Crowd(system.port, tcp=per_role - ws_count, ws_count=ws_count, host=host,
                              sources=[None] if ns is not None else None, move_every=None,
                              join_timeout=30, seed=seed + k)
            crowds.append(crowd)
            by_role[role] = list(crowd.watchers)
        return crowds, by_role
    pids = {r: system.procs[r].pid for r in system.player_roles}
    for attempt in range(8):
        if all(len(v) >= per_role for v in by_role.values()):
            break
        n = per_role * len(pids)
        crowd = Crowd(system.port, tcp=n - n // 4, ws_count=n // 4, move_every=None,
                      join_timeout=30, seed=seed + attempt,
                      sources=[loopback_source(attempt * 64 + i) for i in range(n)])
        crowds.append(crowd)
        where = landed_on(crowd, pids)
        for w in crowd.watchers:
            took = where.get(w.index)
            if took is not None and len(by_role[took]) < per_role:
                by_role[took].append(w)
    return crowds, by_role


class Schedule:
    """When each TICK number was due by the schedule of the process that ticks
    (the authority, or serve), from its /stats.json's ``last_tick`` samples:
    TICK n is due at a sampled (number, due) + (n - number) x period, from the
    nearest sample at or below n (a skip of the authority's tick, 2 s behind,
    would move that mapping: a sample per few seconds follows it)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.points: List[Tuple[int, float]] = []

    def add(self, stats: Any) -> None:
        last = (stats or {}).get("last_tick") or {}
        if last.get("due_monotonic_s"):
            self.points.append((int(last["number"]), float(last["due_monotonic_s"])))
            self.points.sort()

    def due(self, n: int) -> float:
        k = max(0, bisect.bisect_right(self.points, (n, float("inf"))) - 1)
        number, due = self.points[k]
        return due + (n - number) * self.period


# -- one side's run ----------------------------------------------------------------------


def run_system(children: Children, system: System, count: int, duration: float,
               move_every: float, ns: Optional[Netns], python: str, bots_nice: int,
               observers: int, say: Callable[[str], None]) -> Dict[str, Any]:
    """The observers, then the bots (at ``bots_nice``); samples each process's CPU and
    RSS once a second and the roles' /stats.json every 5; the figures of the hold."""
    procs, admins = system.procs, system.admins
    deadline = time.monotonic() + 60
    while not all(ready("127.0.0.1", p, ns, home(r)) for r, p in admins.items()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system.name} did not get ready in 60 s")
        for r, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{r} exited: {children.log_tail(r)}")
        time.sleep(0.5)
    time.sleep(1.0)
    rss_start = {r: rss_bytes(p.pid) for r, p in procs.items()}
    stats = http_json("127.0.0.1", admins[system.schedule_role], "/stats.json", ns,
                      home(system.schedule_role)) or {}
    period = float((stats.get("tick") or {}).get("period_s") or TICK_S)
    schedule = Schedule(period)
    schedule.add(stats)
    crowds: List["Crowd"] = []
    samples: List[Dict[str, Any]] = []
    roles: Dict[str, Any] = {}
    figures: List[Dict[str, Any]] = []
    bots_cmd: List[str] = []
    try:
        # Observers at both ends of each broadcast (a process sends a TICK to
        # its players in the order they joined): "first" joined before the
        # bots, "last" once every bot is in. The last see what the last of a
        # process's players sees: the p99 player is among them.
        crowds, first = join_observers(system, observers, ns, seed=1)
        by_role: Dict[Tuple[str, str], List[Watcher]] = {(r, "first"): v for r, v in first.items()}
        say(f"{system.name}: first observers " +
            ", ".join(f"{r} {len(v)}" for r, v in first.items()))
        joined_first = sum(len(c.watchers) for c in crowds)
        bots_started = time.monotonic()
        targets = [system.host(r, ns) for r in system.player_roles] if ns else ["127.0.0.1"]
        share = [count // len(targets) + (1 if k < count % len(targets) else 0)
                 for k in range(len(targets))]
        bot_names = []
        for k, target in enumerate(targets):  # netns: one bots run per gateway address
            cmd = [python, GAME, "bots", "--host", target, "--port", str(system.port), "--count",
                   str(share[k]), "--duration", str(duration), "--move-every", str(move_every),
                   "--ramp-timeout", str(RAMP_TIMEOUT_S), "--json"]
            bots_cmd = cmd
            name = f"bots{k}" if system.name == "world" else f"serve-bots{k}"
            procs[name] = children.start(ns.wrap("bots", cmd) if ns is not None else cmd, [],
                                         name, nice=bots_nice)
            bot_names.append(name)
        best_players = 0
        last_joined = False
        while any(procs[b].poll() is None for b in bot_names):
            just_joined = False
            if not last_joined:
                now = {r: http_json("127.0.0.1", admins[r], "/stats.json", ns, home(r))
                       for r in system.player_roles}
                players = sum((v or {}).get("players", 0) for v in now.values())
                if players >= count + joined_first or \
                        time.monotonic() - bots_started > RAMP_TIMEOUT_S:
                    more, last = join_observers(system, observers, ns, seed=2)
                    crowds += more
                    by_role.update({(r, "last"): v for r, v in last.items()})
                    last_joined = just_joined = True
                    say(f"{system.name}: {players} players in after "
                        f"{time.monotonic() - bots_started:.0f} s; last observers " +
                        ", ".join(f"{r} {len(v)}" for r, v in last.items()))
            row: Dict[str, Any] = {"t": time.monotonic() - bots_started}
            for r, p in procs.items():
                try:
                    if r in bot_names:
                        row[r] = (group_cpu_seconds(p.pid), 0)
                    else:
                        u, s = cpu_seconds(p.pid)
                        row[r] = (u + s, rss_bytes(p.pid))
                except OSError:
                    row[r] = (0.0, 0)
            samples.append(row)
            if len(samples) % 5 == 0 or just_joined:  # the roles' own figures, at the fullest
                now = {r: http_json("127.0.0.1", p, "/stats.json", ns, home(r))
                       for r, p in admins.items()}
                schedule.add(now.get(system.schedule_role))
                players = sum((now[r] or {}).get("players", 0) for r in system.player_roles)
                if players >= best_players:
                    roles, best_players = now, players
            time.sleep(1.0)
        final = {r: http_json("127.0.0.1", p, "/stats.json", ns, home(r))
                 for r, p in admins.items()}
        schedule.add(final.get(system.schedule_role))
        for b in bot_names:
            pipe = procs[b].stdout
            out = (pipe.read() if pipe is not None else "").strip().splitlines()
            if not out:
                raise RuntimeError(f"bots printed no figures: {children.log_tail(b)}")
            figures.append(json.loads(out[-1]))
    finally:
        for crowd in crowds:
            crowd.close()
        children.kill_all()

    ramp = max(f["ramp_s"] or 0.0 for f in figures)
    hold = [x for x in samples if ramp + 2.0 <= x["t"] <= ramp + duration]
    if len(hold) < 2:
        hold = samples[-2:] if len(samples) >= 2 else samples * 2
    wall = max(hold[-1]["t"] - hold[0]["t"], 1e-9)
    connected = sum(f["connected"] for f in figures)
    processes = {}
    for r in procs:
        cpu = 100.0 * (hold[-1][r][0] - hold[0][r][0]) / wall
        rss = median(x[r][1] for x in hold) if r not in bot_names else 0
        processes[r] = {"cpu_pct": round(cpu, 1), "rss_mb": round(rss / 1e6, 1),
                        "rss_start_mb": round(rss_start.get(r, 0) / 1e6, 1)}
    bots_cpu = sum(processes.pop(b)["cpu_pct"] for b in bot_names)
    processes["bots"] = {"cpu_pct": round(bots_cpu, 1), "rss_mb": 0.0, "rss_start_mb": 0.0}
    server_cpu = sum(v["cpu_pct"] for r, v in processes.items() if r != "bots")
    held = [processes[r] for r in system.player_roles]

    # The observers, over the hold: lateness against the schedule (or, without
    # one, against the earliest arrival), and the share of ticks they got.
    edges = [hold[0]["t"], hold[-1]["t"]]
    due = schedule.due if schedule.points else None
    observed: Dict[str, Dict[str, Any]] = {r: {} for r in system.player_roles}
    at_end: Dict[str, List[float]] = {"first": [], "last": []}
    seen = {id(w): {n for t, n in list(w.ticks) if edges[0] <= t - bots_started < edges[1]}
            for watchers in by_role.values() for w in watchers}
    numbers = set().union(*seen.values())
    first_n, last_n = (min(numbers), max(numbers)) if numbers else (0, -1)
    for (role, end), watchers in by_role.items():
        late = lateness_by_window(watchers, period, bots_started, edges, due)[0]
        at_end[end] += late
        # Of the TICK numbers the world had in the hold (the first to the last
        # any observer got), from the observer's first on, how many it got: a
        # skip is a miss.
        shares = []
        for w in watchers:
            got = seen[id(w)]
            if got:
                shares.append(len(got) / max(1, last_n - min(got) + 1))
        observed[role][end] = {
            "observers": len(watchers),
            "dropped": sum(1 for w in watchers if w.closed),
            "lateness_p50_ms": round(percentile(late, 50) * 1000, 1) if late else None,
            "lateness_p99_ms": round(percentile(late, 99) * 1000, 1) if late else None,
            "lateness_max_ms": round(max(late) * 1000, 1) if late else None,
            "tick_share": round(sum(shares) / len(shares), 4) if shares else 0.0,
        }
    skipped = {}
    for r in system.player_roles + [system.schedule_role]:
        snap = final.get(r) or {}
        bus = (snap.get("cluster") or {}).get("bus") or {}
        skipped[r] = {"tick_skipped": (snap.get("tick") or {}).get("skipped"),
                      "coalesced": bus.get("coalesced"), "gaps": bus.get("gaps")}
    hist_p99 = max(f["tick_interval_ms_p99"] for f in figures)
    return {
        "players": connected,
        "bots": count,
        "failed": sum(f["failed"] for f in figures),
        "dropped": sum(f["dropped"] for f in figures),
        "ramp_s": ramp,
        "hold_s": round(edges[1] - edges[0], 1),
        "tick_period_s": period,
        "tick_interval_ms_p50": max(f["tick_interval_ms_p50"] for f in figures),
        "tick_interval_ms_p99": hist_p99,
        "tick_interval_lateness_p99_ms": max(0.0, hist_p99 - period * 1000),
        "tick_share_mean": round(sum(f.get("tick_fraction_mean", 0) * f["connected"]
                                     for f in figures) / max(1, connected), 4),
        "tick_share_min": min(f["tick_fraction_min"] for f in figures),
        "bots_below_95pct_ticks": sum(f["bots_below_95pct_ticks"] for f in figures),
        "lateness_source": ("schedule" if due is not None else "interval"),
        # The target's figure: the observers last in every broadcast.
        "lateness_p99_ms": ms_p(at_end["last"], 99),
        "lateness_p50_ms": ms_p(at_end["last"], 50),
        "lateness_first_p99_ms": ms_p(at_end["first"], 99),
        "lateness_first_p50_ms": ms_p(at_end["first"], 50),
        "observers": observed,
        "observers_dropped": sum(v["dropped"] for o in observed.values() for v in o.values()),
        "observers_joined": sum(len(c.watchers) for c in crowds),  # players too: the extra
        # ones the shared port put on a gateway that had its share stay, quiet
        "skipped": skipped,
        "processes": processes,
        "server_cpu_pct": round(server_cpu, 1),
        "cpu_us_per_player_tick": server_cpu / 100 * period / max(1, connected) * 1e6,
        "bytes_per_player": (sum(v["rss_mb"] for v in held) - sum(v["rss_start_mb"] for v in held))
        * 1e6 / max(1, connected),
        "roles": {r: (s or {}).get("cluster") for r, s in roles.items()},
        "players_per_process": {r: (roles.get(r) or {}).get("players")
                                for r in system.player_roles},
        "bots_command": bots_cmd,
        "bots_nice": bots_nice,
    }


def ms_p(values: List[float], q: float) -> Optional[float]:
    """The ``q``th percentile of ``values`` (seconds) in ms, None if there are none."""
    return round(percentile(values, q) * 1000, 1) if values else None


LATENESS_SOURCES = {
    "schedule": "the observers' kernel receive time (SO_TIMESTAMPNS) of each TICK minus when "
                "the schedule of the process that ticks (the authority; serve) had it due",
    "interval": "no schedule to be had: the observers' kernel receive time of each TICK minus "
                "the earliest arrival's schedule (hides a delay every TICK has)",
}


def targets(world: Dict[str, Any]) -> List[List[str]]:
    """The targets for the world, measured, met or not."""
    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    late = world["lateness_p99_ms"]
    return [
        ["tick lateness p99 (observers last in each broadcast, kernel time)",
         "-" if late is None else f"{late:.1f} ms", f"< {TARGETS['lateness_p99_ms']:g} ms",
         met(late is not None and late < TARGETS["lateness_p99_ms"])],
        ["share of ticks received (bots, mean)", f"{world['tick_share_mean'] * 100:.1f} %",
         f">= {TARGETS['tick_share_pct']:g} %",
         met(world["tick_share_mean"] * 100 >= TARGETS["tick_share_pct"])],
        ["players connected / failed / dropped",
         f"{world['players']} / {world['failed']} / {world['dropped']}",
         f"{world['bots']} / 0 / 0",
         met((world["players"], world["failed"], world["dropped"]) == (world["bots"], 0, 0))],
    ]


def report(world: Dict[str, Any], serve: Optional[Dict[str, Any]]) -> str:
    rows = []
    for side in [world] + ([serve] if serve else []):
        for r, v in side["processes"].items():
            label = r if side is world else f"{r} (serve's run)" if r == "bots" else r
            rows.append([label, f"{v['cpu_pct']:.1f}", f"{v['rss_mb']:.1f}" if v["rss_mb"] else "-",
                         str(side["players_per_process"].get(r, "") or "")])
    out = [fmt_table(["process", "CPU % (hold)", "RSS MB (hold)", "players"], rows)]
    game = world["roles"].get("game") or {}
    bus = game.get("bus") or {}
    lat = [(r, (v or {}).get("bus", {})) for r, v in world["roles"].items() if r != "game"]
    head = ["", "world (cluster)"] + (["serve"] if serve else [])

    def row(label: str, show: Callable[[Dict[str, Any]], str]) -> List[str]:
        """A figure of the world, and of serve alone when it ran side by side."""
        return [label, show(world)] + ([show(serve)] if serve else [])

    def observers(s: Dict[str, Any]) -> str:
        return "; ".join(f"{r} {end} {v['observers']}: p50 {fmt(v['lateness_p50_ms'], '.1f')}, "
                         f"p99 {fmt(v['lateness_p99_ms'], '.1f')}, max "
                         f"{fmt(v['lateness_max_ms'], '.0f')} ms, {v['tick_share'] * 100:.1f} %"
                         for r, o in s["observers"].items() for end, v in o.items())

    def skipped(s: Dict[str, Any]) -> str:
        return "; ".join(f"{r} {v['coalesced']}" if v["coalesced"] is not None
                         else f"{r} {v['tick_skipped']} (its tick)"
                         for r, v in s["skipped"].items())

    out.append(fmt_table(head, [
        row("players connected / failed / dropped",
            lambda s: f"{s['players']} / {s['failed']} / {s['dropped']}"),
        row("tick lateness p50 / p99, last in each broadcast (observers, kernel time, ms)",
            lambda s: f"{fmt(s['lateness_p50_ms'], '.1f')} / {fmt(s['lateness_p99_ms'], '.1f')}"
                      f" ({s['lateness_source']})"),
        row("tick lateness p50 / p99, first in each broadcast (ms)",
            lambda s: f"{fmt(s['lateness_first_p50_ms'], '.1f')} / "
                      f"{fmt(s['lateness_first_p99_ms'], '.1f')}"),
        row("observers per process and end: lateness; share of ticks", observers),
        row("share of ticks received (bots: mean; min bot)",
            lambda s: f"{s['tick_share_mean'] * 100:.1f} %; {s['tick_share_min'] * 100:.1f} %"),
        row("tick interval the bots read p50 / p99 (ms; their own CPU in it)",
            lambda s: f"{s['tick_interval_ms_p50']:.0f} / {s['tick_interval_ms_p99']:.0f}"),
        row("ticks skipped, behind (gateways: read behind a newer one)", skipped),
        row("server-side CPU % (all but the bots)", lambda s: f"{s['server_cpu_pct']:.1f}"),
        row("CPU µs per player-tick (server side)",
            lambda s: f"{s['cpu_us_per_player_tick']:.2f}"),
        row("memory per player (gateways' / serve's RSS growth, B)",
            lambda s: f"{s['bytes_per_player']:.0f}"),
        row("bots CPU % (nice)", lambda s: f"{s['processes']['bots']['cpu_pct']:.1f} "
                                           f"(+{s['bots_nice']})"),
    ]))
    out.append(f"lateness ({world['lateness_source']}): {LATENESS_SOURCES[world['lateness_source']]}")
    out.append(f"bus, the authority: {bus.get('messages_per_tick', 0):.2f} messages and "
               f"{bus.get('bytes_per_tick', 0):.0f} bytes per tick (in and out)")
    for r, b in lat:
        def ms(key: str, b: Dict[str, Any] = b) -> str:
            return f"{(b.get(key) or 0) * 1000:.1f}"

        # publish->sent = publish->first send (the bus and the gateway's loop
        # turn) + the broadcast itself (first send -> last, O(its players)).
        out.append(f"bus, {r}: publish->sent p50 {ms('latency_p50_s')} ms, "
                   f"p99 {ms('latency_p99_s')} ms (publish->first send p50 "
                   f"{ms('to_first_send_p50_s')}, p99 {ms('to_first_send_p99_s')}; "
                   f"broadcast p50 {ms('broadcast_p50_s')}, p99 {ms('broadcast_p99_s')}, "
                   f"its CPU p50 {ms('broadcast_cpu_p50_s')}); "
                   f"{b.get('messages_per_tick', 0):.2f} messages, "
                   f"{b.get('bytes_per_tick', 0):.0f} bytes per tick; gaps {b.get('gaps', 0)}")
    out.append("")
    out.append(fmt_table(["target (world)", "measured", "limit", "met"], targets(world)))
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--count", type=int, default=30_000, help="players in the world")
    ap.add_argument("--gateways", type=int, default=2)
    ap.add_argument("--serve-count", type=int, default=15_000,
                    help="players for serve alone, side by side (0: skip)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds to hold")
    ap.add_argument("--move-every", type=float, default=80.0)
    ap.add_argument("--observers", type=int, default=4,
                    help="observer players per gateway and on serve, at each end of the "
                         "broadcast order (one in four over WebSocket; default 4)")
    ap.add_argument("--bots-nice", type=int, default=10,
                    help="niceness of the bot processes, both runs (default 10: the load "
                         "generator yields to what it measures; 0: none)")
    ap.add_argument("--no-pin", dest="pin_gateways", action="store_false",
                    help="don't pin gateway k to CPU k %% ncpu and serve to gateway 1's "
                         "(pinned by default: two gateways broadcasting the same TICK at the "
                         "same moment no longer share a core; see docs/CLUSTER.md)")
    ap.add_argument("--netns", action="store_true",
                    help="across network namespaces (root; 10.99.0.0/24 inside them only)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "cluster.json"),
                    help="write the figures here")
    args = ap.parse_args(argv)
    if args.observers < 1:
        ap.error("--observers must be at least 1: they measure the tick lateness")
    ns = None
    load_before = load_average()
    print(f"machine: {machine()}; load average before: {load_before}", flush=True)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def say(text: str) -> None:
        print(text, flush=True)

    signal.signal(signal.SIGTERM, interrupted)
    python = sys.executable
    serve = None
    try:
        if args.netns:
            why = Netns.permitted()
            if why is not None:
                print(f"--netns skipped: {why}", flush=True)
                return 0
            roles = ["redis", "game", *[f"gateway{g + 1}" for g in range(args.gateways)], "bots"]
            ns = Netns(roles)
            print(f"namespaces: {', '.join(ns.made)}; addresses {ns.address}", flush=True)
        data = tempfile.mkdtemp(prefix="cluster-bench-")
        try:
            children = Children(LOG_DIR)
            try:
                system = start_world(children, args.count, args.gateways, ns, data, python,
                                     args.pin_gateways)
            except BaseException:
                children.kill_all()
                raise
            world = run_system(children, system, args.count, args.duration, args.move_every,
                               ns, python, args.bots_nice, args.observers, say)
        finally:
            shutil.rmtree(data, ignore_errors=True)
        if args.serve_count:
            children = Children(LOG_DIR)
            try:
                system = start_serve(children, args.serve_count, ns, python, args.pin_gateways)
            except BaseException:
                children.kill_all()
                raise
            serve = run_system(children, system, args.serve_count, args.duration,
                               args.move_every, ns, python, args.bots_nice, args.observers, say)
    except KeyboardInterrupt:
        print("interrupted: everything started is stopped", flush=True)
        return 130
    finally:
        if ns is not None:
            ns.close()
            print("namespaces removed", flush=True)
    print(report(world, serve), flush=True)
    print(f"gateways (and serve) {'pinned, gateway k on CPU k % ncpu' if args.pin_gateways else 'not pinned'}; "
          f"bots at nice +{args.bots_nice}; {args.observers} observers per process at each end "
          "of the broadcast", flush=True)
    load_after = load_average()
    print(f"load average after: {load_after}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"world": world, "serve": serve, "netns": args.netns,
                   "pinned": args.pin_gateways, "bots_nice": args.bots_nice,
                   "lateness_source": LATENESS_SOURCES[world["lateness_source"]],
                   "targets": [dict(zip(("target", "measured", "limit", "met"), t))
                               for t in targets(world)],
                   "machine": machine(), "load_before": load_before, "load_after": load_after,
                   "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())},
                  f, indent=1)
    return 0 if world["failed"] == 0 and world["dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

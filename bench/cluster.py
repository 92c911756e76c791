#!/usr/bin/env python3
"""One world past one process: redis-server + 1 authority + N gateways on one port, bots.

Starts (none pinned: the machine is shared) a redis-server of its own on a
free loopback port, ``spelltraction.py game`` and ``--gateways`` gateways on
one port (SO_REUSEPORT), waits until every /healthz says ready, then
``spelltraction.py bots --count N`` (spread over 127.0.0.2, 127.0.0.3, ...:
one source address has ~28,000 ephemeral ports toward one server port).
Ticks are 250 ms (players get 4 ticks a second); bots move every
``--move-every`` seconds (default 80, as the original's script).

Samples each process's CPU time and RSS (/proc/PID/stat, statm) once a second
and reports, over the hold: CPU % and RSS of Redis, the authority, each
gateway and the bots; tick lateness as players see it (the interval between
TICKs the bots measure, p50/p99: 250 ms is on time); share of ticks received;
connected, failed, dropped; the bus per tick and its publish->send latency
(the roles' /stats.json). Then, in the same run, ``serve`` alone at
``--serve-count`` (bench/game_load.py) for CPU per player-tick and memory
per player side by side.

    python3 bench/cluster.py                          # 30,000 over 2 gateways; serve at 15,000
    python3 bench/cluster.py --count 3000 --serve-count 1500 --duration 10   # a quick look
    sudo python3 bench/cluster.py --netns             # the world across network namespaces

``--netns`` runs the same world across network namespaces it creates (one
for Redis, one for the authority, one per gateway, one for the bots), each
linked to a bridge namespace by a veth pair, with addresses from
10.99.0.0/24 only inside them; everything is removed on exit and on Ctrl-C.
It needs root (``ip netns``): without it, it says so and skips.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GAME = os.path.join(ROOT, "spelltraction.py")
sys.path.insert(0, HERE)

from procstat import (  # noqa: E402
    Children, cpu_seconds, free_port, group_cpu_seconds, machine, median, read_line, rss_bytes,
)
from report import fmt_table  # noqa: E402

LOG_DIR = os.path.join(HERE, "results", "cluster-logs")
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


def run_world(count: int, gateways: int, duration: float, move_every: float,
              ns: Optional[Netns] = None, python: str = sys.executable) -> Dict[str, Any]:
    children = Children(LOG_DIR)
    data = tempfile.mkdtemp(prefix="cluster-bench-")
    wrap = (lambda role, cmd: ns.wrap(role, cmd)) if ns is not None else (lambda role, cmd: cmd)
    if ns is not None:
        redis_host, game_host = ns.address["redis"], ns.address["game"]
        port = 12150
        redis_port = 6379
    else:
        redis_host = "127.0.0.1"
        port, redis_port = free_port(), free_port()
    per_gateway = -(-count // gateways) + 500
    procs: Dict[str, "subprocess.Popen[str]"] = {}
    admins: Dict[str, int] = {}
    samples: List[Dict[str, Any]] = []
    try:
        procs["redis"] = children.start(wrap("redis", [shutil.which("redis-server") or
                                                       "redis-server",
                                                       redis_config(data, redis_host,
                                                                    redis_port)]), [], "redis")
        url = f"redis://{redis_host}:{redis_port}"
        procs["game"] = children.start(wrap("game", [
            python, GAME, "game", "--redis", url, "--world", "bench", "--data",
            os.path.join(data, "game"), "--admin-port", "0", "--log-level", "warning"]), [], "game")
        line = read_line(procs["game"], 30)
        found = re.search(r"admin listening on \S+:(\d+)", line)
        if not found:
            raise RuntimeError(f"authority did not start: {line!r} {children.log_tail('game')}")
        admins["game"] = int(found[1])
        for g in range(gateways):
            name = f"gateway{g + 1}"
            host = ns.address[name] if ns is not None else "127.0.0.1"
            procs[name] = children.start(wrap(name, [
                python, GAME, "gateway", "--redis", url, "--world", "bench", "--host", host,
                "--port", str(port), "--max-clients", str(per_gateway), "--admin-port", "0",
                "--log-level", "warning",
                # The bots are one address: exempt from the per-address limits, as
                # loopback is by default.
                *(["--exempt", f"{ns.address['bots']}/32"] if ns is not None else [])]), [], name)
            for _ in range(3):  # they come together: readline, not select on a buffered pipe
                pipe = procs[name].stdout
                line = pipe.readline() if pipe is not None else ""
                found = re.search(r"http://\S+:(\d+)/", line)
                if found:
                    admins[name] = int(found[1])
                    break
            if name not in admins:
                raise RuntimeError(f"{name} did not start: {children.log_tail(name)}")
        deadline = time.monotonic() + 60
        while not all(ready("127.0.0.1", p, ns, r) for r, p in admins.items()):
            if time.monotonic() > deadline:
                raise RuntimeError("the world did not get ready in 60 s")
            time.sleep(0.5)
        time.sleep(1.0)
        rss_start = {r: rss_bytes(p.pid) for r, p in procs.items()}
        targets = [ns.address[f"gateway{g + 1}"] for g in range(gateways)] if ns else ["127.0.0.1"]
        bots_cmd: List[str] = []
        bots_started = time.monotonic()
        share = [count // len(targets) + (1 if k < count % len(targets) else 0)
                 for k in range(len(targets))]
        for k, target in enumerate(targets):  # netns: one bots run per gateway address
            cmd = [python, GAME, "bots", "--host", target, "--port", str(port), "--count",
                   str(share[k]), "--duration", str(duration), "--move-every", str(move_every),
                   "--ramp-timeout", "240", "--json"]
            bots_cmd = cmd
            procs[f"bots{k}"] = children.start(wrap("bots", cmd), [], f"bots{k}")
        bot_names = [r for r in procs if r.startswith("bots")]
        roles: Dict[str, Any] = {}
        best_players = 0
        while any(procs[b].poll() is None for b in bot_names):
            row: Dict[str, Any] = {"t": time.monotonic() - bots_started}
            for r, p in procs.items():
                try:
                    if r.startswith("bots"):
                        row[r] = (group_cpu_seconds(p.pid), 0)
                    else:
                        u, s = cpu_seconds(p.pid)
                        row[r] = (u + s, rss_bytes(p.pid))
                except OSError:
                    row[r] = (0.0, 0)
            samples.append(row)
            if len(samples) % 5 == 0:  # the roles' own figures, at the fullest moment
                now = {r: http_json("127.0.0.1", p, "/stats.json", ns, r) for r, p in admins.items()}
                players = sum((v or {}).get("players", 0) for r, v in now.items() if r != "game")
                if players >= best_players:
                    roles, best_players = now, players
            time.sleep(1.0)
        figures = []
        for b in bot_names:
            pipe = procs[b].stdout
            out = (pipe.read() if pipe is not None else "").strip().splitlines()
            if not out:
                raise RuntimeError(f"bots printed no figures: {children.log_tail(b)}")
            figures.append(json.loads(out[-1]))
    finally:
        children.kill_all()
        shutil.rmtree(data, ignore_errors=True)

    ramp = max(f["ramp_s"] or 0.0 for f in figures)
    hold = [x for x in samples if ramp + 2.0 <= x["t"] <= ramp + duration]
    if len(hold) < 2:
        hold = samples[-2:] if len(samples) >= 2 else samples * 2
    wall = max(hold[-1]["t"] - hold[0]["t"], 1e-9)
    connected = sum(f["connected"] for f in figures)
    processes = {}
    for r in procs:
        cpu = 100.0 * (hold[-1][r][0] - hold[0][r][0]) / wall
        rss = median(x[r][1] for x in hold) if not r.startswith("bots") else 0
        processes[r] = {"cpu_pct": round(cpu, 1), "rss_mb": round(rss / 1e6, 1),
                        "rss_start_mb": round(rss_start.get(r, 0) / 1e6, 1)}
    world_cpu = sum(v["cpu_pct"] for r, v in processes.items() if not r.startswith("bots"))
    hist_p99 = max(f["tick_interval_ms_p99"] for f in figures)
    gw_rss = [processes[r]["rss_mb"] for r in processes if r.startswith("gateway")]
    gw_start = [processes[r]["rss_start_mb"] for r in processes if r.startswith("gateway")]
    return {
        "players": connected,
        "bots": count,
        "failed": sum(f["failed"] for f in figures),
        "dropped": sum(f["dropped"] for f in figures),
        "ramp_s": ramp,
        "tick_interval_ms_p50": max(f["tick_interval_ms_p50"] for f in figures),
        "tick_interval_ms_p99": hist_p99,
        "tick_lateness_p99_ms": max(0.0, hist_p99 - 250.0),
        "tick_share_mean": round(sum(f.get("tick_fraction_mean", 0) * f["connected"]
                                     for f in figures) / max(1, connected), 4),
        "tick_share_min": min(f["tick_fraction_min"] for f in figures),
        "bots_below_95pct_ticks": sum(f["bots_below_95pct_ticks"] for f in figures),
        "processes": processes,
        "world_cpu_pct": round(world_cpu, 1),
        "cpu_us_per_player_tick": world_cpu / 100 / 4 / max(1, connected) * 1e6,
        "bytes_per_player": (sum(gw_rss) - sum(gw_start)) * 1e6 / max(1, connected),
        "roles": {r: (s or {}).get("cluster") for r, s in roles.items()},
        "players_per_gateway": {r: (s or {}).get("players") for r, s in roles.items()
                                if r.startswith("gateway")},
        "bots_command": bots_cmd,
    }


def report(world: Dict[str, Any], serve: Optional[Dict[str, Any]]) -> str:
    rows = []
    for r, v in world["processes"].items():
        rows.append([r, f"{v['cpu_pct']:.1f}", f"{v['rss_mb']:.1f}" if v["rss_mb"] else "-",
                     str(world["players_per_gateway"].get(r, "") or "")])
    out = [fmt_table(["process", "CPU % (hold)", "RSS MB (hold)", "players"], rows)]
    game = world["roles"].get("game") or {}
    bus = game.get("bus") or {}
    lat = [(r, (v or {}).get("bus", {})) for r, v in world["roles"].items() if r != "game"]
    head = ["", "world (cluster)"] + (["serve"] if serve else [])

    def row(label: str, ours: str, alone: Callable[[Dict[str, Any]], str]) -> List[str]:
        """A figure of the world, and of serve alone when it ran side by side."""
        return [label, ours] + ([alone(serve)] if serve else [])

    out.append(fmt_table(head, [
        row("players connected / failed / dropped",
            f"{world['players']} / {world['failed']} / {world['dropped']}",
            lambda s: f"{s['players']} / {s['failed']} / {s['dropped']}"),
        row("tick interval players saw p50 / p99 (ms)",
            f"{world['tick_interval_ms_p50']:.0f} / {world['tick_interval_ms_p99']:.0f}",
            lambda s: f"{s['client_tick_interval_p50_ms']:.0f} / "
                      f"{s['client_tick_interval_p99_ms']:.0f}"),
        row("tick lateness p99 as players see it (ms)",
            f"{world['tick_lateness_p99_ms']:.0f}",
            lambda s: f"{max(0.0, s['client_tick_interval_p99_ms'] - 250):.0f}"),
        row("share of ticks received (mean; min bot)",
            f"{world['tick_share_mean'] * 100:.1f} %; {world['tick_share_min'] * 100:.1f} %",
            lambda s: f"- ; {s['bots_below_95pct_ticks']} bots < 95 %"),
        row("CPU µs per player-tick (server side)",
            f"{world['cpu_us_per_player_tick']:.2f}",
            lambda s: f"{s['cpu_us_per_player_tick']:.2f}"),
        row("memory per player (gateways' / serve's RSS growth, B)",
            f"{world['bytes_per_player']:.0f}",
            lambda s: f"{s['bytes_per_player']:.0f}"),
    ]))
    out.append(f"bus, the authority: {bus.get('messages_per_tick', 0):.2f} messages and "
               f"{bus.get('bytes_per_tick', 0):.0f} bytes per tick (in and out)")
    for r, b in lat:
        def ms(key: str, b: Dict[str, Any] = b) -> str:
            return f"{b.get(key, 0) * 1000:.1f}"

        # publish->sent = publish->first send (the bus and the gateway's loop
        # turn) + the broadcast itself (first send -> last, O(its players)).
        out.append(f"bus, {r}: publish->sent p50 {ms('latency_p50_s')} ms, "
                   f"p99 {ms('latency_p99_s')} ms (publish->first send p50 "
                   f"{ms('to_first_send_p50_s')}, p99 {ms('to_first_send_p99_s')}; "
                   f"broadcast p50 {ms('broadcast_p50_s')}, p99 {ms('broadcast_p99_s')}, "
                   f"its CPU p50 {ms('broadcast_cpu_p50_s')}); "
                   f"{b.get('messages_per_tick', 0):.2f} messages, "
                   f"{b.get('bytes_per_tick', 0):.0f} bytes per tick; gaps {b.get('gaps', 0)}, "
                   f"ticks skipped (behind) {b.get('coalesced', 0)}")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=30_000, help="players in the world")
    ap.add_argument("--gateways", type=int, default=2)
    ap.add_argument("--serve-count", type=int, default=15_000,
                    help="players for serve alone, side by side (0: skip)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds to hold")
    ap.add_argument("--move-every", type=float, default=80.0)
    ap.add_argument("--netns", action="store_true",
                    help="across network namespaces (root; 10.99.0.0/24 inside them only)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "cluster.json"),
                    help="write the figures here")
    args = ap.parse_args(argv)
    ns = None
    load = open("/proc/loadavg").read().split()[:3]
    print(f"machine: {machine()}; load average before: {' '.join(load)}", flush=True)
    stop = {"now": False}

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        if args.netns:
            why = Netns.permitted()
            if why is not None:
                print(f"--netns skipped: {why}", flush=True)
                return 0
            roles = ["redis", "game", *[f"gateway{g + 1}" for g in range(args.gateways)], "bots"]
            ns = Netns(roles)
            print(f"namespaces: {', '.join(ns.made)}; addresses {ns.address}", flush=True)
        world = run_world(args.count, args.gateways, args.duration, args.move_every, ns)
        serve = None
        if args.serve_count and not args.netns:
            from game_load import run as run_serve

            serve = run_serve(args.serve_count, args.duration, args.move_every, pin=False,
                              extra_server=[])
            serve.pop("server_final", None)
    except KeyboardInterrupt:
        print("interrupted: everything started is stopped", flush=True)
        stop["now"] = True
        return 130
    finally:
        if ns is not None:
            ns.close()
            print("namespaces removed", flush=True)
    print(report(world, serve), flush=True)
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average after: {' '.join(load)}", flush=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"world": world, "serve": serve, "netns": args.netns}, f, indent=1)
    return 0 if world["failed"] == 0 and world["dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

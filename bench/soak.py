#!/usr/bin/env python3
"""The soak: 30 minutes at 15,000 players, with churn and bench/attack.py's floods, for drift.

One ``spelltraction.py serve`` (its own ``--data`` directory in a temporary
folder, the store on as by default; pinned to CPU 0; ``--max-clients`` =
players + the biggest attack + a churn wave + 500, so a player coming back is
never refused), and on the other CPUs:

- **the players**: ``--count`` in all. Bot processes (this file's
  ``--worker``, built on ``spelltraction.BotWorker``, protocol 2 with resume
  tokens), as many as the open-files limit needs (``bots``' own sizing: at
  most 8,000 per process, under the 20,000 hard limit); ``--ws-players``
  (200) of them over WebSocket, in a process of their own. ``--movers`` (10 %)
  of the players move every tick, the rest every 80 s, as the original's
  script. Plus ``--observers`` (20: 16 TCP, 4 WebSocket) quiet players in
  this process (tests/hostilekit.py's ``Crowd``) that timestamp every TICK
  with the kernel's receive time, joined after the bots.
- **churn**: every ``--churn-every`` s (60), ``--churn`` % (2) of the bots
  leave (an orderly close: FIN, and a Close frame over WebSocket) and come
  back 0.2-1 s later with their token. A wave is held back while an attack
  window runs (and an attack window while a wave is out), so each wave's fds
  are compared with what the server held just before it.
- **attacks**: every ``--cycle`` s (300), ``--attack-at`` s (30) into the
  cycle, the attack mix of ``bench/attack.py`` (its attackers and its
  per-attack figures, imported from it), one attack after another.
- **samples** every ``--sample`` s (10): the server's RSS (/proc/PID/statm),
  open fds (/proc/PID/fd), CPU (% of a core), the players in the game (the
  server's /stats.json) and connected (the bots' and observers' own count),
  the bots' CPU, drops so far.

Tick lateness as players see it, per minute: the **observers'** TICK
arrivals (kernel timestamps, so this process's own delays don't count),
each TICK n due at base + n x period, base the earliest any observer was
served in the whole run; the p99 of each minute. Next to it, the server's
own scheduler lateness (its /metrics histogram; the bucket holding the p99).

A drop is a player the server closed that had not chosen to leave (the
bots know which they closed; an observer never leaves). Dropped bots come
back with their token, as a client would, and are counted once per drop.

Targets (the table at the end): RSS drift < 2 %, measured ``--rss-before``
s (10) before each cycle's end (after the attacks have left), each cycle
from the third on against the second; fds back to the pre-wave count after
every churn wave; observers' tick lateness p99 < 50 ms in every minute;
0 players dropped; 0 rejoins refused.

    python3 bench/soak.py                                   # 30 min, 15,000 players
    python3 bench/soak.py --count 2000 --duration 300 --cycle 120 --churn-every 30

Loopback only, and it stops by itself: ``--duration`` after the ramp (an
attack window that would run past the end is not started; a churn wave
waits 60 s at most), then the stop. Every child (server, bot processes,
attackers) is ours, killed by its pid on exit, on error and on Ctrl-C;
bot processes and attackers also die with this process, and bot processes
end by themselves ``--ramp-timeout`` + ``--duration`` + 600 s after start.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GAME = os.path.join(ROOT, "spelltraction.py")
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import spelltraction as st  # noqa: E402
from netcore import process  # noqa: E402
from netcore import websocket as ws  # noqa: E402
from netcore.stats import percentile  # noqa: E402
from procstat import (  # noqa: E402
    Children, cpu_runtime, cpu_sets, load_average, machine, open_fds, rss_bytes, spread,
    stoppable, wait_for_ports,
)

if TYPE_CHECKING:
    from hostilekit import Crowd  # type: ignore[import-not-found]

LOG_DIR = os.path.join(HERE, "results", "soak-logs")
DEFAULT_ATTACKS = ("ping", "fragments", "continuations", "refuse", "never-read", "slowloris")
IDLE_MOVE_EVERY = 80.0  # the original's load script: the players who are not movers
TARGETS = {"rss_drift_pct": 2.0, "lateness_p99_ms": 50.0}


# =============================================================================
# The bot worker: BotWorker's players, some of which leave and come back.
# =============================================================================


class SoakBots(st.BotWorker):
    """One process's bots (protocol 2): movers, churn on request, drops counted.

    ``churn(wave, n)`` picks ``n`` playing bots that close in an orderly way
    (FIN; a Close frame over WebSocket) and come back 0.2-1 s later with
    their token. A bot closed by the server that had not chosen to leave is
    a drop: counted, then it reconnects with backoff (BotWorker's --state
    behaviour). A rejoin that fails (refused, reset) is counted and retried.
    """

    def __init__(self, p: Dict[str, Any]) -> None:
        super().__init__(p["host"], p["port"], p["count"], IDLE_MOVE_EVERY, 0, p["seed"],
                         p["batch"], p["ws"], resume=[], offset=p["offset"])
        self.n_movers = int(p["movers"])  # bots 0..n_movers-1 move every tick
        self.tick_s = float(p["tick_s"])
        self.leaving = bytearray(self.count)  # chose to leave; coming back
        self.wave_of: Dict[int, int] = {}  # leaving bot -> its wave
        self.waves: Dict[int, Dict[str, Any]] = {}  # open waves
        self.drops = 0
        self.drop_reasons: Dict[str, int] = {}
        self.left = self.rejoined = self.rejoins_resumed = self.rejoins_refused = 0

    def _period(self, i: int) -> float:
        return self.tick_s if i < self.n_movers else IDLE_MOVE_EVERY

    def _forget_moves(self, bots: Set[int]) -> None:
        """Drop the moves planned for ``bots``: a bot back in the game plans afresh."""
        self.moves = [m for m in self.moves if m[1] not in bots]
        heapq.heapify(self.moves)

    # -- churn ---------------------------------------------------------------

    def churn(self, wave: int, n: int, now: float) -> None:
        playing = [i for i in range(self.count)
                   if self.state[i] == self.PLAYING and not self.leaving[i]]
        chosen = self.rng.sample(playing, min(n, len(playing)))
        self.waves[wave] = {"type": "wave", "wave": wave, "asked": n, "left": len(chosen),
                            "back": 0, "resumed": 0, "refused": 0, "started": now,
                            "pending": set(chosen)}
        for i in chosen:
            self._leave(i, wave, now)
        self._forget_moves(set(chosen))

    _ORDERLY = struct.pack("ii", 0, 0)  # SO_LINGER off: close() sends a FIN, not a RST

    def _leave(self, i: int, wave: int, now: float) -> None:
        s = self.socks[i]
        assert s is not None
        try:
            if self.websocket:
                s.send(ws.close_frame(1000, "bye", mask_key=self._mask_key()))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, self._ORDERLY)
        except OSError:
            pass
        self.connected -= 1
        self.leaving[i] = 1
        self.wave_of[i] = wave
        self.left += 1
        self._drop_socket(i)
        self.state[i] = self.RETRYING  # _retry_due opens it again, with its token
        heapq.heappush(self.retries, (now + self.rng.uniform(0.2, 1.0), i))

    def _welcomed(self, i: int, payload: bytes) -> None:
        super()._welcomed(i, payload)
        if not self.leaving[i]:
            return
        self.leaving[i] = 0
        self.rejoined += 1
        welcome = st.decode(payload)
        resumed = isinstance(welcome, st.Welcome) and welcome.resumed == st.RESUMED
        self.rejoins_resumed += resumed
        wave = self.waves.get(self.wave_of.pop(i, -1))
        if wave is not None:
            wave["back"] += 1
            wave["resumed"] += resumed
            wave["pending"].discard(i)

    def _fail(self, i: int, why: str) -> None:
        if not self.leaving[i]:
            super()._fail(i, why)
            return
        self.rejoins_refused += 1  # a player coming back was turned away: try again
        self.errors[f"rejoin: {why}"] = self.errors.get(f"rejoin: {why}", 0) + 1
        wave = self.waves.get(self.wave_of.get(i, -1))
        if wave is not None:
            wave["refused"] += 1
        self._drop_socket(i)
        self.state[i] = self.RETRYING
        heapq.heappush(self.retries, (time.monotonic() + 1.0, i))

    def _lost(self, i: int, why: str) -> None:
        if self.state[i] == self.PLAYING and not self.leaving[i]:
            self.drops += 1  # closed by the server; this bot did not choose to leave
            self.drop_reasons[why] = self.drop_reasons.get(why, 0) + 1
            self._forget_moves({i})
        super()._lost(i, why)

    def finished_waves(self, now: float, patience: float = 60.0) -> List[Dict[str, Any]]:
        """Waves whose bots are all back (or out of patience): reported once each."""
        out = []
        for wave, w in list(self.waves.items()):
            if not w["pending"] or now - w["started"] > patience:
                del self.waves[wave]
                report = {k: v for k, v in w.items() if k not in ("pending", "started")}
                report["not_back"] = len(w["pending"])
                report["seconds"] = round(now - w["started"], 2)
                out.append(report)
        return out

    def progress(self) -> Dict[str, Any]:
        out = super().progress()
        out.update(self._soak_counts())
        return out

    def final(self) -> Dict[str, Any]:
        out = super().final()
        out.update(self._soak_counts())
        del out["hist"], out["latencies"]  # the observers measure; the bots only count
        return out

    def _soak_counts(self) -> Dict[str, Any]:
        return {"drops": self.drops, "drop_reasons": dict(self.drop_reasons),
                "left": self.left, "rejoined": self.rejoined,
                "rejoins_resumed": self.rejoins_resumed, "rejoins_refused": self.rejoins_refused,
                "away": sum(self.leaving)}


def worker_main(params_json: str) -> None:
    """A bot process: plays until stdin closes (or "stop", or its deadline);
    "churn WAVE N" on stdin sends N of its bots away and back."""
    p = json.loads(params_json)
    process.raise_nofile()
    bots = SoakBots(p)
    deadline = time.monotonic() + p["max_seconds"]
    out = sys.stdout
    pending = b""
    next_report = 0.0
    try:
        while time.monotonic() < deadline:
            if select.select([0], [], [], 0)[0]:
                said = os.read(0, 4096)
                if not said:
                    break
                pending += said
                *lines, pending = pending.split(b"\n")
                words = [line.split() for line in lines]
                if any(w[:1] == [b"stop"] for w in words):
                    break
                for w in words:
                    if w[:1] == [b"churn"]:
                        bots.churn(int(w[1]), int(w[2]), time.monotonic())
            bots.step(0.05)
            now = time.monotonic()
            for report in bots.finished_waves(now):
                out.write(json.dumps(report) + "\n")
            if now >= next_report:
                out.write(json.dumps(bots.progress()) + "\n")
                out.flush()
                next_report = now + 1.0
    finally:
        out.write(json.dumps(bots.final()) + "\n")
        out.flush()
        bots.close()


# =============================================================================
# The driver's parts: the server, the bot processes, the attack windows.
# =============================================================================


class Server:
    """``spelltraction.py serve`` as our child: its ports, /proc figures, and
    bench/attack.py's ``Target`` on it (its /stats.json and /metrics readers)."""

    def __init__(self, children: Children, flags: List[str], cpus: Sequence[int],
                 max_clients: int) -> None:
        import attack

        self.proc = children.start([sys.executable, GAME, "serve", *flags], cpus, "server")
        self.pid = self.proc.pid
        self.port = self.admin_port = 0
        assert self.proc.stdout is not None
        said = ""  # its banner, read raw: a buffered readline would hide lines from select
        deadline = time.monotonic() + 30
        while not (self.port and self.admin_port):
            ready, _, _ = select.select([self.proc.stdout], [], [],
                                        max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.proc.stdout.fileno(), 4096).decode() if ready else ""
            if not chunk:
                raise RuntimeError(f"server did not start: {said!r} "
                                   f"{children.log_tail('server')}")
            said += chunk
            for line in said.splitlines():
                if " listening on " in line:
                    self.port = int(line.rsplit(":", 1)[1])
                elif line.startswith("admin ") and "http://" in line:
                    self.admin_port = int(line.rsplit(":", 1)[1].strip("/ "))
        self.target = attack.Target(argparse.Namespace(
            host="127.0.0.1", port=self.port, pid=self.pid, admin_port=self.admin_port,
            max_clients=max_clients), "soak")
        self._cpu = (time.monotonic(), cpu_runtime(self.pid))

    def stats(self) -> Dict[str, Any]:
        try:
            return dict(json.loads(self.target.get("/stats.json")))
        except (OSError, ValueError):
            return {}

    def cpu_pct(self) -> float:
        """% of one core since the last call."""
        now, cpu = time.monotonic(), cpu_runtime(self.pid)
        then, before = self._cpu
        self._cpu = (now, cpu)
        return 100.0 * (cpu - before) / max(1e-6, now - then)


class Bots:
    """The bot processes: started, told to churn, their JSON lines read without blocking."""

    def __init__(self, children: Children, port: int, shares: List[Tuple[int, bool]],
                 movers: float, tick_s: float, max_seconds: float, cpus: Sequence[int],
                 seed: int) -> None:
        self.children = children
        self.procs: List["subprocess.Popen[str]"] = []
        self.shares = [n for n, _ in shares]
        self.progress: List[Dict[str, Any]] = [{} for _ in shares]
        self.finals: List[Optional[Dict[str, Any]]] = [None] * len(shares)
        self.waves: Dict[int, List[Dict[str, Any]]] = {}
        self._buffers: Dict[int, str] = {}
        self._index: Dict[int, int] = {}
        offset = 0
        for k, (n, websocket) in enumerate(shares):
            params = {"host": "127.0.0.1", "port": port, "count": n, "ws": websocket,
                      "movers": round(n * movers), "tick_s": tick_s, "seed": seed + k,
                      "batch": 200, "offset": offset, "max_seconds": max_seconds}
            offset += n
            proc = children.start([sys.executable, os.path.abspath(__file__), "--worker",
                                   json.dumps(params)], cpus, f"bots-{k}", stdin_pipe=True)
            self.procs.append(proc)
            assert proc.stdout is not None
            self._buffers[proc.stdout.fileno()] = ""
            self._index[proc.stdout.fileno()] = k
        self.pids = [p.pid for p in self.procs]

    def pump(self, timeout: float = 0.0) -> None:
        """Read whatever the workers said (progress, finished waves, finals)."""
        if not self._buffers:
            time.sleep(timeout)
            return
        ready, _, _ = select.select(list(self._buffers), [], [], timeout)
        for fd in ready:
            chunk = os.read(fd, 65536).decode()
            if not chunk:
                del self._buffers[fd]
                continue
            self._buffers[fd] += chunk
            *lines, self._buffers[fd] = self._buffers[fd].split("\n")
            k = self._index[fd]
            for line in lines:
                msg = json.loads(line)
                if msg["type"] == "progress":
                    self.progress[k] = msg
                elif msg["type"] == "wave":
                    self.waves.setdefault(msg["wave"], []).append(msg)
                elif msg["type"] == "final":
                    self.finals[k] = msg

    def total(self, key: str) -> int:
        """A count summed over the workers (their finals where they have ended)."""
        return sum(int((f or p).get(key, 0)) for f, p in zip(self.finals, self.progress))

    def drop_reasons(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for f, p in zip(self.finals, self.progress):
            for why, n in (f or p).get("drop_reasons", {}).items():
                out[why] = out.get(why, 0) + n
        return out

    def tell(self, k: int, line: str) -> None:
        stdin = self.procs[k].stdin
        if stdin is not None and not stdin.closed:
            try:
                os.write(stdin.fileno(), line.encode() + b"\n")
            except OSError:
                pass

    def churn(self, wave: int, n: int) -> List[int]:
        """Send ``n`` bots away and back, spread over the workers by their share."""
        total = sum(self.shares)
        asked = [round(n * share / total) for share in self.shares]
        for k, m in enumerate(asked):
            if m:
                self.tell(k, f"churn {wave} {m}")
        return asked

    def wave_done(self, wave: int, asked: List[int]) -> bool:
        return len(self.waves.get(wave, [])) >= sum(1 for m in asked if m)

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                total += cpu_runtime(pid)
            except OSError:
                pass
        return total

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every worker to stop, collect its final report, then make sure it is gone."""
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        while any(f is None for f in self.finals) and self._buffers \
                and time.monotonic() < deadline:
            self.pump(0.2)
        for proc in self.procs:
            self.children.stop(proc, timeout=5.0)


class AttackWindow(threading.Thread):
    """One cycle's attack mix, on a thread (the driver keeps sampling meanwhile):
    bench/attack.py's ``one_attack`` for each attack, against our server."""

    def __init__(self, cycle: int, names: Sequence[str], server: Server, crowd: "Crowd",
                 args: argparse.Namespace, period: float, t0: float) -> None:
        super().__init__(name=f"attacks-{cycle}", daemon=True)
        self.cycle = cycle
        self.names = list(names)
        self.server, self.crowd, self.args, self.period = server, crowd, args, period
        self.t0 = t0
        self.rows: List[Dict[str, Any]] = []
        self.current = ""
        self.started_s = self.ended_s = 0.0
        self.error = ""
        self.recorded = False  # in the result's attack_windows

    def run(self) -> None:
        import attack

        self.started_s = time.monotonic() - self.t0
        try:
            for name in self.names:
                self.current = name
                row = attack.one_attack(name, self.server.target, self.crowd, self.args, self.period)
                row["started_s"] = round(time.monotonic() - self.t0 - row["seconds"], 1)
                self.rows.append(row)
        except Exception as exc:  # the driver reports it; the soak goes on
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.current = ""
            self.ended_s = time.monotonic() - self.t0

    def record(self) -> Dict[str, Any]:
        return {"cycle": self.cycle, "start_s": round(self.started_s, 1),
                "end_s": round(self.ended_s, 1), "attacks": self.names, "rows": self.rows,
                "error": self.error}


def window_estimate(names: Sequence[str], args: argparse.Namespace) -> float:
    """Seconds an attack window takes, roughly (to start none that would overrun the run)."""
    hold: Dict[str, float] = {"never-read": args.never_read_hold,
                              "slowloris": args.slowloris_hold, "refuse": args.seconds + 5}
    return float(sum(args.quiet + hold.get(n, args.seconds) + 3.0 for n in names))


# =============================================================================
# The run: ramp, then the schedule (samples, churn waves, attack windows, RSS points).
# =============================================================================


def server_p99_ms(before: Dict[float, float], after: Dict[float, float]) -> Optional[float]:
    import attack

    le = attack.bucket_p99(before, after)
    return None if le is None else le * 1000


def run(args: argparse.Namespace, log: IO[str]) -> Dict[str, Any]:
    import attack
    from hostilekit import Crowd

    def say(text: str) -> None:
        print(text, file=log, flush=True)

    period = args.tick_ms / 1000
    observers_ws = min(args.ws_players, max(0, args.observers // 5))
    observers_tcp = args.observers - observers_ws
    bots_ws = args.ws_players - observers_ws
    bots_tcp = args.count - args.observers - bots_ws
    if bots_tcp < 0 or bots_ws < 0:
        raise SystemExit("--count must cover --observers and --ws-players")
    wave_size = round((args.count - args.observers) * args.churn / 100)
    biggest_attack = max([args.never_readers if "never-read" in args.attacks else 0,
                          300 if "slowloris" in args.attacks else 0,
                          200 if "fragments" in args.attacks else 0,
                          20 if "ping" in args.attacks else 0])
    max_clients = args.count + biggest_attack + wave_size + 500
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and max_clients + 200 > hard:
        raise SystemExit(f"--max-clients {max_clients} would not fit the open-files limit {hard}")
    per_proc = math.ceil(bots_tcp / st.bot_procs(bots_tcp, 0)) if bots_tcp else 1
    shares = [(n, False) for n in spread(bots_tcp, per_proc) if n] + \
        ([(bots_ws, True)] if bots_ws else [])
    server_cpus, load_cpus = cpu_sets() if args.pin else ([], [])
    if load_cpus:
        os.sched_setaffinity(0, set(load_cpus))  # and the attackers we start inherit it
    work = tempfile.mkdtemp(prefix="soak-")
    flags = ["--host", "127.0.0.1", "--port", "0", "--max-clients", str(max_clients),
             "--data", os.path.join(work, "data"), "--admin-port", "0",
             "--tick-ms", str(args.tick_ms), "--log-level", "warning"] + list(args.server_flag)
    result: Dict[str, Any] = {
        "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(), "load_at_start": load_average(),
        "options": {k: v for k, v in vars(args).items() if k not in ("worker",)},
        "server_flags": flags, "max_clients": max_clients, "bot_processes": [
            {"bots": n, "websocket": w} for n, w in shares],
        "observers": {"tcp": observers_tcp, "ws": observers_ws},
        "churn_wave_size": wave_size,
        "lateness_source": "observers: the kernel's receive time (SO_TIMESTAMPNS) of every TICK "
                           f"at {args.observers} observer players joined after the bots; "
                           "server: its own tick scheduler (/metrics histogram, the bucket "
                           "holding each minute's p99)",
        "samples": [], "minutes": [], "churn_waves": [], "attack_windows": [],
        "rss_points": [], "interrupted": "", "errors": [], "notes": [],
    }
    children = Children(LOG_DIR)
    crowd: Optional[Crowd] = None
    bots: Optional[Bots] = None
    server: Optional[Server] = None
    t0 = 0.0

    def interrupted(what: str) -> None:
        result["interrupted"] = what
        say(f"interrupted ({what}): stopping, writing what was measured")

    say(f"soak: {args.count} players ({bots_tcp} TCP bots over "
        f"{sum(1 for _, w in shares if not w)} process(es), {bots_ws} WebSocket bots, "
        f"{args.observers} observers), {args.movers * 100:g} % moving every tick; "
        f"{args.duration:g} s; churn {args.churn:g} % ({wave_size}) every "
        f"{args.churn_every:g} s; attacks every {args.cycle:g} s: {','.join(args.attacks)}; "
        f"--max-clients {max_clients}")
    windows: List[AttackWindow] = []

    def wind_down() -> None:
        """Stop in order, keeping every figure: the attack window, the bots (their
        final reports), the observers; the server goes last, with everyone else."""
        if windows:
            window = windows[-1]
            window.join(5)
            if not window.recorded:  # stopped early: what it measured still counts
                window.recorded = True
                result["attack_windows"].append(window.record())
        attack.stop_attackers()
        if bots is not None:
            bots.stop()
            result["bots_final"] = [f for f in bots.finals if f is not None]
        if crowd is not None:
            finish_observers(result, crowd, t0, period, args)
            crowd.close()
        if server is not None:
            result["server_log_tail"] = children.log_tail("server", 3000)
            result["late_tick_reports"] = late_tick_reports(children.log_tail("server", 1 << 24))

    try:
        with stoppable(children, interrupted):
            try:
                server = Server(children, flags, server_cpus, max_clients)
                result["server_pid"] = server.pid
                time.sleep(1.0)
                result["rss_start_bytes"] = rss_bytes(server.pid)
                say(f"server pid {server.pid} on port {server.port} (admin "
                    f"{server.admin_port}), RSS {result['rss_start_bytes'] / 1e6:.1f} MB")
                result["ports"] = wait_for_ports(args.count, say)
                ramp_started = time.monotonic()
                bots = Bots(children, server.port, shares, args.movers, period,
                            args.ramp_timeout + args.duration + 600, load_cpus, args.seed)
                total_bots = bots_tcp + bots_ws
                while True:
                    bots.pump(0.5)
                    in_game = bots.total("connected")  # dropped: counted, coming back
                    if in_game + bots.total("failed") + bots.total("dropped") >= total_bots:
                        break
                    if time.monotonic() - ramp_started > args.ramp_timeout:
                        result["errors"].append(f"ramp timed out: {in_game} of {total_bots} in")
                        break
                crowd = Crowd(server.port, tcp=observers_tcp, ws_count=observers_ws,
                              join_timeout=60, seed=args.seed)
                result["ramp_s"] = round(time.monotonic() - ramp_started, 1)
                result["ramp_failed"] = bots.total("failed")
                say(f"ramp: {bots.total('connected')} bots and {len(crowd.watchers)} observers "
                    f"in after {result['ramp_s']} s ({result['ramp_failed']} failed)")
                t0 = time.monotonic()
                result["t0_monotonic"] = t0
                schedule(args, result, server, bots, crowd, t0, period, say, windows)
            except Exception as exc:  # keep what was measured: it is written all the same
                result["errors"].append(f"{type(exc).__name__}: {exc}")
                say(f"error: {type(exc).__name__}: {exc}")
            finally:
                wind_down()  # a second Ctrl-C here cuts it short: stoppable kills the rest
    finally:
        children.kill_all()
        attack.stop_attackers()
        shutil.rmtree(work, ignore_errors=True)
    result["load_at_end"] = load_average()
    if bots is not None:
        result["drops"] = {
            "bots": bots.total("drops"), "bot_reasons": bots.drop_reasons(),
            "observers": len(crowd.dropped()) if crowd is not None else 0,
            "observer_reasons": [why for _, why in crowd.dropped()] if crowd is not None else [],
        }
        result["drops"]["players"] = result["drops"]["bots"] + result["drops"]["observers"]
        result["churn"] = {k: bots.total(k) for k in ("left", "rejoined", "rejoins_resumed",
                                                       "rejoins_refused")}
    result["targets"] = check_targets(result)
    return result


def schedule(args: argparse.Namespace, result: Dict[str, Any], server: Server, bots: Bots,
             crowd: "Crowd", t0: float, period: float,
             say: Callable[[str], None],
             windows: List[AttackWindow]) -> None:
    """The run itself, from t0 for --duration: what is due, in order, until the end."""
    end = args.duration
    next_sample = 0.0
    next_minute = 0.0
    next_wave = args.churn_every
    cycle = 0  # the next cycle whose attack window has not started
    rss_cycle = 0  # the next cycle whose RSS point is not taken
    wave_id = 0
    open_wave: Optional[Dict[str, Any]] = None
    window: Optional[AttackWindow] = None
    buckets_at_minute = server.target.lateness_buckets()
    bots_cpu = (time.monotonic(), bots.cpu_seconds())
    server.cpu_pct()
    est = window_estimate(args.attacks, args)
    while True:
        bots.pump(0.1)
        now = time.monotonic() - t0
        attacking = window is not None and window.is_alive()
        if window is not None and not attacking and not window.recorded:
            window.recorded = True
            result["attack_windows"].append(window.record())
            say(f"[{now:7.1f} s] attack window {window.cycle} over: " + "; ".join(
                f"{r['attack']} {'met' if r['meets_targets'] else 'MISSED'}" for r in window.rows)
                + (f" ({window.error})" if window.error else ""))
        if now >= end and not attacking and open_wave is None:
            if next_minute < end:  # the last part-minute
                result["minutes"].append({"minute": int(next_minute // 60),
                                          "server_lateness_p99_le_ms": server_p99_ms(
                                              buckets_at_minute,
                                              server.target.lateness_buckets())})
            break
        if now >= end + 300:  # a window or wave that never ends: give up on it
            result["errors"].append("the last attack window or churn wave did not finish")
            break
        if server.proc.poll() is not None:
            result["errors"].append(f"the server exited ({server.proc.returncode}) at {now:.0f} s")
            break
        gone = [k for k, p in enumerate(bots.procs) if p.poll() is not None]
        if gone:
            result["errors"].append(f"bot process(es) {gone} exited at {now:.0f} s")
            break
        if now >= next_sample:
            cpu_then, cpu_before = bots_cpu
            bots_cpu = (time.monotonic(), bots.cpu_seconds())
            stats = server.stats()
            sample: Dict[str, Any] = {
                "t_s": round(now, 1), "rss_bytes": rss_bytes(server.pid),
                "fds": open_fds(server.pid), "cpu_pct": round(server.cpu_pct(), 1),
                "bots_cpu_pct": round(100 * (bots_cpu[1] - cpu_before)
                                      / max(1e-6, bots_cpu[0] - cpu_then), 1),
                "players_in_game": stats.get("players"),
                "server_connections": stats.get("connections"),
                "python_blocks": stats.get("python_blocks"),
                "seats_parked": stats.get("seats_parked"),
                "players_connected": bots.total("connected")
                + sum(1 for w in crowd.watchers if not w.closed),
                "players_away": bots.total("away"),
                "drops": bots.total("drops") + len(crowd.dropped()),
                "attack": window.current if attacking and window is not None else "",
            }
            result["samples"].append(sample)
            say(f"[{now:7.1f} s] RSS {sample['rss_bytes'] / 1e6:.1f} MB, {sample['fds']} fds, "
                f"CPU {sample['cpu_pct']:.0f} % (bots {sample['bots_cpu_pct']:.0f} %), "
                f"{sample['players_connected']} players connected "
                f"({sample['players_in_game']} in game), {sample['drops']} dropped"
                + (f"; attack: {sample['attack']}" if sample["attack"] else ""))
            next_sample += args.sample
        if now >= next_minute + 60 and next_minute + 60 <= end:
            after = server.target.lateness_buckets()
            result["minutes"].append({"minute": int(next_minute // 60),
                                      "server_lateness_p99_le_ms":
                                      server_p99_ms(buckets_at_minute, after)})
            buckets_at_minute = after
            next_minute += 60
        if open_wave is not None and bots.wave_done(open_wave["wave"], open_wave["asked"]):
            finish_wave(open_wave, bots, server)
            result["churn_waves"].append(open_wave)
            say(f"[{now:7.1f} s] churn wave {open_wave['wave']}: {open_wave['left']} left, "
                f"{open_wave['back']} back ({open_wave['resumed']} as themselves, "
                f"{open_wave['refused']} refused) in {open_wave['seconds']} s; fds "
                f"{open_wave['fds_before']} -> {open_wave['fds_after']}")
            open_wave = None
        busy = attacking or open_wave is not None
        if not busy and now >= next_wave and now < end:
            wave_id += 1
            open_wave = {"wave": wave_id, "due_s": round(next_wave, 1), "t_s": round(now, 1),
                         "fds_before": open_fds(server.pid),
                         "connections_before": server.stats().get("connections")}
            open_wave["asked"] = bots.churn(wave_id, result["churn_wave_size"])
            while next_wave <= now:
                next_wave += args.churn_every
            continue
        attack_due = cycle * args.cycle + args.attack_at
        if not busy and args.attacks and now >= attack_due:
            if now + est <= end:
                window = AttackWindow(cycle, args.attacks, server, crowd, args, period, t0)
                window.start()
                windows.append(window)
                say(f"[{now:7.1f} s] attack window {cycle}: {', '.join(args.attacks)}")
            else:
                result["notes"].append(f"attack window {cycle} not started: it would overrun "
                                       f"the run ({est:.0f} s from {now:.0f} s)")
            cycle += 1
            continue
        rss_due = (rss_cycle + 1) * args.cycle - args.rss_before
        if rss_due <= end and now >= rss_due and not busy:
            held = server.stats()  # what the server holds then: live blocks, parked seats
            result["rss_points"].append({"cycle": rss_cycle, "due_s": round(rss_due, 1),
                                         "t_s": round(now, 1),
                                         "rss_bytes": rss_bytes(server.pid),
                                         "python_blocks": held.get("python_blocks"),
                                         "seats_parked": held.get("seats_parked")})
            rss_cycle += 1


def finish_wave(wave: Dict[str, Any], bots: Bots, server: Server, patience: float = 15.0) -> None:
    """Sum the workers' reports of a finished wave; wait (bounded) for the fds to come back."""
    reports = bots.waves.pop(wave["wave"], [])
    for key in ("left", "back", "resumed", "refused", "not_back"):
        wave[key] = sum(r[key] for r in reports)
    wave["seconds"] = max((r["seconds"] for r in reports), default=0.0)
    deadline = time.monotonic() + patience
    while True:
        fds = open_fds(server.pid)
        if fds <= wave["fds_before"] or time.monotonic() > deadline:
            break
        bots.pump(0.2)
    wave["fds_after"] = fds
    wave["fds_back"] = fds <= wave["fds_before"]


def finish_observers(result: Dict[str, Any], crowd: "Crowd", t0: float, period: float,
                     args: argparse.Namespace) -> None:
    """Per minute and per sample: the observers' tick lateness p99 (ms)."""
    if not t0:
        return
    edges = [float(k * 60) for k in range(math.ceil(args.duration / 60))] + [args.duration]
    late = crowd.lateness_by_window(period, t0, edges)
    by_minute = {m["minute"]: m for m in result["minutes"]}
    result["minutes"] = []
    for k, values in enumerate(late):
        row = by_minute.get(k, {"minute": k, "server_lateness_p99_le_ms": None})
        row["ticks_seen"] = len(values)
        row["lateness_p50_ms"] = round(percentile(values, 50) * 1000, 1) if values else None
        row["lateness_p99_ms"] = round(percentile(values, 99) * 1000, 1) if values else None
        row["lateness_max_ms"] = round(max(values) * 1000, 1) if values else None
        result["minutes"].append(row)
    samples = result["samples"]
    if len(samples) >= 2:
        edges = [s["t_s"] for s in samples]
        for s, values in zip(samples[1:], crowd.lateness_by_window(period, t0, edges)):
            s["lateness_p99_ms"] = round(percentile(values, 99) * 1000, 1) if values else None


# =============================================================================
# Targets, table, chart
# =============================================================================


def check_targets(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    points = result["rss_points"]
    if len(points) >= 3:
        ref = points[1]["rss_bytes"]
        drifts = [100 * (p["rss_bytes"] - ref) / ref for p in points[2:]]
        worst = max(drifts, key=abs)
        out.append({"target": "RSS drift, each cycle from the third vs the second",
                    "measured": f"{worst:+.2f} % (" + ", ".join(
                        f"{p['rss_bytes'] / 1e6:.1f}" for p in points) + " MB)",
                    "limit": f"< {TARGETS['rss_drift_pct']:g} %",
                    "met": abs(worst) < TARGETS["rss_drift_pct"]})
    else:
        out.append({"target": "RSS drift, each cycle from the third vs the second",
                    "measured": f"n/a: {len(points)} cycle point(s), 3 needed",
                    "limit": f"< {TARGETS['rss_drift_pct']:g} %", "met": None})
    waves = result["churn_waves"]
    back = sum(1 for w in waves if w["fds_back"])
    out.append({"target": "fds back to the pre-wave count after each churn wave",
                "measured": f"{back} of {len(waves)} waves" + (
                    f" (worst +{max(w['fds_after'] - w['fds_before'] for w in waves)})"
                    if waves else ""),
                "limit": "every wave", "met": back == len(waves) if waves else None})
    minutes = [m for m in result["minutes"] if m.get("lateness_p99_ms") is not None]
    worst_min = max(minutes, key=lambda m: m["lateness_p99_ms"], default=None)
    out.append({"target": "tick lateness p99 (observers), every minute",
                "measured": f"worst {worst_min['lateness_p99_ms']} ms (minute "
                            f"{worst_min['minute']}) over {len(minutes)} minute(s)"
                if worst_min else "no ticks observed",
                "limit": f"< {TARGETS['lateness_p99_ms']:g} ms",
                "met": bool(minutes) and worst_min is not None
                and worst_min["lateness_p99_ms"] < TARGETS["lateness_p99_ms"]})
    drops = result.get("drops", {})
    out.append({"target": "players dropped who did not choose to leave",
                "measured": f"{drops.get('players', '?')} ({drops.get('bots', '?')} bots, "
                            f"{drops.get('observers', '?')} observers)",
                "limit": "0", "met": drops.get("players") == 0})
    churn = result.get("churn", {})
    out.append({"target": "rejoining players refused",
                "measured": f"{churn.get('rejoins_refused', '?')} of "
                            f"{churn.get('rejoined', '?')} rejoins",
                "limit": "0", "met": churn.get("rejoins_refused") == 0})
    return out


def late_tick_reports(log: str) -> List[str]:
    """The server's own account of each late tick it logged (netcore's LateTick lines).

    The loop logs one at most every 10 s (with a count of the late ticks
    left out), naming where the time went since the tick before: that tick's
    own length, I/O handlers, timers, or time the loop did not run at all.
    """
    return [line.replace(" WARNING netcore.loop:", "", 1) for line in log.splitlines()
            if " ms late; since the tick before ended " in line]


def _met(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


def report_text(result: Dict[str, Any]) -> str:
    import attack
    from report import fmt, fmt_table

    lines = []
    lines += ["Per minute (tick lateness: observers' kernel receive times; server: its "
              "scheduler, the /metrics bucket holding the p99):", ""]
    lines.append(fmt_table(
        ["minute", "lateness p50 ms", "p99 ms", "max ms", "server p99 (bucket)", "ticks seen"],
        [[m["minute"], fmt(m.get("lateness_p50_ms"), ""), fmt(m.get("lateness_p99_ms"), ""), fmt(m.get("lateness_max_ms"), ""),
          "-" if m.get("server_lateness_p99_le_ms") is None
          else f"≤ {m['server_lateness_p99_le_ms']:g} ms", m.get("ticks_seen", 0)]
         for m in result["minutes"]]))
    if result["churn_waves"]:
        lines += ["", "Churn waves:", ""]
        lines.append(fmt_table(
            ["wave", "at s (due)", "left", "back", "as themselves", "refused", "seconds",
             "fds before -> after"],
            [[w["wave"], f"{w['t_s']} ({w['due_s']})", w["left"], w["back"], w["resumed"],
              w["refused"], w["seconds"], f"{w['fds_before']} -> {w['fds_after']}"]
             for w in result["churn_waves"]]))
    rows = [dict(r, attack=f"cycle {w['cycle']}: {r['attack']}")
            for w in result["attack_windows"] for r in w["rows"]]
    if rows:
        lines += ["", "Attack windows (bench/attack.py's figures and targets, per attack):", ""]
        lines.append(attack.table(rows))
    if result["rss_points"]:
        lines += ["", "RSS at the same point of each cycle (with the server's live Python "
                  "blocks and parked seats then): " + ", ".join(
                      f"cycle {p['cycle']} at {p['t_s']} s: {p['rss_bytes'] / 1e6:.2f} MB "
                      f"({p.get('python_blocks')} blocks, {p.get('seats_parked')} parked)"
                      for p in result["rss_points"])]
    lines += ["", fmt_table(["target", "measured", "limit", "met"],
                            [[t["target"], t["measured"], t["limit"], _met(t["met"])]
                             for t in result["targets"]])]
    s = result["samples"]
    if s:
        lines += ["", f"server RSS {result.get('rss_start_bytes', 0) / 1e6:.1f} MB at start, "
                  f"{s[0]['rss_bytes'] / 1e6:.1f} -> {s[-1]['rss_bytes'] / 1e6:.1f} MB over the "
                  f"run; fds {s[0]['fds']} -> {s[-1]['fds']}; server CPU median "
                  f"{sorted(x['cpu_pct'] for x in s)[len(s) // 2]:.0f} %, bots "
                  f"{sorted(x['bots_cpu_pct'] for x in s)[len(s) // 2]:.0f} % of a core"]
    late = result.get("late_tick_reports")
    if late:
        lines += ["", f"The server's late-tick reports ({len(late)}; at most one every 10 s):", ""]
        lines += [f"- {line}" for line in late]
    if result["errors"] or result["notes"]:
        lines += ["", "; ".join(result["errors"] + result["notes"])]
    if result["interrupted"]:
        lines += ["", f"interrupted: {result['interrupted']}"]
    lines += ["", f"load average {result['load_at_start']} at start, "
              f"{result.get('load_at_end', '?')} at the end; {result['machine']}"]
    return "\n".join(lines)


def chart(result: Dict[str, Any]) -> str:
    from report import Series, composite_svg, line_chart

    s = result["samples"]
    bands = [(w["start_s"] / 60, w["end_s"] / 60) for w in result["attack_windows"]]
    label = "attack windows"

    def pts(key: str, scale: float = 1.0) -> List[Tuple[float, float]]:
        return [(x["t_s"] / 60, x[key] * scale) for x in s if x.get(key) is not None]

    minutes = [(m["minute"] + 0.5, m["lateness_p99_ms"]) for m in result["minutes"]
               if m.get("lateness_p99_ms") is not None]
    # A minute whose p99 fell past the histogram's last bucket reads inf: drawn
    # at the top of what was measured (the table says "inf").
    ceiling = max([y for _, y in minutes if math.isfinite(y)], default=1000.0)
    server_min = [(m["minute"] + 0.5, min(m["server_lateness_p99_le_ms"], ceiling))
                  for m in result["minutes"] if m.get("server_lateness_p99_le_ms") is not None]
    panels = [
        line_chart("Server RSS (y axis not from 0)", "MB", [
            Series("RSS", "#1b6ac9", pts("rss_bytes", 1e-6)),
            Series("each cycle's RSS point", "#c00",
                   [(p["t_s"] / 60, p["rss_bytes"] / 1e6) for p in result["rss_points"]],
                   marker="diamond", line=False)],
            x_label="minutes", bands=bands, band_label=label, zero_y=False),
        line_chart("Server open fds", "fds", [Series("fds", "#2a9d3c", pts("fds"))],
                   x_label="minutes", bands=bands, band_label=label),
        line_chart("Tick lateness p99", "ms", [
            Series("observers, per minute", "#e8710a", minutes),
            Series("observers, per sample", "#f2b27a", pts("lateness_p99_ms"), dash="4,3"),
            Series("server (bucket), per minute", "#777", server_min, dash="2,2")],
            target=(TARGETS["lateness_p99_ms"], "50 ms target"), x_label="minutes",
            bands=bands, band_label=label),
        line_chart("Players", "players", [
            Series("connected (bots + observers)", "#1b6ac9", pts("players_connected")),
            Series("in game (server: attackers too)", "#999",
                   pts("players_in_game"), dash="4,3")],
            x_label="minutes", bands=bands, band_label=label),
    ]
    opts = result["options"]
    caption = (f"bench/soak.py: {opts['count']} players, {opts['duration']:g} s, churn "
               f"{opts['churn']:g} % every {opts['churn_every']:g} s, attacks every "
               f"{opts['cycle']:g} s; {result['started']}; load {result['load_at_start']}")
    return composite_svg(panels, caption)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=(__doc__ or "").split("\n\n", 1)[1])
    ap.add_argument("--count", type=int, default=15_000, help="players in all (default 15000)")
    ap.add_argument("--duration", type=float, default=1800.0,
                    help="seconds, from when everyone is in (default 1800)")
    ap.add_argument("--ws-players", type=int, default=200,
                    help="players over WebSocket, observers included (default 200)")
    ap.add_argument("--observers", type=int, default=20,
                    help="of the players, quiet ones that timestamp ticks (default 20)")
    ap.add_argument("--movers", type=float, default=0.10,
                    help="share of bots moving every tick (default 0.10)")
    ap.add_argument("--churn", type=float, default=2.0,
                    help="%% of bots leaving and rejoining per wave (default 2)")
    ap.add_argument("--churn-every", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--cycle", type=float, default=300.0,
                    help="seconds between attack windows (default 300)")
    ap.add_argument("--attack-at", type=float, default=30.0,
                    help="seconds into each cycle the attacks start (default 30)")
    ap.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                    help="bench/attack.py's attacks, in order ('' for none; "
                         f"default {','.join(DEFAULT_ATTACKS)})")
    ap.add_argument("--rss-before", type=float, default=10.0,
                    help="each cycle's RSS point: this many seconds before its end (default 10)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds (default 10)")
    ap.add_argument("--tick-ms", type=int, default=250)
    ap.add_argument("--ramp-timeout", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="don't pin the server to CPU 0 and the rest to the other CPUs")
    ap.add_argument("--server-flag", action="append", default=[],
                    help="extra flag for the server (repeatable)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "soak.json"))
    ap.add_argument("--svg", default=os.path.join(HERE, "results", "soak.svg"),
                    help="the chart over time ('': none)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    if "--worker" in (sys.argv[1:] if argv is None else argv):  # a bot process: no attack.py
        worker_main(ap.parse_known_args(argv)[0].worker)
        return 0
    import attack

    attack.add_attack_options(ap)  # the attacks' own options, as bench/attack.py has them
    args = ap.parse_args(argv)

    args.attacks = [a for a in args.attacks.split(",") if a]
    for name in args.attacks:
        if name not in attack.RUNNERS:
            ap.error(f"unknown attack {name!r}; choose from {', '.join(attack.ATTACKS)}")
    if args.cycle <= args.attack_at or args.cycle <= args.rss_before:
        ap.error("--cycle must be longer than --attack-at and --rss-before")
    result = run(args, sys.stdout)
    print()
    print(report_text(result), flush=True)
    written = [path for path in (args.json, args.svg) if path]
    for path in written:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(chart(result))
    print(f"wrote {' and '.join(written) or 'nothing (--json and --svg are empty)'}")
    return 0 if all(t["met"] is not False for t in result["targets"]) \
        and not result["interrupted"] and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())

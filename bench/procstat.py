"""The benchmarks' processes: starting, pinning and stopping them, and reading /proc.

RSS comes from ``/proc/PID/statm`` (resident pages x page size): the same
quantity the original server reported, and the same file a process reads as
``/proc/self/statm``. CPU time comes from ``/proc/PID/stat`` (utime, stime).

Every benchmark starts its servers and load generators through
:class:`Children`: each child in its own process group, pinned to its CPUs
(:func:`cpu_sets`: the server alone on CPU 0, the load on the others), killed
with the driver (``PR_SET_PDEATHSIG``), and only ever signalled by its own
process group, so a benchmark never touches a process it did not start.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

TCP_TIME_WAIT = "06"  # the state column of /proc/net/tcp
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """(user, system) CPU seconds used so far by ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def all_proc_stats() -> Iterator[Tuple[int, List[str]]]:
    """(pid, the fields of /proc/PID/stat after the command's name) of every process:
    ``fields[0]`` is the state, ``[2]`` the process group, ``[11]``/``[12]`` utime/stime."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        yield int(entry), fields


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid``
    (a scan of /proc: for a load generator and its workers, twice a second)."""
    ticks = sum(int(f[11]) + int(f[12]) for _pid, f in all_proc_stats() if int(f[2]) == pgid)
    return ticks / TICKS


def cpu_runtime(pid: int) -> float:
    """CPU seconds ``pid`` has run (user + system), to the nanosecond.

    ``/proc/PID/stat`` counts in clock ticks (10 ms here), too coarse for a
    few seconds of a lightly loaded server; ``/proc/PID/schedstat`` has the
    scheduler's own runtime in ns. Falls back to stat where it is missing.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        user, system = cpu_seconds(pid)
        return user + system


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def build_c(source: str, out_dir: str, log: Callable[[str], None], what: str) -> Optional[str]:
    """Compile ``source`` with ``cc -O2`` into ``out_dir``; the executable's
    path, or None (and ``log`` why, naming ``what`` is skipped) if it can't be."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        log(f"skipping {what}: no C compiler (cc) on PATH; e.g. apt-get install gcc")
        return None
    exe = os.path.join(out_dir, os.path.splitext(os.path.basename(source))[0])
    proc = subprocess.run([cc, "-O2", "-o", exe, source], capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"skipping {what}: {cc} failed: {proc.stderr.strip()[-500:]}")
        return None
    return exe


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else 0.0


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg has them ("?" without it)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine() -> Dict[str, object]:
    """What the figures were measured on."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release,
    }


# =============================================================================
# Processes: every child in its own process group, killed only by its pgid.
# =============================================================================


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def server_stats(port: int, host: str = "127.0.0.1") -> Optional[Dict[str, Any]]:
    """A game server's /stats.json, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/stats.json", timeout=10) as r:
            return dict(json.loads(r.read()))
    except OSError:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for a child server to bind (a race,
    but the only way to tell a separate process its port before it starts)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cpu_sets() -> Tuple[List[int], List[int]]:
    """(server CPUs, load CPUs): the server alone on CPU 0 where there are two or more."""
    ncpu = os.cpu_count() or 1
    if ncpu < 2 or not hasattr(os, "sched_setaffinity"):
        return [], []
    return [0], list(range(1, ncpu))


def raise_nofile() -> int:
    """Raise this process's open-files soft limit to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def child_setup(cpus: Sequence[int], nice: int = 0) -> Callable[[], None]:
    """Runs in the child before exec: CPU pinning, niceness (a load generator
    at +10 yields a core to the system it measures), die with the driver."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked around Popen
        if nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)  # kept across exec
            except OSError:
                pass
        if cpus and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, set(cpus))
            except OSError:
                pass
        try:  # PR_SET_PDEATHSIG = 1: SIGKILL us if the driver dies
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    return setup


class Children:
    """The processes this run started; the only ones it ever signals."""

    def __init__(self, log_dir: str) -> None:
        self.procs: List["subprocess.Popen[str]"] = []
        self.log_dir = log_dir

    def start(self, cmd: List[str], cpus: Sequence[int], name: str,
              stdin_pipe: bool = False, nice: int = 0) -> "subprocess.Popen[str]":
        """Start ``cmd``; its stderr goes to ``log_dir/name.log`` (a pipe nobody
        reads could fill up and stall a server mid-measurement). Its stdout is
        a pipe (line-buffered text); so is its stdin with ``stdin_pipe``, for a
        child that runs until its stdin closes. ``nice``: its niceness."""
        os.makedirs(self.log_dir, exist_ok=True)
        # A Ctrl-C between Popen and the append would leak the child: hold
        # stop signals until it is on the list (the child unblocks them).
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            with open(os.path.join(self.log_dir, name + ".log"), "w") as err:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                    start_new_session=True, preexec_fn=child_setup(cpus, nice),
                )
            self.procs.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        return proc

    def log_tail(self, name: str, size: int = 1500) -> str:
        try:
            with open(os.path.join(self.log_dir, name + ".log")) as f:
                return f.read()[-size:]
        except OSError:
            return ""

    @staticmethod
    def signal_group(proc: "subprocess.Popen[str]", sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the group this process leads: our own pids only
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, proc: "subprocess.Popen[str]", timeout: float = 10.0) -> Optional[int]:
        """SIGTERM the process (and its group), then SIGKILL if it lingers."""
        if proc.poll() is None:
            self.signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(proc, signal.SIGKILL)  # stragglers (bot workers) of the group
        if proc.poll() is None:
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode

    def kill_all(self) -> None:
        """Stop everything still running; a second Ctrl-C must not cut this short."""
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in list(self.procs):
                self.stop(proc, timeout=3.0)
        finally:
            signal.signal(signal.SIGINT, old)


def spread(count: int, per_proc: int) -> List[int]:
    """``count`` split into the fewest near-equal parts of at most ``per_proc``."""
    procs = max(1, -(-count // per_proc))
    base, extra = divmod(count, procs)
    return [base + (1 if i < extra else 0) for i in range(procs)]


def read_line(proc: "subprocess.Popen[str]", timeout: float) -> str:
    """A line of ``proc``'s stdout, or "" if none comes within ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return ""
    return proc.stdout.readline()


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived: stop, clean up, write what we have."""


def raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP raise :class:`Interrupted`, Ctrl-C raises
    KeyboardInterrupt (even if this process was started with SIGINT ignored,
    as under some runners: Python keeps an inherited SIG_IGN)."""
    old = {sig: signal.signal(sig, raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stoppable(children: Children, interrupted: Callable[[str], None]) -> Iterator[None]:
    """The body of a benchmark run: Ctrl-C, SIGTERM or SIGHUP end it early,
    ``interrupted(what)`` is called and the code after the block goes on (to
    write what was measured); on any exit every child is stopped."""
    with stop_signals_raise():
        try:
            yield
        except (KeyboardInterrupt, Interrupted) as exc:
            interrupted(str(exc) or "Ctrl-C")
        finally:
            children.kill_all()


# =============================================================================
# Loopback ports: room for a step's connections
# =============================================================================


def loopback_ports_in_use() -> Tuple[int, int]:
    """(local TCP ports in the ephemeral range that some socket holds, of which held
    only by TIME_WAIT sockets), from /proc/net/tcp*.

    Ports, not sockets: a server on an ephemeral port holds one port however many
    connections it accepted (15,000 sockets on one port must not read as a full range).
    """
    lo, hi = ephemeral_range()
    held: Dict[int, bool] = {}  # port -> only TIME_WAIT sockets on it so far
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    fields = line.split(None, 4)
                    if len(fields) < 4:
                        continue
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    if lo <= port <= hi:
                        held[port] = held.get(port, True) and fields[3] == TCP_TIME_WAIT
        except OSError:
            pass
    return len(held), sum(held.values())


def ephemeral_range() -> Tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def wait_for_ports(needed: int, log: Callable[[str], None], patience: float = 30.0) -> Dict[str, int]:
    """Wait (a bounded time) until the ephemeral range has room for ``needed`` connections."""
    lo, hi = ephemeral_range()
    size = hi - lo + 1
    deadline = time.monotonic() + patience
    used, waiting = loopback_ports_in_use()
    while used + needed + 512 > size and time.monotonic() < deadline:
        log(f"  ports: {used} of {size} ephemeral ports in use ({waiting} TIME_WAIT); "
            f"waiting for room for {needed}")
        time.sleep(2.0)
        used, waiting = loopback_ports_in_use()
    return {"ephemeral_in_use": used, "time_wait": waiting, "ephemeral_size": size}

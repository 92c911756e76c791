"""Can this host hold N clients in one server process? Its facts, the checks, a Redis probe.

What a server with many connections needs of Linux, read from ``/proc`` and
this process's limits (:func:`read_host_facts`: a fake tree in tests), and
judged by one small function per limit (:data:`HOST_CHECKS`), each with the
line that fixes it. The figures a check needs (bytes per client, spare
descriptors, the listen backlog) and where its fixes go come from the
application, as a :class:`HostNeeds`; so does the wording that names the
application's own tools::

    facts = read_host_facts(fds=clients + 32)
    checks = host_checks(facts, HostNeeds(clients, reserve_fds=32, limits_user="game"))
    write_checks(checks, sys.stdout)
    print(verdict(checks, clients))

A :class:`Check` is OK, WARN (works, degraded) or BLOCK (N clients will not
fit). :func:`probe_redis` and :func:`redis_checks` do the same for a Redis
that a server depends on: reachable, fast, configured not to evict.

Used by a command-line tool, never by a server at run time: import it when
asked (``netcore`` does not import it).
"""

from __future__ import annotations

import json
import os
import resource
import textwrap
import time

from .typing_shim import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import IO, Callable, Dict, List, Optional, Sequence, Tuple

    from .redis import Pending, RedisAddress, RedisError

__all__ = ["BLOCK", "HOST_CHECKS", "HOST_SYSCTLS", "OK", "WARN", "Check", "Fix", "HostFacts",
           "HostNeeds", "RedisNeeds", "RedisProbe", "checks_json", "host_checks",
           "may_raise_nofile_hard", "nofile_limits", "probe_redis", "read_host_facts",
           "read_sysctl", "redis_checks", "verdict", "write_checks"]

OK, WARN, BLOCK = "ok", "warn", "block"


class Fix(NamedTuple):
    where: str  # the file or place the line goes
    line: str  # the exact line


class Check(NamedTuple):
    """One thing looked at: what it is, what is needed, and how to fix it."""

    name: str
    status: str  # OK, WARN (works, degraded) or BLOCK (N clients will not fit)
    current: str
    needed: str
    why: str = ""
    fixes: Tuple[Fix, ...] = ()


# -- the host's facts -----------------------------------------------------------


class HostFacts(NamedTuple):
    """What the checks read: kernel settings, this process's limits, free memory."""

    nofile_soft: int  # -1: unlimited
    nofile_hard: int
    can_raise_hard: bool  # may this process raise its hard RLIMIT_NOFILE?
    sysctl: Dict[str, Optional[str]]  # "fs.nr_open" -> "1048576" (None: unreadable)
    mem_available_kb: Optional[int]
    page_size: int


HOST_SYSCTLS = (
    "fs.file-max", "fs.file-nr", "fs.nr_open", "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies", "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_mem", "net.ipv4.tcp_max_tw_buckets", "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_count",
)


def read_sysctl(key: str, root: str = "/") -> Optional[str]:
    """``/proc/sys/<key with dots as slashes>`` under ``root``; None if absent."""
    path = os.path.join(root, "proc", "sys", *key.split("."))
    try:
        with open(path) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def nofile_limits() -> Tuple[int, int]:
    """This process's RLIMIT_NOFILE: (soft, hard)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def may_raise_nofile_hard(target: int) -> bool:
    """Try to raise this process's hard limit to ``target``, then put it back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= target:
        return True
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, target))
    except (ValueError, OSError):
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # lowering is always allowed
    return True


def read_host_facts(root: str = "/", fds: int = 0,
                    rlimit: Callable[[], Tuple[int, int]] = nofile_limits,
                    may_raise: Callable[[int], bool] = may_raise_nofile_hard) -> HostFacts:
    """Everything the checks read, from ``root``/proc (a fake tree in tests).

    ``fds``: the open files wanted, asked of ``may_raise`` (can this process
    raise its hard limit that far?).
    """
    soft, hard = rlimit()
    inf = resource.RLIM_INFINITY
    mem: Optional[int] = None
    try:
        with open(os.path.join(root, "proc", "meminfo")) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    mem = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return HostFacts(
        nofile_soft=-1 if soft == inf else soft,
        nofile_hard=-1 if hard == inf else hard,
        can_raise_hard=may_raise(fds),
        sysctl={key: read_sysctl(key, root) for key in HOST_SYSCTLS},
        mem_available_kb=mem,
        page_size=os.sysconf("SC_PAGE_SIZE"),
    )


# -- the checks -----------------------------------------------------------------


class HostNeeds(NamedTuple):
    """What one server process needs of its host, where its fixes go, and how they read.

    The figures are the application's own, measured (its bytes per client
    in user space, the kernel's per socket, what in-flight buffers hold).
    The last three fields are sentences the report uses, for the
    application to name its own flags and tools.
    """

    clients: int
    reserve_fds: int = 32  # descriptors besides the clients': listeners, the poller, logs
    backlog: int = 4096  # the listen backlog the server asks for
    user_bytes_per_client: int = 2048  # the server's RSS per client
    kernel_bytes_per_socket: int = 6144  # slab per idle TCP socket
    buffer_bytes_per_socket: int = 4096  # in flight per client (a tick or two of frames)
    base_bytes: int = 64 << 20  # the interpreter, the application, headroom
    sysctl_file: str = "/etc/sysctl.d/60-server.conf"
    limits_file: str = "/etc/security/limits.d/server.conf"
    limits_user: str = "*"  # the user the server runs as, in limits.d lines
    unit_file: str = "the server's systemd unit"
    # "{processes}" and "{per_process}" are filled in.
    spread: str = ("spread them over {processes} server processes of at most {per_process} "
                   "clients each")
    port_users: str = ("a load generator on this host, or a proxy in front of the server "
                       "(one upstream connection per client)")
    file_max_note: str = ""  # said when fs.file-max is fine


def host_checks(facts: HostFacts, needs: HostNeeds) -> List[Check]:
    """What will and will not let ``needs.clients`` connect to one server process.

    One small function per check, in the report's order (:data:`HOST_CHECKS`);
    each returns None where what it looks at does not exist on this host.
    """
    found = (check(facts, needs) for check in HOST_CHECKS)
    return [c for c in found if c is not None]


def _ints(value: Optional[str]) -> Optional[List[int]]:
    if value is None:
        return None
    try:
        return [int(x) for x in value.split()]
    except ValueError:
        return None


def _nice_limit(needed: int) -> int:
    """A round limit to recommend: a power of two, at least 65536."""
    limit = 65536
    while limit < needed:
        limit *= 2
    return limit


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def _unreadable(name: str, key: str) -> Check:
    return Check(name, WARN, "unreadable", "-", f"could not read /proc/sys/{key.replace('.', '/')}")


def _at_least(name: str, have: int, want: int, short: str, why: str, fix: Fix, *,
              current: Optional[str] = None, needed: Optional[str] = None,
              why_ok: str = "") -> Check:
    """The check of a setting that wants ``have >= want``: ``short`` (WARN or
    BLOCK) with ``why`` and ``fix`` when it falls short."""
    ok = have >= want
    return Check(name, OK if ok else short, str(have) if current is None else current,
                 f">= {want}" if needed is None else needed, why_ok if ok else why,
                 () if ok else (fix,))


def _check_nofile(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    name = "open files per process (RLIMIT_NOFILE)"
    clients, reserve = needs.clients, needs.reserve_fds
    fds = clients + reserve
    soft, hard = facts.nofile_soft, facts.nofile_hard
    current = f"soft {'unlimited' if soft < 0 else soft}, hard {'unlimited' if hard < 0 else hard}"
    needed = f">= {fds} ({clients} clients + {reserve} spare)"
    if hard < 0 or hard >= fds:
        why = ""
        if 0 <= soft < fds:
            why = "the server raises its soft limit to the hard limit when it starts"
        return Check(name, OK, current, needed, why)
    limit = _nice_limit(fds)
    nr_open = _ints(facts.sysctl.get("fs.nr_open"))
    if nr_open and fds <= nr_open[0] < limit:
        limit = nr_open[0]  # a limit above fs.nr_open is refused
    user = needs.limits_user
    fixes: Tuple[Fix, ...] = (
        Fix(needs.unit_file + ", [Service]", f"LimitNOFILE={limit}"),
        Fix(needs.limits_file, f"{user}  hard  nofile  {limit}"),
        Fix(needs.limits_file, f"{user}  soft  nofile  {limit}"),
    )
    per_process = max(hard - reserve, 0)
    processes = -(-clients // per_process) if per_process else 0
    spread = (f"one process holds at most {per_process} clients here: "
              + needs.spread.format(processes=processes, per_process=per_process)
              if per_process else "")
    if facts.can_raise_hard:
        why = (f"The hard limit is {hard}. Raise it where the server is started, with one "
               "of the lines below.")
        fixes = (Fix("the shell that starts the server, as root", f"ulimit -n {limit}"),) + fixes
        return Check(name, BLOCK, current, needed, why, fixes)
    why = (f"The hard limit is {hard} and cannot be raised from here: this process may not "
           "raise it (no CAP_SYS_RESOURCE, as in most containers; even root is refused).")
    if spread:
        why += f"\nSo {spread}."
        why += "\nOr run it on another host"
    else:
        why += "\nRun it on another host"
    why += (f", or in a container started with a higher limit (docker run --ulimit "
            f"nofile={limit}:{limit}), using the lines below.")
    return Check(name, BLOCK, current, needed, why, fixes)


def _check_nr_open(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    fds = needs.clients + needs.reserve_fds
    nr_open = _ints(facts.sysctl["fs.nr_open"])
    if nr_open is None:
        return _unreadable("fs.nr_open (most open files any process may have)", "fs.nr_open")
    return _at_least(
        "fs.nr_open (ceiling for any process's open-files limit)", nr_open[0], fds, BLOCK,
        "LimitNOFILE= and limits.d values above this are refused",
        Fix(needs.sysctl_file, f"fs.nr_open = {_nice_limit(fds)}"))


def _check_file_max(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    fds = needs.clients + needs.reserve_fds
    file_max, file_nr = _ints(facts.sysctl["fs.file-max"]), _ints(facts.sysctl["fs.file-nr"])
    if file_max is None:
        return _unreadable("fs.file-max (open files, whole system)", "fs.file-max")
    in_use = file_nr[0] if file_nr else 0
    want = fds + in_use
    return _at_least(
        "fs.file-max (open files, whole system)", file_max[0], want, BLOCK,
        "the kernel refuses new sockets system-wide (ENFILE) past this",
        Fix(needs.sysctl_file, f"fs.file-max = {_nice_limit(2 * want)}"),
        needed=f">= {want} ({fds} + {in_use} open now)", why_ok=needs.file_max_note)


def _check_somaxconn(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    backlog = needs.backlog
    storm = min(backlog, needs.clients)  # a reconnect storm: everyone at once, up to the backlog
    somaxconn = _ints(facts.sysctl["net.core.somaxconn"])
    if somaxconn is None:
        return _unreadable("net.core.somaxconn", "net.core.somaxconn")
    return _at_least(
        "net.core.somaxconn (accept queue; caps our listen backlog)", somaxconn[0], storm, WARN,
        f"the server asks for {backlog}; a reconnect storm after a restart "
        "overflows the queue and clients wait 1-3 s to retry their SYN",
        Fix(needs.sysctl_file, f"net.core.somaxconn = {backlog}"))


def _check_syn_backlog(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    storm = min(needs.backlog, needs.clients)
    syn = _ints(facts.sysctl["net.ipv4.tcp_max_syn_backlog"])
    cookies = _ints(facts.sysctl["net.ipv4.tcp_syncookies"])
    if syn is None:
        return _unreadable("net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_max_syn_backlog")
    on = bool(cookies and cookies[0])
    return _at_least(
        "net.ipv4.tcp_max_syn_backlog (half-open connections)", syn[0], storm, WARN,
        "past it, SYN cookies answer instead: connections still succeed"
        if on else "past it, SYNs are dropped and clients retry later",
        Fix(needs.sysctl_file, "net.ipv4.tcp_max_syn_backlog = 8192"),
        current=str(syn[0]) + (" (syncookies on)" if on else " (syncookies off)"))


def _check_port_range(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    clients = needs.clients
    ports = _ints(facts.sysctl["net.ipv4.ip_local_port_range"])
    if ports is None or len(ports) != 2:
        return _unreadable("net.ipv4.ip_local_port_range", "net.ipv4.ip_local_port_range")
    span = ports[1] - ports[0] + 1
    why = ("one source address can open at most this many connections to one server "
           "port: " + needs.port_users)
    if clients > 65535 - 10000 + 1:
        why += ("; the widest useful range still gives one address ~55,000 ports: above "
                "that use several source addresses (127.0.0.2, ...) or hosts")
    return _at_least(
        "net.ipv4.ip_local_port_range (load generators, proxies)", span, clients, WARN, why,
        Fix(needs.sysctl_file, "net.ipv4.ip_local_port_range = 10000 65535"),
        current=f"{ports[0]}-{ports[1]} ({span} ports)", needed=f">= {clients} ports")


def _check_tcp_mem(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    tcp_mem = _ints(facts.sysctl["net.ipv4.tcp_mem"])
    page = facts.page_size
    per_socket = needs.buffer_bytes_per_socket
    need_pages = -(-needs.clients * per_socket // page)
    if tcp_mem is None or len(tcp_mem) != 3:
        return _unreadable("net.ipv4.tcp_mem", "net.ipv4.tcp_mem")
    low, pressure, high = tcp_mem
    status = OK if pressure >= need_pages else WARN if high >= need_pages else BLOCK
    return Check(
        "net.ipv4.tcp_mem (TCP buffer memory, pages: low pressure max)", status,
        f"{low} {pressure} {high} (pressure at {_mib(pressure * page)})",
        f"pressure >= {need_pages} ({_mib(need_pages * page)}: "
        f"{per_socket // 1024} KiB in flight per client)",
        "" if status == OK else "under pressure the kernel shrinks every socket's buffers; "
        "past max, sends fail and connections are dropped",
        () if status == OK else (Fix(needs.sysctl_file, f"net.ipv4.tcp_mem = {low} "
                                                        f"{max(pressure, 2 * need_pages)} "
                                                        f"{max(high, 3 * need_pages)}"),))


def _check_memory(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    if facts.mem_available_kb is None:
        return Check("memory available", WARN, "unreadable", "-",
                     "could not read MemAvailable from /proc/meminfo")
    per_client = (needs.user_bytes_per_client + needs.kernel_bytes_per_socket
                  + needs.buffer_bytes_per_socket)
    need = needs.base_bytes + needs.clients * per_client
    have = facts.mem_available_kb * 1024
    ok = have >= need
    return Check(
        "memory available (MemAvailable)", OK if ok else BLOCK, _mib(have),
        f">= {_mib(need)} ({per_client // 1024} KiB per client + {_mib(needs.base_bytes)})",
        "" if ok else "no setting fixes this: a bigger host, or fewer clients per host")


def _check_tw_buckets(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    clients = needs.clients
    tw = _ints(facts.sysctl["net.ipv4.tcp_max_tw_buckets"])
    if tw is None:
        return None
    return _at_least(
        "net.ipv4.tcp_max_tw_buckets (TIME_WAIT after the server closes)", tw[0], clients, WARN,
        "a shutdown closes every connection from our side; past this the "
        "kernel drops TIME_WAIT state early and logs 'time wait bucket table overflow'",
        Fix(needs.sysctl_file, f"net.ipv4.tcp_max_tw_buckets = {_nice_limit(clients)}"))


def _check_conntrack(facts: HostFacts, needs: HostNeeds) -> Optional[Check]:
    conntrack = _ints(facts.sysctl["net.netfilter.nf_conntrack_max"])
    if conntrack is None:  # only there when connection tracking (a firewall, NAT) is loaded
        return None
    count = _ints(facts.sysctl["net.netfilter.nf_conntrack_count"])
    in_use = count[0] if count else 0
    clients = needs.clients
    want = clients + in_use
    return _at_least(
        "net.netfilter.nf_conntrack_max (firewall connection tracking)", conntrack[0], want,
        BLOCK, "when the table is full the kernel silently drops new connections "
        "('nf_conntrack: table full, dropping packet' in dmesg)",
        Fix(needs.sysctl_file, f"-net.netfilter.nf_conntrack_max = {_nice_limit(2 * want)}"),
        needed=f">= {want} ({clients} + {in_use} tracked now)")


#: The checks, in the order they are reported.
HOST_CHECKS: Tuple[Callable[[HostFacts, HostNeeds], Optional[Check]], ...] = (
    _check_nofile, _check_nr_open, _check_file_max, _check_somaxconn, _check_syn_backlog,
    _check_port_range, _check_tcp_mem, _check_memory, _check_tw_buckets, _check_conntrack,
)


# -- the report -------------------------------------------------------------------


def write_checks(checks: Sequence[Check], out: IO[str]) -> None:
    """Each check: its status, name, what is and what is needed, why, and its fixes."""
    w = out.write
    label = {OK: "  ok ", WARN: " WARN", BLOCK: "BLOCK"}
    for c in checks:
        w(f"[{label[c.status]}] {c.name}\n{'':8}now {c.current}; needs {c.needed}\n")
        for para in c.why.splitlines():
            w(textwrap.fill(para, 96, initial_indent=" " * 8, subsequent_indent=" " * 10) + "\n")
        for fix in c.fixes:
            w(f"{'':8}fix: {fix.line}\n{'':13}(in {fix.where})\n")


def verdict(checks: Sequence[Check], clients: int) -> str:
    """The last line: BLOCKED (and by what), OK with warnings, or OK."""
    blocks = [c for c in checks if c.status == BLOCK]
    warns = [c for c in checks if c.status == WARN]
    if blocks:
        return (f"verdict: BLOCKED: {len(blocks)} check(s) stop {clients} clients "
                f"({', '.join(c.name.split(' (')[0] for c in blocks)}).")
    if warns:
        return f"verdict: OK for {clients} clients, with {len(warns)} warning(s) above."
    return f"verdict: OK for {clients} clients."


def checks_json(checks: Sequence[Check], clients: int) -> str:
    """The checks as one JSON object: ``clients``, ``checks`` and ``blocked``."""
    return json.dumps({"clients": clients, "checks": [
        dict(c._asdict(), fixes=[f._asdict() for f in c.fixes]) for c in checks
    ], "blocked": any(c.status == BLOCK for c in checks)}, indent=1)


# -- a Redis the server depends on ------------------------------------------------


class RedisProbe(NamedTuple):
    """What :func:`probe_redis` learnt from one Redis: an error, or round trips and settings."""

    error: str  # "" when the server answered
    rtts_ms: Tuple[float, ...] = ()
    version: str = ""
    config: Tuple[Tuple[str, str], ...] = ()  # CONFIG GET answers; ("!" + key, why) if refused


def probe_redis(address: RedisAddress, timeout: float = 3.0, pings: int = 20,
                name: str = "netcore-hostcheck") -> RedisProbe:
    """Connect (AUTH, SELECT), time ``pings`` PINGs one at a time, read the settings.

    Runs a loop of its own, for at most ``timeout`` s to connect and twice
    that for the rest; ``name`` is the connection's CLIENT SETNAME.
    """
    from .loop import EventLoop
    from .redis import Redis, RedisConfig

    loop = EventLoop()
    errors: List[RedisError] = []
    link = Redis(loop, address, RedisConfig(name, connect_timeout=timeout, backoff_max=timeout),
                 on_error=errors.append)
    deadline = 0.0

    def wait(done: Callable[[], bool]) -> bool:
        """Run the loop until ``done()``, the deadline, or an error that dropped the link."""
        loop.run_until(lambda: done() or (errors and not link.ready),
                       max(0.0, deadline - time.monotonic()))
        return done()

    try:
        link.start()
        deadline = time.monotonic() + timeout
        if not wait(lambda: link.ready):
            return RedisProbe(str(errors[-1]) if errors else f"no answer within {timeout:g} s")
        deadline = time.monotonic() + timeout * 2
        rtts: List[float] = []
        for _ in range(pings):
            started = time.perf_counter()
            ping = link.execute("PING")
            if not wait(lambda: ping.done) or not ping.ok:
                return RedisProbe(f"PING: {ping.error or ping.reply or 'no answer'!s}")
            rtts.append((time.perf_counter() - started) * 1000)
        info = link.execute("INFO", "server")
        asked = [(key, link.execute("CONFIG", "GET", key))
                 for key in ("maxmemory-policy", "client-output-buffer-limit")]
        wait(lambda: info.done and all(p.done for _, p in asked))
        return RedisProbe("", tuple(rtts), _redis_version(info),
                          tuple(_config_answer(key, p) for key, p in asked))
    finally:
        link.close()
        loop.close()


def _redis_version(info: Pending) -> str:
    if info.ok and isinstance(info.reply, bytes):
        for line in info.reply.decode("utf-8", "replace").splitlines():
            if line.startswith("redis_version:"):
                return line.split(":", 1)[1].strip()
    return ""


def _config_answer(key: str, pending: Pending) -> Tuple[str, str]:
    reply = pending.reply
    if pending.ok and isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], bytes):
        return key, reply[1].decode("utf-8", "replace")
    return "!" + key, str(pending.error or reply or "no answer")


def _pubsub_hard_limit(value: str) -> Optional[int]:
    """The pubsub class's hard limit in bytes from ``client-output-buffer-limit``."""
    words = value.split()
    for i in range(0, len(words) - 3, 4):
        if words[i] == "pubsub":
            try:
                return int(words[i + 1])
            except ValueError:
                return None
    return None


class RedisNeeds(NamedTuple):
    """What a server needs of its Redis, where fixes go, and the sentences that say why."""

    conf_file: str = "redis.conf"
    median_ms: float = 2.0  # PING round trips past these are slow
    worst_ms: float = 20.0
    min_pubsub_hard: int = 8 << 20  # the pub/sub output buffer's hard limit, at least
    unreachable: str = ("the server retries with backoff and waits, but cannot work without "
                        "it. Check that redis-server runs, its bind and port, and the password.")
    slow: str = "its round trip is added to everything the server does through it."
    eviction: str = ("keys that expire on their own (a lease) must never be evicted: a full "
                     "Redis should refuse writes instead.")
    pubsub: str = ("Redis cuts a subscriber whose unread messages pass this; it then "
                   "reconnects and misses what was published meanwhile.")


def redis_checks(probe: RedisProbe, address: RedisAddress,
                 needs: RedisNeeds = RedisNeeds()) -> List[Check]:
    """A Redis's checks: it answers (BLOCK if not), quickly, and keeps what it must."""
    where = address.url()
    conf = needs.conf_file
    if probe.error:
        return [Check(f"Redis reachable ({where})", BLOCK, probe.error, "a Redis that answers",
                      needs.unreachable,
                      (Fix(conf, "bind 127.0.0.1 <this host's private address>"),))]
    checks = [Check(f"Redis reachable ({where})", OK, f"Redis {probe.version or '?'}",
                    "a Redis that answers")]
    rtts = sorted(probe.rtts_ms)
    median = rtts[len(rtts) // 2]
    slow = median > needs.median_ms or rtts[-1] > needs.worst_ms
    checks.append(Check(
        "Redis latency (PING round trip)", WARN if slow else OK,
        f"median {median:.2f} ms, worst {rtts[-1]:.2f} ms of {len(rtts)}",
        f"median <= {needs.median_ms:g} ms, worst <= {needs.worst_ms:g} ms",
        needs.slow if slow else ""))
    major = probe.version.split(".")[0]
    if major.isdigit() and int(major) < 6:
        checks.append(Check("Redis version", WARN, probe.version, "6 or later (7 tested)",
                            "ACL usernames in the URL need Redis 6."))
    config = dict(probe.config)
    policy = config.get("maxmemory-policy")
    if policy is None:
        checks.append(Check("Redis maxmemory-policy", WARN, "unreadable", "noeviction",
                            f"CONFIG GET was refused ({config.get('!maxmemory-policy', '?')}); "
                            "check it by hand."))
    else:
        checks.append(Check(
            "Redis maxmemory-policy", OK if policy == "noeviction" else WARN, policy, "noeviction",
            "" if policy == "noeviction" else needs.eviction,
            () if policy == "noeviction" else (Fix(conf, "maxmemory-policy noeviction"),)))
    limits = config.get("client-output-buffer-limit")
    hard = _pubsub_hard_limit(limits) if limits is not None else None
    if hard is not None and 0 < hard < needs.min_pubsub_hard:
        checks.append(Check(
            "Redis pub/sub output buffer", WARN, f"hard limit {_mib(hard)}",
            f">= {_mib(needs.min_pubsub_hard)}", needs.pubsub,
            (Fix(conf, "client-output-buffer-limit pubsub 64mb 16mb 60"),)))
    return checks

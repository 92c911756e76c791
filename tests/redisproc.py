"""A real redis-server for tests: a free loopback port, a temp dir, killed by pid.

``RedisServer(tmpdir).start()`` writes a config file (so a password is
never on a command line), starts ``redis-server`` on it, and waits until
it answers PING. ``stop()``/``kill()`` end that one process by its pid;
``start()`` again brings it back on the same port (a restart).

``tls=(cert, key)``: also a TLS port (``tls-port``, Debian's redis-server
is built with TLS), ``tls_url`` its ``rediss://`` URL; clients are not asked
for certificates. The plain port stays (the readiness check uses it).
"""

import os
import signal
import socket
import subprocess
import time
from typing import Optional, Tuple

from conftest import require_tool


def require_redis() -> str:
    """The redis-server path; skips outside CI when it is missing, fails in CI."""
    return require_tool("redis-server")


def free_port() -> int:
    """A port number nobody listens on now (redis-server binds it itself, so a
    bound socket can't be handed over; start() retries if it was taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, directory: str, password: Optional[str] = None, extra: str = "",
                 include: Optional[str] = None, tls: Optional[Tuple[str, str]] = None) -> None:
        self.binary = require_redis()
        self.directory = directory
        self.password = password
        self.extra = extra
        self.include = include  # a config file read first: the lines below override it
        self.tls = tls  # (certificate chain, key): a TLS port too
        self.port = 0
        self.tls_port = 0
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"rediss://{auth}127.0.0.1:{self.tls_port}"

    def _config(self) -> str:
        lines = [f"include {self.include}"] if self.include else []
        lines += [
            f"port {self.port}",
            "bind 127.0.0.1",
            "save ''",
            "appendonly no",
            f"dir {self.directory}",
            f"logfile {os.path.join(self.directory, 'redis.log')}",
            "daemonize no",
            "protected-mode yes",
        ]
        if self.password:
            lines.append(f'requirepass "{self.password}"')
        if self.tls is not None:
            lines += [f"tls-port {self.tls_port}", f"tls-cert-file {self.tls[0]}",
                      f"tls-key-file {self.tls[1]}", "tls-auth-clients no"]
        path = os.path.join(self.directory, "redis.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n" + self.extra)
        return path

    def start(self, timeout: float = 10.0) -> "RedisServer":
        for attempt in range(3):
            if not self.port or attempt:
                self.port = free_port()
                self.tls_port = free_port() if self.tls is not None else 0
            with open(os.path.join(self.directory, "redis.out"), "ab") as out:
                self.proc = subprocess.Popen([self.binary, self._config()], stdout=out, stderr=out)
            if self._wait_ready(timeout):
                return self
            self.kill()
        raise RuntimeError(f"redis-server did not start: {self.log()[-2000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.sendall(b"PING\r\n")
                    answer = s.recv(100)
                if answer.startswith((b"+PONG", b"-NOAUTH")):
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def command(self, *args: str) -> bytes:
        """One command on a fresh blocking socket (test-side checks only): the raw reply."""
        parts = ([b"AUTH", self.password.encode()],) if self.password else ()
        out = b""
        for cmd in list(parts) + [[a.encode() for a in args]]:
            out += b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in cmd)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as s:
            s.sendall(out)
            time.sleep(0.05)
            data = s.recv(1 << 20)
        return data[5:] if self.password else data  # drop AUTH's +OK

    def stop(self) -> None:
        """SIGTERM this server (by pid) and wait for it."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL this server (by pid) and wait for it."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP it: connections stay open and nothing is answered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def _end(self, sig: int) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def log(self) -> str:
        text = ""
        for name in ("redis.out", "redis.log"):
            try:
                with open(os.path.join(self.directory, name)) as f:
                    text += f.read()
            except OSError:
                pass
        return text

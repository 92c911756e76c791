"""Run servers as separate processes, as users do: the game, its bundle, the asyncio peer.

Servers are started on port 0 and the port is read from the line they print when
ready (``... listening on HOST:PORT``): the kernel picks a free port and the server
holds it from the start, so no other test can take it in between.
"""

import os
import re
import signal
import subprocess
import sys
from typing import Any, List, Optional, Sequence

from netcore.testing import stop_process  # noqa: F401 - the tests import it from here too

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAME = os.path.join(ROOT, "spelltraction.py")

#: A server's "ready" line; the newline proves the port number is complete.
LISTENING = re.compile(r"listening on (\S+):(\d+)\r?\n")


class Spawned:
    """A server process started from ``argv``; ``port`` is the one it says it listens on."""

    def __init__(self, argv: Sequence[str], cwd: Optional[str] = None,
                 env: Optional[dict] = None, **popen: Any) -> None:
        self.argv: List[str] = list(argv)
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, **popen)
        self.first_line = self.proc.stdout.readline()
        found = LISTENING.search(self.first_line)
        if not found:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"{self.argv} did not start: {self.first_line!r} "
                               f"{self.proc.stderr.read()[-2000:]}")
        self.host, self.port = found[1], int(found[2])

    def admin_port(self) -> int:
        """The admin port, from the banner line the server prints for it (read up to it)."""
        while True:
            line = self.proc.stdout.readline()
            assert line, f"{self.argv} printed no admin line"
            found = re.search(r"admin .*:(\d+)/?\s*$", line)
            if found:
                return int(found[1])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop it (``sig``, then a kill after ``timeout`` s); its exit status.

        Its stdout and stderr stay open for the caller to read what is left.
        """
        return stop_process(self.proc, sig, timeout)

    def __enter__(self) -> "Spawned":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close_pipes()

    def close_pipes(self) -> None:
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


class ServerProcess(Spawned):
    """``spelltraction.py serve`` on 127.0.0.1: on a port of its own choosing, or ``port``."""

    def __init__(self, *args: str, port: int = 0) -> None:
        if "--data" not in args:
            args = ("--no-data", *args)  # never the user's own data directory
        super().__init__([sys.executable, GAME, "serve", "--host", "127.0.0.1",
                          "--port", str(port), *args])


def run_game(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, GAME, *args], capture_output=True, text=True,
                          timeout=timeout)

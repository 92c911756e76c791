#!/usr/bin/env python3
"""A server's RSS once it is ready, by how it was started: what each part of the start-up saves.

spelltraction.py's start-up does four things for memory's sake: it re-runs
a script as a module, compiles the code for it beforehand, runs it with
``-S`` (``_run_as_module``), and trims the heap once it is ready
(``release_freed_memory``). Each way below leaves one out. Each is run
``--rounds`` times, the ways alternating, and RSS (``/proc/PID/statm``) is
read ``--settle`` seconds after the server says it is listening, with no
player. Medians:

- ``as shipped``: ``python3 spelltraction.py``;
- ``script, no re-run``: ``SPELLTRACTION_AS_MODULE=1`` keeps it a script, so
  CPython holds the file's syntax tree for the server's life;
- ``imported, compiling``: ``python3 -S -c "import spelltraction ..."`` with
  no bytecode cache to read, so the server compiles the game itself;
- ``imported, with site``: the same without ``-S``;
- ``imported, not trimmed``: the same as "compiling" without ``malloc_trim``.

Where ``PYTHONDONTWRITEBYTECODE`` is unset and the cache is fresh, a server
imported without the shipped start-up reads the cache instead of compiling:
"compiling" is the server on a read-only install, or the first run.

    python3 bench/startup_rss.py                 # 7 rounds
    python3 bench/startup_rss.py --rounds 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procstat import Children, free_port, machine, median, read_line, rss_bytes  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAME = os.path.join(ROOT, "spelltraction.py")
# The game imported as a module, optionally without the trim.
IMPORTED = ("import sys; sys.path[:] = [sys.argv.pop(1)] + [p for p in sys.path if p]; "
            "import spelltraction as st\n"
            "if sys.argv[1] == 'no-trim': st.release_freed_memory = lambda: None\n"
            "del sys.argv[1]; sys.exit(st.main())")

# name -> (extra environment, whether the bytecode cache starts empty, command before args)
WAYS: Dict[str, Tuple[Dict[str, str], bool, List[str]]] = {
    "as shipped": ({}, False, [GAME]),
    "script, no re-run": ({"SPELLTRACTION_AS_MODULE": "1"}, False, [GAME]),
    "imported, compiling": ({"PYTHONDONTWRITEBYTECODE": "1"}, True,
                            ["-S", "-c", IMPORTED, ROOT, "trim"]),
    "imported, with site": ({"PYTHONDONTWRITEBYTECODE": "1"}, True,
                            ["-c", IMPORTED, ROOT, "trim"]),
    "imported, not trimmed": ({"PYTHONDONTWRITEBYTECODE": "1"}, True,
                              ["-S", "-c", IMPORTED, ROOT, "no-trim"]),
}


def one(children: Children, way: str, settle: float) -> int:
    env_extra, fresh_cache, cmd = WAYS[way]
    port = free_port()
    with tempfile.TemporaryDirectory() as cache:
        env = [f"{k}={v}" for k, v in env_extra.items()]
        if fresh_cache:
            env.append(f"PYTHONPYCACHEPREFIX={cache}")
        # env(1) execs the interpreter in place: the pid read is the server's.
        proc = children.start(["env", *env, sys.executable, *cmd, "--host", "127.0.0.1",
                               "--port", str(port)], [], "server")
        try:
            line = read_line(proc, 30.0)
            if "listening" not in line:
                raise SystemExit(f"{way}: the server did not start: {children.log_tail('server')}")
            time.sleep(settle)
            return rss_bytes(proc.pid)
        finally:
            children.stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between 'listening' and the RSS reading (default 2)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    samples: Dict[str, List[int]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as logs:
        children = Children(logs)
        try:
            for _ in range(args.rounds):
                for way in WAYS:
                    samples[way].append(one(children, way, args.settle))
        finally:
            children.kill_all()
    mib = {way: median(values) / (1 << 20) for way, values in samples.items()}
    if args.json:
        print(json.dumps({"rss_mib_median": mib, "rss_bytes": samples, "rounds": args.rounds,
                          "machine": machine()}))
        return 0
    print(f"server RSS {args.settle:g} s after 'listening', no player; median of {args.rounds}:")
    for way, value in mib.items():
        print(f"  {way:24} {value:6.1f} MiB")
    shipped, compiling = mib["as shipped"], mib["imported, compiling"]
    for part, saved in (("the re-run (a script's syntax tree)", mib["script, no re-run"] - shipped),
                        ("compiling before the re-run", compiling - shipped),
                        ("-S (no site)", mib["imported, with site"] - compiling),
                        ("malloc_trim once ready", mib["imported, not trimmed"] - compiling)):
        print(f"  {part:40} saves {saved:5.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A million inputs per sans-IO parser; any exception but ProtocolError is a bug.

For each parser (the game's TCP framing, HTTP request heads, the WebSocket
frame parser on both sides, the game's ``decode``, the cluster bus's
decoders and the authority's and a gateway's ``on_bus``) it feeds ``--count``
inputs: mutations of a seed corpus of valid and known-tricky inputs
(tests/fuzzkit.py: flips, inserts, deletes, splices, "interesting" bytes),
one in eight plain random bytes, each split into chunks at random points.
The drivers use what comes out the way the server does. It prints, per
parser, the inputs run, how long it took, and every distinct exception
other than the parser's own ``ProtocolError`` (type, message, the input),
and exits 1 if there was any.

    python3 bench/fuzz.py                       # 1,000,000 per parser, ~10 minutes
    python3 bench/fuzz.py --count 20000 --parsers http,decode --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from fuzzkit import CORPUS, DRIVERS, mutate  # noqa: E402


def fuzz(name: str, count: int, seed: int, show: int = 5) -> Dict[str, Any]:
    rng = random.Random(seed)
    drive = DRIVERS[name]
    corpus = CORPUS[name]
    bugs: Dict[str, Dict[str, Any]] = {}
    started = time.perf_counter()
    for i in range(count):
        if i % 8 == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
        else:
            data = mutate(rng.choice(corpus), rng, corpus)
        cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(4))]
        try:
            drive(data, cuts)
        except Exception as exc:  # the point: anything that is not a ProtocolError
            where = traceback.extract_tb(exc.__traceback__)[-1]
            key = (f"{type(exc).__name__} at {os.path.basename(where.filename)}:{where.lineno}"
                   f" ({str(exc)[:24]}...)")
            bug = bugs.setdefault(key, {"count": 0, "message": str(exc)[:200],
                                        "inputs": []})
            bug["count"] += 1
            if len(bug["inputs"]) < show:
                bug["inputs"].append({"data": data.hex(), "cuts": cuts})
    return {"parser": name, "inputs": count, "seconds": round(time.perf_counter() - started, 1),
            "seed": seed, "bugs": bugs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs per parser")
    ap.add_argument("--parsers", default=",".join(DRIVERS),
                    help=f"comma-separated (default all: {','.join(DRIVERS)})")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default="", metavar="FILE", help="write all results to FILE")
    args = ap.parse_args()
    results: List[Dict[str, Any]] = []
    for name in args.parsers.split(","):
        if name not in DRIVERS:
            ap.error(f"unknown parser {name!r}; choose from {', '.join(DRIVERS)}")
        result = fuzz(name, args.count, args.seed)
        results.append(result)
        bugs = result["bugs"]
        print(f"{name}: {result['inputs']:,} inputs in {result['seconds']} s, "
              f"{sum(b['count'] for b in bugs.values())} non-ProtocolError exceptions",
              flush=True)
        for key, bug in bugs.items():
            print(f"  {bug['count']} x {key}: {bug['message']}")
            print(f"    e.g. input {bug['inputs'][0]['data'][:160]} "
                  f"cut at {bug['inputs'][0]['cuts']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["bugs"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

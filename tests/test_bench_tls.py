"""bench/tls.py, run small: a few dozen connections per mode, a 2 s CPU window, a
2 s handshake flood. This checks the harness (servers, nginx, bots over TLS, the
flood, every process stopped, the JSON and the table), not how fast anything
is: the figures are only checked to be there and sane."""

import json
import os
import subprocess
import sys

import pytest

from conftest import in_ci, require_tool
from serverproc import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
from procstat import all_proc_stats  # noqa: E402

TLS_BENCH = os.path.join(ROOT, "bench", "tls.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tls.py reads /proc"),
]


def nginx_here() -> bool:
    """Whether nginx and its stream module are here (under CI=true: they must be)."""
    if in_ci():
        require_tool("nginx")
        return True
    return os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so") and any(
        os.access(os.path.join(d, "nginx"), os.X_OK)
        for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin"])


def test_smoke_native_nginx_and_plain_side_by_side_and_a_flood(tmp_path):
    require_tool("openssl")
    modes = "native,nginx,plain" if nginx_here() else "native,plain"
    out = tmp_path / "tls.json"
    result = subprocess.run(
        [sys.executable, TLS_BENCH, "--modes", modes, "--rss-count", "60", "--cpu-count", "40",
         "--window", "2", "--settle", "0.5", "--per-proc", "25", "--flooders", "4",
         "--flood-seconds", "2", "--crowd", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["modes"] == modes.split(",")
    for mode in data["modes"]:
        rss, cpu = data["rss"][mode], data["cpu"][mode]
        assert rss["connections"] == 60 and rss["server_connections"] >= 60, (mode, rss)
        assert rss["rss_after"] > 0 and cpu["players"] >= 40 and cpu["ticks"] >= 4, (mode, cpu)
        assert cpu["cpu_s"] > 0, (mode, cpu)
    flood = data["flood"]
    assert flood["handshakes"] > 0 and flood["handshakes_per_cpu_s"] > 0, flood
    assert flood["watchers_dropped"] == 0 and flood["tick_lateness_p99_ms"] >= 0
    for mode in data["modes"]:
        assert f"| {mode} |" in result.stdout
    assert "handshake flood" in result.stdout
    left = [pid for pid, fields in all_proc_stats()
            if int(fields[2]) in data["pgids"] and fields[0] != "Z"]
    assert left == [], f"processes left running: {left}"

"""netcore/README.md's limits table names every limit its config classes have."""

import os
import re

from netcore import ClientConfig, ServerConfig, WebConfig
from netcore.websocket import WebSocketParser

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "netcore", "README.md")

# Settings that are not limits: where to listen, what to say, whom to trust.
NOT_LIMITS = {
    "hosts", "port", "nodelay", "full_message", "exempt", "trusted_proxies", "limit_message",
    "static_root", "static_reader", "routes", "ws_path", "health_path", "message_codec",
    "headers", "allowed_origins", "subprotocols", "ws_accept", "recv_buffer", "client", "clock",
}


def limits_table():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    table = text[text.index("## Limits"):]
    table = table[:table.index("\n## ")]
    return set(re.findall(r"`(\w+)`", table))


def test_every_limit_setting_is_in_the_readme_table():
    named = limits_table()
    for cls in (ServerConfig, ClientConfig, WebConfig, WebSocketParser):
        for slot in cls.__slots__:
            if slot.startswith("_") or slot in NOT_LIMITS:
                continue
            assert slot in named, f"{cls.__name__}.{slot} is missing from netcore/README.md's limits"

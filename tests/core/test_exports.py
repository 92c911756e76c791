"""netcore's public API, pinned: a change here is a change for every vendoring user.

Adding a name is fine (add it here too); removing or renaming one breaks
someone's copy, so it must be a decision, not an accident.
"""

import importlib
import inspect
import os

import netcore

PUBLIC = {
    # constants
    "CLOSED_CODEC", "DEFAULT_MAX_FRAME", "HTTP", "WEBSOCKET",
    # classes and types
    "BufferFull", "CertificateError", "ClientConfig", "CloseCode", "CloseReason", "Codec", "CodecFactory", "CodecHandoff",
    "Connection",
    "EventLoop", "FrameError", "FrameParser", "Handler", "Histogram", "LateTick", "NetStats",
    "OversizeFrame", "Owner", "Poller", "ProtocolError", "Readiness", "RingBuffer", "ServerConfig",
    "SplitFrame", "StreamFrames", "TCPClient", "TCPServer", "Text", "Tick", "TickScheduler", "Timer", "WebConfig", "WebFront",
    "WebSocketCodec", "WholeFrames", "Window", "ZeroLengthFrame",
    # Redis (RESP codec and connections)
    "CommandError", "ConnectionLost", "HandshakeError", "NotConnected", "Pending", "Redis",
    "RedisAddress", "RedisConfig", "RedisError", "RedisLease", "RedisSubscriber", "Script", "ReplyError",
    "RespParser",
    "RespProtocolError",
    # functions
    "bind_listeners", "close_code_for", "encode_command", "encode_frame", "make_poller",
    "percentile",
    "websocket_client",
    # TLS (netcore.tls, imported with ssl on first use)
    "client_context", "server_context",
}

HANDLER_CALLBACKS = {
    "on_connect", "on_protocol", "on_message", "on_close", "on_bad_input",
    "on_high_water", "on_drain",
}


def test_the_top_level_exports_exactly_the_public_api():
    assert set(netcore.__all__) == PUBLIC
    assert len(netcore.__all__) == len(PUBLIC)  # no duplicates
    for name in PUBLIC:
        assert getattr(netcore, name) is not None, name


def test_protocol_names_are_the_strings_on_protocol_receives():
    assert (netcore.HTTP, netcore.WEBSOCKET) == ("http", "websocket")
    assert netcore.close_code_for(netcore.ProtocolError("x")) == netcore.CloseCode.PROTOCOL_ERROR


def test_handler_callbacks_are_pinned():
    ours = {n for n, _ in inspect.getmembers(netcore.Handler, inspect.isfunction)}
    assert ours == HANDLER_CALLBACKS


def test_every_module_is_listed_and_its_all_resolves():
    modules = sorted(n[:-3] for n in os.listdir(os.path.dirname(netcore.__file__))
                     if n.endswith(".py") and n != "__init__.py")
    for name in modules:
        assert f":mod:`netcore.{name}`" in (netcore.__doc__ or ""), name
        module = importlib.import_module(f"netcore.{name}")
        for public in getattr(module, "__all__", ()):
            assert hasattr(module, public), f"netcore.{name}.{public}"


def test_modules_log_under_their_own_names():
    for name in ("connection", "loop", "server", "static", "web"):
        module = importlib.import_module(f"netcore.{name}")
        assert module.log.name == f"netcore.{name}"


def test_public_classes_say_what_they_are():
    for name in PUBLIC:
        obj = getattr(netcore, name)
        if inspect.isclass(obj) and obj.__module__.startswith("netcore"):
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_the_redis_client_is_imported_only_when_asked_for():
    import subprocess
    import sys

    code = ("import sys, netcore; print('netcore.redis' in sys.modules); "
            "from netcore import Redis, encode_command; print('netcore.redis' in sys.modules)")
    root = os.path.dirname(os.path.dirname(netcore.__file__))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split() == ["False", "True"], out.stderr

"""The desktop client's network driver over TLS (client --tls), on a real server
in this process with a certificate from the test PKI; its CLI checks."""

import pytest

import spelltraction as st
from tlsgamekit import pki  # noqa: F401 - a fixture


@pytest.fixture
def th(make_harness, pki):
    return make_harness(tls_cert=pki.cert, tls_key=pki.key)


def drive(h, brain, context, server_hostname=None):
    net = st.NetClient(brain, "127.0.0.1", h.port, h.loop.call_later, tls=context,
                       server_hostname=server_hostname)
    net.start()
    return net


def test_the_driver_plays_over_tls_and_its_click_reaches_the_server(th, pki):
    brain = st.ClientBrain()
    net = drive(th, brain, st.client_tls(st.ClientOptions(tls=True, ca=pki.root)))
    th.run_until(lambda: brain.state == st.ClientState.PLAYING and brain.tick >= 0)
    pid = brain.player_id
    assert net.tls_obj is not None and net.tls_obj.version() in ("TLSv1.2", "TLSv1.3")
    assert len(th.server.front.tls_players) == 1
    assert brain.click(60, 300)
    net.flush()
    player = th.server.world.game.players[pid]
    th.run_until(lambda: (player.x, player.y) == (60, 300))
    th.run_until(lambda: brain.pending is None)  # echoed, through TLS both ways
    ticks = brain.tick
    th.ticks(5)
    th.run_until(lambda: brain.tick >= ticks + 3)
    net.stop()
    th.run_until(lambda: not th.server.front.tls_players)


@pytest.mark.parametrize("case", ["untrusted", "wrong-name", "plain-server"])
def test_a_certificate_that_does_not_check_out_is_shown_and_retried(make_harness, pki, case):
    h = make_harness() if case == "plain-server" else \
        make_harness(tls_cert=pki.cert, tls_key=pki.key)
    ca = pki.stranger.root if case == "untrusted" else pki.root
    brain = st.ClientBrain()
    net = drive(h, brain, st.client_tls(st.ClientOptions(tls=True, ca=ca)),
                server_hostname="other.example" if case == "wrong-name" else None)
    h.run_until(lambda: brain.state == st.ClientState.WAITING, timeout=10)
    line = brain.status_line()
    assert "TLS" in line, line
    if case != "plain-server":
        assert "certificate" in line.lower() or "hostname" in line.lower(), line
    assert not h.server.world.game.players
    assert net.failures >= 1
    net.stop()


def test_insecure_plays_with_any_certificate(make_harness, pki):
    h = make_harness(tls_cert=pki.stranger_cert, tls_key=pki.stranger_key)
    brain = st.ClientBrain()
    net = drive(h, brain, st.client_tls(st.ClientOptions(tls=True, insecure=True)))
    h.run_until(lambda: brain.state == st.ClientState.PLAYING)
    net.stop()


def test_client_tls_options_are_checked(tmp_path):
    assert st.client_tls(st.ClientOptions()) is None
    with pytest.raises(ValueError, match="--tls"):
        st.client_tls(st.ClientOptions(insecure=True))
    with pytest.raises(ValueError, match="not both"):
        st.client_tls(st.ClientOptions(tls=True, ca="x.pem", insecure=True))
    missing = str(tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="ca.pem"):
        st.client_tls(st.ClientOptions(tls=True, ca=missing))
    opts = st.parsed_options(st.build_parser(), st.build_parser().parse_args(
        ["client", "--tls", "--ca", "root.pem"]))
    assert (opts.tls, opts.ca, opts.insecure) == (True, "root.pem", False)

"""The command line as one table: each flag once, its default where the options keep it."""

import re

import pytest

import spelltraction as st


def parse(*argv):
    parser = st.build_parser()
    return st.parsed_options(parser, parser.parse_args(list(argv)))


def test_the_defaults_on_the_command_line_are_the_options_defaults():
    assert parse("serve") == st.ServerOptions(data=st.default_data_dir())
    assert parse("game") == st.ServerOptions(data=st.default_data_dir())
    assert parse("gateway") == st.ServerOptions()
    assert parse("bots") == st.BotOptions()
    assert parse("client") == st.ClientOptions()
    assert st.ServerOptions().tick_ms == st.Welcome(1, 0, 0).tick_ms == st.DEFAULT_TICK_MS
    assert st.ServerOptions().max_clients == st.DEFAULT_MAX_CLIENTS
    assert parse("doctor") is None and st.build_parser().parse_args(
        ["doctor"]).clients == st.DEFAULT_MAX_CLIENTS


def test_each_flag_is_written_once_per_command_and_sets_a_field_that_exists():
    for name, (_help, groups, options, _redis) in st.COMMANDS.items():
        flags = [o.flag for group in groups for o in group]
        assert len(flags) == len(set(flags)), name
        for o in (o for group in groups for o in group):
            if options is not None and o.field != "-":
                assert o.target in options._fields, (name, o.flag)


def test_flags_set_their_fields_and_checks_refuse_bad_values(capsys):
    opts = parse("serve", "--no-web", "--web-root", "", "--no-data", "--poller", "selectors",
                 "--max-clients", "7")
    assert (opts.web, opts.web_root, opts.data, opts.poller, opts.max_clients) == (
        False, None, None, "selectors", 7)
    bots = parse("bots", "--count", "5", "--procs", "auto", "--source-addresses", "none")
    assert (bots.n_bots, bots.procs, bots.sources) == (5, 0, "none")
    assert parse("client", "--shape", "square", "--name", " ann ").shape == 1
    for argv, message in [(("serve", "--max-clients", "0"), "--max-clients must be at least 1"),
                          (("gateway", "--tick-ms", "5"), "--tick-ms must be between 10"),
                          (("game", "--prune-days", "0"), "--prune-days must be positive"),
                          (("bots", "--procs", "many"), "auto or a number"),
                          (("serve", "--exempt", "x"), "--exempt is not a list of networks")]:
        with pytest.raises(SystemExit):
            parse(*argv)
        assert message in capsys.readouterr().err, argv


@pytest.mark.parametrize("command", ["serve", "game", "gateway"])
def test_every_server_command_documents_the_poller(command, capsys):
    with pytest.raises(SystemExit):
        st.main([command, "--help"])
    out = capsys.readouterr().out
    assert re.search(r"--poller \{epoll,selectors\}", out)
    assert f"(default {st.DEFAULT_POLLER})" in " ".join(out.split())


def test_no_subcommand_serves(monkeypatch):
    seen = []
    monkeypatch.setattr(st, "serve", lambda opts, limiter, argv=(): seen.append(opts) or 0)
    monkeypatch.setattr(st, "_setup_logging", lambda *a: None)
    assert st.main(["--host", "127.0.0.9", "--port", "1"]) == 0
    assert (seen[0].host, seen[0].port) == ("127.0.0.9", 1)

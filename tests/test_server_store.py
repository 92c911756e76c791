"""Nothing lost: the sqlite3 store, resume tokens, names and the hall of fame (issue 13).

Servers run in this process on real sockets, with a real store in a
temporary directory; the restart, kill -9 and browser tests are elsewhere.
"""

import json
import os
import sqlite3
import struct
import time

import pytest

import spelltraction as st
from gamekit import Harness
from netcore import encode_frame
from serverproc import run_game


@pytest.fixture
def data(tmp_path):
    return str(tmp_path / "data")


@pytest.fixture
def h(make_harness, data):
    return make_harness(data=data)


def scorer(make):
    """Make players with ``make`` until one holds a letter on the board (others leave)."""
    for _ in range(40):
        c = make()
        c.tick = c.expect(st.TickMsg)
        if any(letter in c.tick.board for letter in c.you.letters):
            return c
        c.sock.close()
    raise AssertionError("no player with a letter on the board")


def score_once(h, players):
    """Gather ``players`` on a cell holding the first one's letter; wait for its YOU to score."""
    first = players[0]
    board = first.tick.board if hasattr(first, "tick") else first.expect(st.TickMsg).board
    cell = next(i for i, letter in enumerate(board) if letter in first.you.letters)
    x, y = st.cell_centre(cell)
    for i, c in enumerate(players):
        c.send(st.Move(100 + i, x, y))
    before = first.you.score
    deadline = time.monotonic() + 10
    while first.you.score == before:
        assert time.monotonic() < deadline, "no score"
        msg = first.expect((st.You, st.Fame))  # FAME comes in the same send, before YOU
        if isinstance(msg, st.Fame):
            first.fame = msg
        else:
            first.you = msg
    return first.you


def stored(data, pid):
    db = sqlite3.connect(os.path.join(data, st.DATA_FILE))
    try:
        return db.execute("SELECT id, letters, score, shape, colour, name, online FROM players "
                          "WHERE id = ?", (pid,)).fetchone()
    finally:
        db.close()


# -- protocol 2 on the wire ----------------------------------------------------------


def test_v2_messages_round_trip_and_v1_stays_as_it_was():
    hello = st.Hello(2, 1, 0x123456, b"t" * 16, "Åda".encode())
    assert st.decode(st.encode(hello)) == hello and len(st.encode(hello)) == 25 + 4
    assert len(st.encode(st.Hello())) == 8  # version 1: byte for byte as before
    welcome = st.Welcome(7, 1, 2, version=2, resumed=st.RESUMED, token=b"k" * 16)
    assert st.decode(st.encode(welcome)) == welcome and len(st.encode(welcome)) == 38
    assert len(st.encode(st.Welcome(7, 1, 2))) == 21
    fame = st.Fame(tuple((i, 100 - i, "ü" * 16) for i in range(10)))
    assert st.decode(st.encode(fame)) == fame and len(st.encode(fame)) <= 732


@pytest.mark.parametrize("raw, why", [
    ("ada", None), ("  ada lovelace  ", None), ("ü" * 16, None), ("", None),
    ("x" * 17, "longer than 16"), ("a\x07b", "unprintable"), ("tab\there", "unprintable"),
    ("zero\u200bwidth", "unprintable"),
])
def test_names_are_checked(raw, why):
    if why is None:
        assert st.check_name(raw.encode()) == raw.strip()
    else:
        with pytest.raises(ValueError, match=why):
            st.check_name(raw.encode())
    with pytest.raises(ValueError, match="UTF-8"):
        st.check_name(b"caf\xe9")


def test_resume_tokens_are_random_and_only_their_hash_is_kept():
    tokens = {st.new_resume_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) == 16 for t in tokens)
    t = tokens.pop()
    assert st.token_hash(t) != t and len(st.token_hash(t)) == 32
    import hashlib

    assert st.token_hash(t) == hashlib.sha256(t).digest()


# -- joining, resuming, taking over ---------------------------------------------------


def test_a_v2_player_gets_a_token_and_is_on_disk_before_its_welcome(h, data):
    c = h.client_v2(name=b"  ada ")
    w = c.welcome
    assert w.version == 2 and w.resumed == st.NEW_PLAYER and len(w.token) == 16
    row = stored(data, w.player_id)
    assert row[:6] == (w.player_id, c.you.letters, 0, w.shape, w.colour, "ada")
    db = sqlite3.connect(os.path.join(data, st.DATA_FILE))
    (hashed,) = db.execute("SELECT token_hash FROM players").fetchone()
    db.close()
    assert hashed == st.token_hash(w.token) and w.token not in open(
        os.path.join(data, st.DATA_FILE), "rb").read()


def test_resume_within_grace_is_the_same_player_and_leaves_the_board_meanwhile(h):
    watcher = h.client_v2()
    a, b = scorer(h.client_v2), h.client_v2()
    you = score_once(h, [a, b])
    assert you.score == 1
    token, pid = a.welcome.token, a.welcome.player_id
    a.sock.close()
    tick = watcher.expect(st.TickMsg)
    while pid not in tick.gone:
        tick = watcher.expect(st.TickMsg)
    players = len(h.server.world.game.players)
    assert tick.players == players and sum(tick.counts) == players  # the crowd stays honest
    back = h.client_v2(token=token)
    w = back.welcome
    assert (w.resumed, w.player_id, w.shape, w.colour, w.token) == (
        st.RESUMED, pid, a.welcome.shape, a.welcome.colour, token)
    assert (back.you.score, back.you.letters) == (1, you.letters)
    assert h.server.world.resumes == 1 and len(h.server.world.game.players) == players + 1


def test_after_the_grace_period_a_token_gets_a_new_player(make_harness, data):
    h = make_harness(data=data, grace=0.2)
    a = h.client_v2()
    a.sock.close()
    h.run(0.5)
    h.ticks(8)  # the seat is forgotten on a tick
    b = h.client_v2(token=a.welcome.token)
    assert b.welcome.resumed == st.TOKEN_UNKNOWN
    assert b.welcome.player_id != a.welcome.player_id and b.welcome.token != a.welcome.token
    assert h.server.world.grace_expired == 1


def test_unknown_and_malformed_tokens(h):
    """An unknown token while other seats exist (playing with a score, parked,
    a v1 player) is a new player: none of theirs, and theirs stay theirs."""
    playing, helper = scorer(h.client_v2), h.client_v2()
    you = score_once(h, [playing, helper])
    assert you.score == 1
    v1 = h.client()
    parked = h.client_v2(name=b"parked")
    parked.send(st.Move(7, 33, 44))
    moved = parked.expect(st.You)
    assert moved.seq == 7
    parked.sock.close()
    h.run_until(lambda: st.token_hash(parked.welcome.token) in h.server.world.parked, what="parked")
    seats = [playing, helper, v1, parked]
    ids = {c.welcome.player_id for c in seats}
    tokens = {c.welcome.token for c in seats}
    near = bytes([parked.welcome.token[0] ^ 1]) + parked.welcome.token[1:]  # one bit off
    for token in (os.urandom(16), near, playing.welcome.token[:15] + b"?"):
        c = h.client_v2(token=token)
        w = c.welcome
        assert w.resumed == st.TOKEN_UNKNOWN and w.player_id not in ids, (w, ids)
        assert w.token not in tokens | {token} and len(w.token) == 16
        assert c.you.score == 0 and (c.you.x, c.you.y) != (moved.x, moved.y)
        assert (c.you.letters, c.you.score) != (you.letters, you.score)
        ids.add(w.player_id)
    back = h.client_v2(token=parked.welcome.token)  # the parked seat is still its own
    assert (back.welcome.resumed, back.welcome.player_id) == (st.RESUMED, parked.welcome.player_id)
    assert back.you.letters == moved.letters
    c = back
    bad = h.client(hello=False)  # malformed ones: a clear ERROR, then a close
    bad.send_raw(encode_frame(st.encode(st.Hello(2, token=b"x" * 16))[:20]))  # cut short
    (err,) = [m for m in bad.wait_closed() if isinstance(m, st.Error)]
    assert err.code == st.ErrorCode.BAD_MESSAGE and "at least 25 bytes" in err.text
    bad = h.client(hello=False)
    bad.send_raw(encode_frame(st.encode(st.Hello(2, name=b"abc"))[:-1]))  # name shorter than said
    (err,) = [m for m in bad.wait_closed() if isinstance(m, st.Error)]
    assert err.code == st.ErrorCode.BAD_MESSAGE and "HELLO v2" in err.text
    tick = c.expect(st.TickMsg)  # and the others play on
    assert tick.players >= 3 and playing.expect(st.TickMsg)


def test_two_connections_one_token_the_newer_wins(h):
    a = h.client_v2()
    a.send(st.Move(9, 10, 10))
    a.expect(st.You)
    b = h.client_v2(token=a.welcome.token)
    assert b.welcome.player_id == a.welcome.player_id and b.welcome.resumed == st.RESUMED
    assert (b.you.x, b.you.y) == (10, 10)  # the same player, where it was
    (err,) = [m for m in a.wait_closed() if isinstance(m, st.Error)]
    assert err.code == st.ErrorCode.TAKEN_OVER and "newer connection" in err.text
    assert b.expect(st.TickMsg).players == 1
    b.send(st.Move(10, 200, 200))
    assert b.expect(st.You).seq == 10
    assert h.server.world.takeovers == 1


@pytest.mark.parametrize("name, why", [
    (b"x" * 17, "longer than 16"), (b"bell\x07", "unprintable"), (b"\xff\xfe", "UTF-8"),
    ("é".encode() * 17, "longer than 16"),
])
def test_bad_names_get_a_clear_error_and_others_play_on(h, name, why):
    other = h.client_v2()
    bad = h.client(hello=False)
    bad.send(st.Hello(2, name=name))
    (err,) = [m for m in bad.wait_closed() if isinstance(m, st.Error)]
    assert err.code == st.ErrorCode.BAD_NAME and why in err.text
    other.send(st.Move(5, 1, 1))
    assert other.expect(st.You).seq == 5


def test_version_1_players_get_no_new_frames(h):
    v1 = h.client()
    v2 = scorer(h.client_v2)
    assert len(st.encode(v1.welcome)) == 21
    score_once(h, [v2, v1])  # the hall of fame changes: FAME goes to v2 only
    assert v2.fame.entries and v2.fame.entries[0][1] == 1
    h.ticks(3)
    v1.pump()
    assert not any(isinstance(m, st.Fame) for m in v1.inbox)


# -- the hall of fame ---------------------------------------------------------------


def test_hall_of_fame_shows_names_and_ids_and_survives_a_restart(data):
    h = Harness(data=data)
    try:
        a, b = scorer(lambda: h.client_v2(name=b"ada")), h.client()
        score_once(h, [a, b])
        assert (a.welcome.player_id, 1, "ada") in a.fame.entries
        ctype, body = h.server.ops_routes(public=True)["/leaderboard.json"]()
        top = json.loads(body)["top"]
        assert top[0]["rank"] == 1 and {"id": a.welcome.player_id, "name": "ada"}.items() <= \
            next(e for e in top if e["id"] == a.welcome.player_id).items()
        assert all(e["name"] is None for e in top if e["id"] != a.welcome.player_id)
    finally:
        h.close()
    h = Harness(data=data)
    try:
        assert (a.welcome.player_id, 1, "ada") in h.client_v2().fame.entries
    finally:
        h.close()


# -- across restarts -----------------------------------------------------------------


def test_resume_across_a_restart_and_ids_are_never_reused(data):
    h = Harness(data=data)
    try:
        a, b = scorer(lambda: h.client_v2(name=b"bo")), h.client_v2()
        you = score_once(h, [a, b])
        highest = b.welcome.player_id
    finally:
        h.close()
    # Cut off by the server stopping, not gone: a whole grace period from the restart.
    assert stored(data, a.welcome.player_id)[6] == 1
    h = Harness(data=data)
    try:
        back = h.client_v2(token=a.welcome.token)
        w = back.welcome
        assert (w.resumed, w.player_id, w.shape, w.colour) == (
            st.RESUMED, a.welcome.player_id, a.welcome.shape, a.welcome.colour)
        assert (back.you.score, back.you.letters) == (you.score, you.letters)
        assert h.server.world.game.players[w.player_id].name == "bo"
        fresh = h.client_v2()
        assert fresh.welcome.player_id > highest
        assert h.client().welcome.player_id > fresh.welcome.player_id
    finally:
        h.close()


def test_a_dropped_player_keeps_its_grace_across_a_restart(data):
    h = Harness(data=data, grace=60)
    try:
        a = h.client_v2()
        a.sock.close()
        h.ticks(3)
    finally:
        h.close()
    h = Harness(data=data, grace=60)
    try:
        assert h.client_v2(token=a.welcome.token).welcome.resumed == st.RESUMED
    finally:
        h.close()


def test_pruning_deletes_long_unseen_players_but_not_the_hall_of_fame(data):
    h = Harness(data=data)
    try:
        a, b = scorer(h.client_v2), h.client_v2()
        score_once(h, [a, b])
        a.sock.close()
        b.sock.close()
        h.ticks(3)
    finally:
        h.close()
    db = sqlite3.connect(os.path.join(data, st.DATA_FILE))
    db.execute("UPDATE players SET last_seen = last_seen - 40 * 86400")
    db.commit()
    db.close()
    h = Harness(data=data)  # prunes at start: 30 days by default
    try:
        h.ticks(3)
        h.run_until(lambda: h.server.world.store.pruned >= 2)
        assert h.client_v2(token=a.welcome.token).welcome.resumed == st.TOKEN_UNKNOWN
        assert a.welcome.player_id in [e[0] for e in h.server.world.fame]
    finally:
        h.close()


# -- bad data directories --------------------------------------------------------------


def refused(data):
    with pytest.raises(st.StoreError) as info:
        st.Store(data).open()
    return str(info.value)


def test_a_corrupt_database_is_refused_and_left_alone(data):
    os.makedirs(data)
    path = os.path.join(data, st.DATA_FILE)
    junk = b"this is not a database\n" * 100
    with open(path, "wb") as f:
        f.write(junk)
    why = refused(data)
    assert path in why and "not a SQLite database" in why
    assert open(path, "rb").read() == junk
    done = run_game("serve", "--port", "0", "--data", data, timeout=60)
    assert done.returncode == 2 and path in done.stderr and "refusing to start" in done.stderr
    assert open(path, "rb").read() == junk


def test_a_damaged_page_is_refused(data):
    h = Harness(data=data)
    try:
        h.client_v2()
    finally:
        h.close()
    path = os.path.join(data, st.DATA_FILE)
    raw = bytearray(open(path, "rb").read())
    page = struct.unpack(">H", raw[16:18])[0]
    raw[page + 0: page + 100] = b"\xff" * 100  # the second page: a table's b-tree
    open(path, "wb").write(raw)
    why = refused(data)
    assert path in why and ("corrupt" in why or "unreadable" in why)


def test_a_foreign_database_is_refused(data):
    os.makedirs(data)
    path = os.path.join(data, st.DATA_FILE)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accounts (id INTEGER)")
    db.commit()
    db.close()
    before = open(path, "rb").read()
    why = refused(data)
    assert path in why and "not a SpellTraction database" in why
    assert open(path, "rb").read() == before


def test_a_newer_schema_is_refused(data):
    h = Harness(data=data)
    h.close()
    path = os.path.join(data, st.DATA_FILE)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {st.SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    why = refused(data)
    assert path in why and "newer" in why and f"schema {st.SCHEMA_VERSION + 1}" in why


def test_an_old_schema_is_migrated(data):
    os.makedirs(data)
    sqlite3.connect(os.path.join(data, st.DATA_FILE)).close()  # schema 0: an empty file
    store = st.Store(data)
    store.open()
    store.close()
    db = sqlite3.connect(os.path.join(data, st.DATA_FILE))
    assert db.execute("PRAGMA user_version").fetchone()[0] == st.SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_one_server_per_data_directory(data):
    h = Harness(data=data)
    try:
        why = refused(data)
        assert data in why and "--data" in why and "another server" in why
    finally:
        h.close()
    st.Store(data).open()  # free again once the first let go


@pytest.mark.slow  # a second or more of timers
def test_a_failing_commit_is_counted_retried_and_scoring_waits(h, data, caplog):
    a, b = scorer(h.client_v2), h.client_v2()
    cell = next(i for i, letter in enumerate(a.tick.board) if letter in a.you.letters)
    blocker = sqlite3.connect(os.path.join(data, st.DATA_FILE), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # someone else holds the write lock: commits fail
    try:
        x, y = st.cell_centre(cell)
        a.send(st.Move(1, x, y))
        b.send(st.Move(1, x, y))
        h.run_until(lambda: h.server.world.game.pending_score is not None, timeout=10)
        h.run_until(lambda: h.server.world.store.commit_failures >= 2, timeout=10)
        ticks = h.server.world.game.tick
        h.run(0.5)
        assert h.server.world.game.tick > ticks + 10, "the game keeps running"
        assert h.server.world.game.letters_scored == 0, "no score announced before it is on disk"
        metrics = h.server.metrics_text()
        assert "spelltraction_store_commit_failures_total" in metrics
        assert "database is locked" in caplog.text
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    scored = a.expect(st.Scored, timeout=10)
    assert scored.cell == cell
    you = a.expect(st.You)
    while you.score == 0:
        you = a.expect(st.You)
    assert stored(data, a.welcome.player_id)[2] == you.score == 1


def test_metrics_report_commit_times(h):
    h.client_v2()
    h.ticks(3)
    text = h.server.metrics_text()
    for name in ("spelltraction_store_commit_p50_seconds", "spelltraction_store_commit_p99_seconds",
                 "spelltraction_store_commits_total", "spelltraction_resumes_total"):
        assert f"\n{name} " in text, name
    assert h.server.world.store.commits >= 1
    snap = json.loads(h.server.stats_json())
    assert snap["store"]["commits"] >= 1 and snap["store"]["path"].endswith(st.DATA_FILE)


def test_backup_copies_a_live_store(h, data, tmp_path):
    c = h.client_v2(name=b"kept")
    out = str(tmp_path / "copy.sqlite3")
    done = run_game("backup", "--data", data, "-o", out)
    assert done.returncode == 0, done.stderr
    db = sqlite3.connect(out)
    assert db.execute("SELECT name FROM players WHERE id = ?",
                      (c.welcome.player_id,)).fetchone() == ("kept",)
    db.close()
    missing = run_game("backup", "--data", str(tmp_path / "nothing"), "-o", out)
    assert missing.returncode == 1 and "no database" in missing.stderr


def test_default_data_dir_follows_systemd_then_xdg(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/spelltraction")
    assert st.default_data_dir() == "/var/lib/spelltraction"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", "/x/state")
    assert st.default_data_dir() == "/x/state/spelltraction"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert st.default_data_dir() == os.path.expanduser("~/.local/state/spelltraction")


def test_parked_seats_are_capped_at_max_clients_the_unscored_going_first(make_harness):
    """A flood of joins that drop at once cannot grow the parked seats past
    --max-clients; a seat with a score outlives the ones with nothing in it."""
    h = make_harness(max_clients=4)
    watcher = h.client_v2()
    a, b = scorer(h.client_v2), h.client_v2()
    assert score_once(h, [a, b]).score == 1
    kept = a.welcome.token
    a.sock.close()
    b.sock.close()
    gone = (a.welcome.player_id, b.welcome.player_id)
    h.run_until(lambda: not any(pid in h.server.world.game.players for pid in gone), what="a, b gone")
    before = len(h.server.world.parked)  # a, b, and whoever scorer() sent away
    tokens = []
    for _ in range(6):  # join and drop, like a flood
        c = h.client_v2()
        tokens.append(c.welcome.token)
        c.sock.close()
        h.run_until(lambda: c.welcome.player_id not in h.server.world.game.players, what="gone")
    evicted = before + 6 - 4
    assert len(h.server.world.parked) == 4 and h.server.world.seats_evicted == evicted
    assert len(h.server.world.by_token) == 4 + 1  # the parked, and the watcher playing
    back = h.client_v2(token=kept)
    assert back.welcome.resumed == st.RESUMED and back.you.score == 1
    late = h.client_v2(token=tokens[-1])  # the newest unscored seat is still kept
    assert late.welcome.resumed == st.RESUMED
    early = h.client_v2(token=tokens[0])
    assert early.welcome.resumed == st.TOKEN_UNKNOWN
    assert f'spelltraction_seats_evicted_total {evicted}' in h.server.metrics_text()
    watcher.sock.close()


def test_each_committed_block_of_ids_moves_the_reservation_on(data, monkeypatch, caplog):
    """A long-running server hands out more ids than one reserved block (every
    version-1 join takes a new one): each block the writer commits must count as
    reserved, or past the first block every join warned that ids ran ahead of
    the disk, and the warning meant nothing any more."""
    monkeypatch.setattr(st, "ID_BLOCK", 100)
    store = st.Store(data)
    store.open()
    try:
        first = store.next_id
        for _ in range(15):  # three blocks, 20 joins a tick
            for _ in range(20):
                store.take_id()
            store.flush()
            deadline = time.monotonic() + 10
            while store.backlog and time.monotonic() < deadline:
                time.sleep(0.01)
        assert store.next_id == first + 300
        assert store.reserved_id > store.next_id  # the disk is ahead of every id given
        assert "running ahead of the disk" not in caplog.text
    finally:
        store.close()
    with sqlite3.connect(os.path.join(data, st.DATA_FILE)) as db:
        on_disk = db.execute("SELECT value FROM meta WHERE key = 'reserved_id'").fetchone()[0]
    assert on_disk > first + 300
    reopened = st.Store(data)
    reopened.open()
    try:
        assert reopened.next_id >= on_disk  # never an id handed out before
    finally:
        reopened.close()

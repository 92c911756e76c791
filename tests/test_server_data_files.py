"""The data directory and what the server writes there are its own (issue 22, finding 9).

Outside systemd (no UMask=0077) the store was 0644 with its -wal and -shm, a
world-writable --data was used silently, and `backup` wrote `<out>.tmp` through
whatever was there, a symlink included.
"""

import os
import sqlite3
import stat

import pytest

import spelltraction as st
from serverproc import ServerProcess, run_game


@pytest.fixture
def umask_022():
    """The umask of a login shell: what sqlite's 0644 becomes there."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def wait_for_file(path, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_the_server_creates_its_directory_0700_and_every_file_0600(
        make_harness, tmp_path, umask_022):
    data = tmp_path / "new" / "data"
    h = make_harness(data=str(data))
    h.client_v2(name=b"private")  # a row committed: the writer's connection keeps -wal, -shm
    db = data / st.DATA_FILE
    wait_for_file(str(db) + "-wal")
    wait_for_file(str(db) + "-shm")
    assert mode(data) == 0o700
    for name in (st.DATA_FILE, st.DATA_FILE + "-wal", st.DATA_FILE + "-shm", st.LOCK_FILE):
        assert mode(data / name) == 0o600, f"{name}: {mode(data / name):04o}"
    out = tmp_path / "backup.sqlite3"
    st.backup_store(str(data), str(out))
    assert mode(out) == 0o600, "the backup is as private as the store"
    assert sorted(os.listdir(tmp_path)) == ["backup.sqlite3", "new"], "no temporary left"


def test_files_of_an_older_version_that_others_can_read_are_made_private(tmp_path, umask_022):
    data = tmp_path / "data"
    store = st.Store(str(data))
    store.open()
    store.close()
    db = data / st.DATA_FILE
    os.chmod(db, 0o644)  # as an older version left them, or a crash its -wal
    (data / (st.DATA_FILE + "-wal")).touch(mode=0o644)
    store = st.Store(str(data))
    store.open()
    try:
        assert mode(db) == 0o600
        wal = data / (st.DATA_FILE + "-wal")  # sqlite may have checkpointed and removed it
        assert not wal.exists() or mode(wal) == 0o600
    finally:
        store.close()


def test_a_world_writable_data_directory_is_refused_unless_allowed(tmp_path, caplog):
    data = tmp_path / "shared"
    data.mkdir()
    os.chmod(data, 0o1777)  # even sticky, like /tmp: others can still put files there
    with pytest.raises(st.StoreError) as refused:
        st.Store(str(data)).open()
    text = str(refused.value)
    assert str(data) in text and "writable by every user (mode 1777)" in text
    assert f"chmod o-w {data}" in text and "--allow-shared-data" in text
    assert os.listdir(data) == [], "refused before anything is created there"
    store = st.Store(str(data))
    store.open(allow_shared=True)
    store.close()
    assert any("--allow-shared-data: used anyway" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


def test_a_data_directory_of_another_user_is_refused(tmp_path):
    if os.geteuid() == 0:
        data = tmp_path / "theirs"
        data.mkdir(mode=0o700)
        os.chown(data, 65534, 65534)  # nobody's
    else:
        data = tmp_path.anchor  # "/": root's
    with pytest.raises(st.StoreError) as refused:
        st.Store(str(data)).open()
    text = str(refused.value)
    assert f"data directory {data} belongs to" in text and "not to this server's user" in text
    assert "chown" in text and "--allow-shared-data" in text


def test_serve_and_game_refuse_a_shared_data_directory_and_name_the_flag(tmp_path):
    data = tmp_path / "shared"
    data.mkdir()
    os.chmod(data, 0o777)
    done = run_game("serve", "--host", "127.0.0.1", "--port", "0", "--data", str(data),
                    timeout=60)
    assert done.returncode != 0
    assert f"data directory {data} is writable by every user" in done.stderr, done.stderr
    for command in ("serve", "game"):
        helped = run_game(command, "--help", timeout=60)
        assert "--allow-shared-data" in helped.stdout, command


@pytest.mark.slow
def test_serve_with_allow_shared_data_starts_and_warns(tmp_path):
    data = tmp_path / "shared"
    data.mkdir()
    os.chmod(data, 0o777)
    server = ServerProcess("--data", str(data), "--allow-shared-data")
    try:
        assert server.port > 0
        assert os.path.exists(data / st.DATA_FILE)
    finally:
        server.stop()
        err = server.proc.stderr.read()
        server.close_pipes()
    assert "--allow-shared-data: used anyway" in err


# -- backup ----------------------------------------------------------------------------


@pytest.fixture
def store_dir(tmp_path):
    data = tmp_path / "data"
    store = st.Store(str(data))
    store.open()
    store.close()
    return data


def test_backup_writes_through_no_symlink_someone_placed(store_dir, tmp_path, umask_022):
    """An attacker who can write where the backup goes points `<out>.tmp` (the old
    temporary's name) and the output itself at a file of the operator's: neither
    is written through."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "backup.sqlite3"
    os.symlink(victim, str(out) + ".tmp")
    os.symlink(victim, out)
    pages = st.backup_store(str(store_dir), str(out))
    assert pages > 0
    assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and mode(out) == 0o600, "the symlink was replaced, not followed"
    db = sqlite3.connect(str(out))
    assert db.execute("PRAGMA application_id").fetchone()[0] == st.APPLICATION_ID
    db.close()
    assert os.path.islink(str(out) + ".tmp"), "left alone: not ours"
    assert sorted(os.listdir(tmp_path)) == ["backup.sqlite3", "backup.sqlite3.tmp", "data",
                                            "victim"], "no temporary left behind"


def test_backup_refuses_a_symlink_at_its_temporary_file(store_dir, tmp_path, monkeypatch):
    """The temporary is created O_EXCL|O_NOFOLLOW: even placed at its exact path
    (here by making its private directory predictable), a symlink is refused."""
    import tempfile

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.symlink(victim, private / "backup.sqlite3")
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: str(private))
    with pytest.raises(FileExistsError):
        st.backup_store(str(store_dir), str(tmp_path / "out.sqlite3"))
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "out.sqlite3").exists()


def test_the_backup_command_reports_a_refusal(store_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # a directory where the file should go: os.replace fails
    done = run_game("backup", "--data", str(store_dir), "-o", str(out), timeout=60)
    assert done.returncode == 1 and "backup failed" in done.stderr, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["data", "out"], "no temporary left on failure"

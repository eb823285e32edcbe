"""SQLite store: round trips, atomic commits, WAL on disk."""
from __future__ import annotations

import dataclasses
import json
import os
import sqlite3

import pytest
from test_engine import T0, make, reserve

from recarga.gateway.engine import RequestRecord
from recarga.gateway.store import (
    MMAP_BYTES,
    Checkpointer,
    DatabaseUnusable,
    Store,
    backup,
    is_permanent,
)


def test_round_trip_of_engine_results(tmp_path):
    store = Store(tmp_path / "gw.db")
    e = make()
    res = reserve(e, "c1", "q1")
    store.commit(res.changed, res.request)
    [r] = store.active()
    assert r == res.changed[0]
    assert store.requests(T0 - 1) == [res.request]
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    # a new process sees the same
    again = Store(tmp_path / "gw.db")
    assert again.active() == [r]
    assert again.reservations("c1") == [r] and again.reservations("c2") == []


def test_the_need_is_stored_as_the_protocols_need_object(tmp_path):
    store = Store(tmp_path / "gw.db")
    res = reserve(make(), "c1", "q1")
    store.commit(res.changed, res.request)
    [(text,)] = store.db.execute("SELECT need FROM reservations").fetchall()
    assert json.loads(text) == res.reservation.need.to_fields()
    # a need under CarNeed's own attribute names reads the same
    attributes = json.dumps(dataclasses.asdict(res.reservation.need))
    store.db.execute("UPDATE reservations SET need = ?", (attributes,))
    assert [r.need for r in store.reservations()] == [res.reservation.need]
    store.close()


def test_terminal_state_replaces_active_row(tmp_path):
    store = Store(tmp_path / "gw.db")
    e = make()
    res = reserve(e, "c1", "q1")
    store.commit(res.changed, res.request)
    exp = e.tick(T0 + 3600)
    store.commit(exp.changed, exp.request)
    assert store.active() == []
    assert [r.state for r in store.reservations()] == ["expired"]


def test_commit_is_all_or_nothing(tmp_path):
    store = Store(tmp_path / "gw.db")
    e = make()
    res = reserve(e, "c1", "q1")
    bad = RequestRecord("c1", "q1", T0, {"unserialisable": object()})
    with pytest.raises(TypeError):
        store.commit(res.changed, bad)
    assert store.active() == [] and store.requests(0) == []


def test_prune_requests(tmp_path):
    store = Store(tmp_path / "gw.db")
    store.commit([], RequestRecord("c1", "old", T0, {"ok": True}))
    store.commit([], RequestRecord("c1", "new", T0 + 100, {"ok": True}))
    assert store.prune_requests(T0 + 50) == 1
    assert [r.rid for r in store.requests(0)] == ["new"]


def test_bad_synchronous_setting(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        Store(tmp_path / "gw.db", synchronous="OFF")


def test_database_is_sqlite_on_disk(tmp_path):
    Store(tmp_path / "gw.db").close()
    con = sqlite3.connect(tmp_path / "gw.db")
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"reservations", "requests"} <= tables


def test_station_live_state_survives_restart(tmp_path):
    store = Store(tmp_path / "gw.db")
    e = make()
    res = e.station_status("near", b'{"v":1,"slots":["occupied","free"]}', T0 + 5)
    store.commit(res.changed, res.request, res.station)
    store.close()
    live = Store(tmp_path / "gw.db").stations_live()
    assert live["near"].online and live["near"].slots == ["occupied", "free"]
    assert live["near"].occupied_since == [T0 + 5, None]
    # a restarted engine knows the stations before any retained message arrives
    fresh = make()
    fresh.live.clear()
    fresh.restore([], [], live)
    assert fresh.busy_until("near", 2) is not None and fresh.busy_until("far", 1) is None


def test_encode_json_is_protocol_encode():
    from recarga.core.protocol import wire as W
    from recarga.gateway.store import encode_json
    e = make()
    res = reserve(e, "c1", "q1")
    for m in res.messages:
        assert encode_json(m.payload).encode() == W.encode(m.payload)


def test_reply_text_from_the_caller_is_stored_as_given(tmp_path):
    store = Store(tmp_path / "gw.db")
    e = make()
    res = reserve(e, "c1", "q1")
    text = '{"v":1,"rid":"q1","ok":true,"stored":"as given"}'
    store.commit_all([res], {id(res.request.reply): text})
    [(stored,)] = store.db.execute("SELECT reply FROM requests").fetchall()
    assert stored == text
    # without one the store encodes the reply itself, and it reads back equal
    res2 = reserve(e, "c1", "q2")
    store.commit_all([res2])
    assert store.requests(0)[-1] == res2.request


def test_a_reservation_written_many_times_keeps_one_row_with_its_latest_state(tmp_path):
    store = Store(tmp_path / "gw.db")
    e = make()
    first = reserve(e, "c1", "q1")
    again = reserve(e, "c1", "q2")  # replaces the car's reservation: the first is cancelled
    store.commit_all([first, again])
    rows = store.reservations("c1")
    assert len(rows) == 2 and len({r.id for r in rows}) == 2
    assert sorted(r.state for r in rows) == ["cancelled", "held"]
    assert [r.id for r in store.active()] == [again.changed[-1].id]


def test_background_checkpoints_keep_the_wal_small_and_commits_free_of_them(tmp_path):
    from test_engine import reserve as reserve_at
    store = Store(tmp_path / "gw.db")
    store.checkpoint_in_background()
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    e = make()
    wal = tmp_path / "gw.db-wal"
    biggest = 0
    for i in range(3000):
        res = reserve_at(e, f"c{i % 50}", f"q{i}", T0 + i)
        store.commit(res.changed, res.request)
        biggest = max(biggest, wal.stat().st_size)
    # without checkpoints the WAL would hold every page written: 40 MB by now
    assert biggest < (Checkpointer.MAX_FRAMES + 1000) * 4120
    thread = store.checkpointer.thread
    store.close()
    assert not thread.is_alive() and store.checkpointer is None
    again = Store(tmp_path / "gw.db")
    assert len(again.requests(0)) == 3000
    assert sorted(r.id for r in again.active()) == sorted(e.reservations)


def test_a_failed_checkpointer_hands_checkpoints_back_to_the_commits(tmp_path):
    store = Store(tmp_path / "gw.db")
    store.checkpoint_in_background()
    checkpointer = store.checkpointer
    checkpointer.failed = True  # as its thread sets it on an SQLite error
    e = make()
    res = reserve(e, "c1", "q1")
    store.commit(res.changed, res.request)
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,) and store.checkpointer is None
    checkpointer.stop()  # a real failure ends its thread; this one was only marked
    store.close()


def test_a_long_reader_does_not_hold_commits_behind_a_restart_checkpoint(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(Checkpointer, "MAX_FRAMES", 100)
    store = Store(tmp_path / "gw.db")
    store.checkpoint_in_background()
    reader = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM requests").fetchall()  # holds its snapshot
    e = make()
    slowest = 0.0
    for i in range(600):  # far past MAX_FRAMES: RESTART checkpoints are tried and give up
        res = reserve(e, f"c{i % 20}", f"q{i}", T0 + i)
        t = time.monotonic()
        store.commit(res.changed, res.request)
        slowest = max(slowest, time.monotonic() - t)
    assert slowest < 0.5
    assert not store.checkpointer.failed
    reader.execute("COMMIT")
    reader.close()
    store.close()


def test_deferred_sync_commits_without_fsync_and_syncs_the_wal_itself(tmp_path, monkeypatch):
    """With deferred_sync a commit is SQLite's NORMAL (no fsync) and sync() fsyncs the WAL
    file SQLite writes, which is what FULL does at each commit."""
    store = Store(tmp_path / "g.db", "FULL", deferred_sync=True)
    try:
        assert store.deferred_sync and store.db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert store.db.execute("PRAGMA mmap_size").fetchone() == (MMAP_BYTES,)
        wal = tmp_path / "g.db-wal"
        assert os.fstat(store.wal_fd).st_ino == wal.stat().st_ino
        synced: list[int] = []
        real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
        store.commit_all([reserve(make(), "c1", "r1")])
        assert synced == []  # the commit did not sync
        size = wal.stat().st_size
        assert size > 0 and os.fstat(store.wal_fd).st_ino == wal.stat().st_ino  # same file, written
        store.sync()
        assert synced == [store.wal_fd]
    finally:
        store.close()
    reopened = Store(tmp_path / "g.db")
    assert [r.car for r in reopened.reservations()] == ["c1"]
    reopened.close()


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_without_deferred_sync_each_commit_is_as_configured(tmp_path, synchronous):
    store = Store(tmp_path / "g.db", synchronous)
    try:
        assert not store.deferred_sync and store.wal_fd is None
        store.sync()  # nothing to do: each commit synced (FULL) or is not meant to be (NORMAL)
        assert store.db.execute("PRAGMA synchronous").fetchone() == ({"FULL": 2, "NORMAL": 1}[synchronous],)
    finally:
        store.close()
    assert not Store(tmp_path / "n.db", "NORMAL", deferred_sync=True).deferred_sync  # NORMAL: nothing to defer


def test_a_damaged_database_is_refused_at_open(tmp_path):
    """One overwritten index page: the store says so instead of restoring part of the
    reservations (whose slots could then be booked twice)."""
    path = tmp_path / "gw.db"
    store = Store(path)
    e = make()
    store.commit([r for i in range(40) for r in reserve(e, f"car-{i}", f"q{i}").changed], None)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = store.db.execute("PRAGMA page_size").fetchone()[0]
    [(root,)] = store.db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'reservations_active'")
    store.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    with pytest.raises(DatabaseUnusable, match=r"gw\.db is damaged .*restore a backup"):
        Store(path)


def test_a_database_path_under_a_file_is_refused_clearly(tmp_path):
    (tmp_path / "plain").write_text("")
    with pytest.raises(DatabaseUnusable, match="cannot create the database directory"):
        Store(tmp_path / "plain" / "gw.db")


def test_a_backup_is_a_whole_database_and_never_overwrites(tmp_path):
    store = Store(tmp_path / "gw.db")
    store.commit(reserve(make(), "car-1", "q1").changed, None)
    copy = tmp_path / "copy.db"
    assert backup(tmp_path / "gw.db", copy) > 0  # while the store is open
    assert [r.car for r in Store(copy).reservations()] == ["car-1"]
    with pytest.raises(FileExistsError):
        backup(tmp_path / "gw.db", copy)
    store.close()


def test_only_errors_a_restart_cannot_mend_are_permanent(tmp_path):
    Store(tmp_path / "gw.db").close()
    ro = sqlite3.connect(f"file:{tmp_path / 'gw.db'}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as e:
        ro.execute("CREATE TABLE t (x)")
    ro.close()
    assert is_permanent(e.value)
    assert not is_permanent(sqlite3.OperationalError("disk I/O error"))

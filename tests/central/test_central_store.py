"""Central's SQLite store: idempotent by xid, one hold per request and per reservation even
with two instances on one database file, batches serialised, summaries kept."""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from recarga.central.store import HoldRow, RequestRow, Store
from recarga.core.protocol import central as PC
from recarga.core.protocol import wire as W

NOW = 1_795_000_000.0
NEED = {"lat": 52.5, "lon": 13.4, "soc": 0.2, "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
        "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8}
XID = PC.overflow_id("a", "car-1", "r1")
ROW = RequestRow(XID, "a", "car-1", NEED, 1200.0, NOW + 5, "holding", "b", "b1", ("b",), None, NOW, NOW)
HOLD = HoldRow(XID, "b", "car-1", "b1", 1, "rb1", "held", NOW + 185, NOW + 1, NOW + 1)


@pytest.fixture
def two(tmp_path: Path):
    """Two instances' stores on one database file."""
    a, b = Store(tmp_path / "central.db", "NORMAL"), Store(tmp_path / "central.db", "NORMAL")
    yield a, b
    a.close()
    b.close()


def test_rows_round_trip_and_updates_keep_the_identity(two):
    a, b = two
    with a.batch():
        a.put_request(ROW)
    assert b.request(XID) == ROW
    answered = replace(ROW, state="answered", answer={"v": 1, "ok": False}, updated=NOW + 1,
                       origin="forged", car="other")
    with b.batch():
        b.put_request(answered)
        b.put_hold(HOLD)
    got = a.request(XID)
    assert got.state == "answered" and got.answer == {"v": 1, "ok": False}
    assert (got.origin, got.car, got.created) == ("a", "car-1", NOW)  # never rewritten
    assert a.hold(XID) == HOLD and a.holds(active_only=True) == [HOLD]


def test_no_second_hold_for_a_request_or_a_reservation(two):
    a, b = two
    with a.batch():
        a.put_request(ROW)
        a.put_hold(HOLD)
    with b.batch():  # the same hold again (redelivery on the other instance): no change
        b.put_hold(replace(HOLD, updated=NOW + 9))
        b.put_hold(replace(HOLD, state="confirmed", updated=NOW + 10))
    assert [h.state for h in a.holds()] == ["confirmed"]
    with b.batch():  # a different reservation under the same xid is not taken
        b.put_hold(replace(HOLD, reservation="rb2", slot=2))
    assert [h.reservation for h in a.holds()] == ["rb1"]
    other = PC.overflow_id("a", "car-2", "r1")
    with pytest.raises(sqlite3.IntegrityError):  # the same reservation for another request
        with a.batch():
            a.put_request(replace(ROW, xid=other))
            a.put_hold(replace(HOLD, xid=other))
    assert a.request(other) is None  # rolled back whole
    with pytest.raises(sqlite3.IntegrityError):  # a hold needs its request
        with a.batch():
            a.put_hold(replace(HOLD, xid=PC.overflow_id("x", "y", "z"), reservation="rb9"))


def test_batches_of_two_instances_are_serialised(two):
    """Read-decide-write inside batch() cannot interleave: a counter kept in a request row
    (its `tried` list) loses no increment."""
    a, b = two
    with a.batch():
        a.put_request(replace(ROW, tried=()))

    def bump(store: Store) -> None:
        for _ in range(50):
            with store.batch():
                row = store.request(XID)
                store.put_request(replace(row, tried=row.tried + ("x",)))

    threads = [threading.Thread(target=bump, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(a.request(XID).tried) == 100


def test_expiry_queries_prune_and_summaries(two):
    a, _ = two
    with a.batch():
        a.put_request(ROW)
        a.put_hold(HOLD)
    assert [r.xid for r in a.holding_past(NOW + 6)] == [XID] and a.holding_past(NOW + 4) == []
    assert [h.xid for h in a.held_past(NOW + 186)] == [XID] and a.held_past(NOW + 100) == []
    with a.batch():
        a.put_request(replace(ROW, state="answered", updated=NOW + 2))
        a.put_hold(replace(HOLD, state="expired", updated=NOW + 200))
    a.prune(NOW + 100)
    assert a.hold(XID) is not None  # changed after the cut-off
    a.prune(NOW + 300)
    assert a.hold(XID) is None and a.request(XID) is None
    msg = PC.summary_messages("b", [PC.SummaryStation("s1", 52.5, 13.4, 0.5, (PC.SlotGroup(22.0, False, 1, 1, None),))],
                             NOW)[0]
    with a.batch():
        a.put_summary("b", 0, NOW, W.encode(msg))
        a.put_summary("b", 1, NOW, b"not json")  # stored raw; skipped when read
    assert [s.stations[0].id for s in a.summaries()] == ["s1"]
    with a.batch():
        a.put_summary("b", 0, 0.0, b"")  # a cleared retained shard
    assert a.summaries() == []

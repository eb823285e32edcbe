"""A station's status numbering (boot, seq): a copy the broker replays that is older than a
status already applied never undoes it; a newer one, or a rebooted station's, is believed;
a status heard live is the station's latest whatever its numbers. The numbering survives a
gateway restart in the store, and seq compares wrap-safe. Expiry held back (tick without
`expire`) expires nothing."""
from __future__ import annotations

import logging
import sqlite3

import pytest

from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway.engine import Engine, EngineConfig, Result
from recarga.gateway.store import Store

REGION = "test"
T0 = 1_800_000_000.0
CAR = dict(lat=52.5201, lon=13.4051, soc=0.2, battery_kwh=50, consumption_kwh_100km=17, max_ac_kw=11,
           max_dc_kw=0, target_soc=0.8)


def engine() -> Engine:
    e = Engine(EngineConfig(region=REGION, hold_s=60, grace_s=300),
               [StationMeta("near", 52.52, 13.405, (SlotMeta(22.0, False),) * 2, operator="A")])
    e.station_online("near", W.online_message(True), T0)
    return e


def status(e: Engine, slots: list[str], boot: int | None, seq: int | None, now: float,
           replayed: bool = False) -> Result:
    return e.station_status("near", W.encode(D.station_status(slots, seq, boot)), now, replayed=replayed)


def checked_in(e: Engine) -> str:
    """A car reserved slot 1 of "near" and plugged in (status boot 1 seq 5, live)."""
    status(e, ["free", "free"], 1, 4, T0)
    [reply] = [m.payload for m in e.car_message("c1", W.encode(D.reserve_request("q1", "c1", **CAR)), T0).messages
               if m.topic == D.car_topic(REGION, "c1", "reply")]
    assert reply["reservation"]["slot"] == 1
    status(e, ["occupied", "free"], 1, 5, T0 + 10)
    rid = reply["reservation"]["id"]
    assert e.reservations[rid].state == "checked_in"
    return rid


def test_a_replayed_status_older_than_the_one_applied_does_not_end_a_live_session(caplog):
    e = engine()
    rid = checked_in(e)
    caplog.set_level(logging.DEBUG, "recarga.engine")
    # the broker's retained copy from before the car plugged in, restored after a crash
    res = status(e, ["free", "free"], 1, 4, T0 + 20, replayed=True)
    assert res.messages == [] and res.changed == [] and res.station is None
    assert e.reservations[rid].state == "checked_in" and e.live["near"].slots == ["occupied", "free"]
    assert e.live["near"].numbering == (1, 5) and e.stale_statuses == 1
    assert "stale status (boot 1 seq 4, applied boot 1 seq 5) ignored" in caplog.text
    # an earlier boot's copy is stale too, whatever its seq
    assert status(e, ["free", "free"], 0, 999, T0 + 21, replayed=True).station is None
    # the same numbering again (the station's republish after the broker restart) changes nothing
    res = status(e, ["occupied", "free"], 1, 5, T0 + 22, replayed=True)
    assert res.changed == [] and e.reservations[rid].state == "checked_in"
    # a newer one is believed, replayed or not: the car unplugged
    res = status(e, ["free", "free"], 1, 6, T0 + 30, replayed=True)
    assert [r.state for r in res.changed] == ["completed"] and rid not in e.reservations
    assert e.live["near"].numbering == (1, 6)


def test_a_rebooted_station_is_believed_though_its_seq_starts_again():
    e = engine()
    rid = checked_in(e)
    res = status(e, ["free", "free"], 2, 0, T0 + 20, replayed=True)  # queued while the gateway was away
    assert [r.state for r in res.changed] == ["completed"] and rid not in e.reservations
    assert e.live["near"].numbering == (2, 0)
    assert status(e, ["occupied", "free"], 1, 9, T0 + 21, replayed=True).station is None  # the old boot's


def test_a_status_heard_live_is_believed_whatever_its_numbers(caplog):
    """A station whose flash was wiped counts from boot 1 again: the gateway believes what
    it sends while the gateway listens (only the broker's replays can be stale)."""
    e = engine()
    rid = checked_in(e)
    status(e, ["occupied", "free"], 7, 3, T0 + 15)
    caplog.set_level(logging.INFO, "recarga.engine")
    res = status(e, ["free", "free"], 1, 0, T0 + 20)
    assert [r.state for r in res.changed] == ["completed"] and rid not in e.reservations
    assert e.live["near"].numbering == (1, 0)
    assert "station near numbers its statuses anew (boot 1 seq 0 after boot 7 seq 3)" in caplog.text


def test_seq_compares_wrap_safe():
    e = engine()
    status(e, ["free", "free"], 3, D.SEQ_MASK - 1, T0)
    status(e, ["occupied", "free"], 3, D.SEQ_MASK, T0 + 1, replayed=True)
    assert e.live["near"].slots == ["occupied", "free"]
    status(e, ["occupied", "occupied"], 3, 0, T0 + 2, replayed=True)  # wrapped: after SEQ_MASK
    assert e.live["near"].slots == ["occupied", "occupied"] and e.live["near"].numbering == (3, 0)
    assert status(e, ["free", "free"], 3, D.SEQ_MASK, T0 + 3, replayed=True).station is None
    assert e.live["near"].slots == ["occupied", "occupied"]
    assert D.serial_before(D.SEQ_MASK, 0) and D.serial_before(5, 6) and not D.serial_before(6, 5)
    assert not D.serial_before(7, 7) and D.serial_before(0, (D.SEQ_MASK + 1) // 2 - 1)


def test_an_unnumbered_status_is_always_believed_and_keeps_the_numbering():
    e = engine()
    status(e, ["free", "free"], 1, 5, T0)
    status(e, ["occupied", "free"], None, None, T0 + 1, replayed=True)
    assert e.live["near"].slots == ["occupied", "free"] and e.live["near"].numbering == (1, 5)
    # seq without boot counts as boot 0
    assert status(e, ["free", "free"], None, 9, T0 + 2, replayed=True).station is None


def test_the_numbering_survives_a_restart_in_the_store(tmp_path):
    e = engine()
    rid = checked_in(e)
    store = Store(tmp_path / "gw.db")
    store.commit([], None, ("near", e.live["near"]))
    store.close()
    store = Store(tmp_path / "gw.db")
    restarted = engine()
    restarted.restore([e.reservations[rid]], [], store.stations_live())
    store.close()
    assert restarted.live["near"].numbering == (1, 5)
    assert status(restarted, ["free", "free"], 1, 4, T0 + 30, replayed=True).station is None
    assert restarted.reservations[rid].state == "checked_in"


def test_a_database_without_the_numbering_columns_gets_them(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("CREATE TABLE stations_live (id TEXT PRIMARY KEY, online INTEGER NOT NULL, slots TEXT, "
               "occupied_since TEXT NOT NULL)")
    db.execute("""INSERT INTO stations_live VALUES ('near', 1, '["free","free"]', '[null,null]')""")
    db.commit()
    db.close()
    store = Store(tmp_path / "old.db")
    try:
        [(sid, live)] = store.stations_live().items()
        assert sid == "near" and live.slots == ["free", "free"] and live.numbering is None
        live.numbering = (4, 2)
        store.commit([], None, ("near", live))
        assert store.stations_live()["near"].numbering == (4, 2)
    finally:
        store.close()


@pytest.mark.parametrize("extra, code, field", [
    (',"boot":1', W.MISSING_FIELD, "seq"),
    (',"boot":-1,"seq":0', W.OUT_OF_RANGE, "boot"),
    (f',"boot":{D.SEQ_MASK + 1},"seq":0', W.OUT_OF_RANGE, "boot"),
    (f',"seq":{D.SEQ_MASK + 1}', W.OUT_OF_RANGE, "seq"),
    (',"seq":-3', W.OUT_OF_RANGE, "seq"),
    (',"seq":1.5', W.BAD_TYPE, "seq"),
    (',"boot":true,"seq":1', W.BAD_TYPE, "boot"),
    (',"seq":null', W.BAD_TYPE, "seq"),
])
def test_bad_numbering_is_refused(extra, code, field):
    with pytest.raises(W.ProtocolError) as e:
        D.parse_station_report(b'{"v":1,"slots":["free"]' + extra.encode() + b"}")
    assert (e.value.code, e.value.field) == (code, field)


def test_expiry_held_back_expires_nothing():
    e = engine()
    status(e, ["free", "free"], 1, 1, T0)
    e.car_message("c1", W.encode(D.reserve_request("q1", "c1", **CAR)), T0)
    assert e.tick(T0 + 61, expire=False).changed == [] and len(e.reservations) == 1
    assert [r.state for r in e.tick(T0 + 61).changed] == ["expired"]

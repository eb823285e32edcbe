"""recarga.core.protocol.central: the cross-region topics, messages and capacity summary."""
from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

NEED = {"lat": 52.52, "lon": 13.40, "soc": 0.2, "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
        "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8}
XID = PC.overflow_id("a", "car-1", "car-1-0-1")
RESERVATION = {"id": "r3f9a0c21b7de", "station": "st-9", "slot": 1, "state": "held", "distance_km": 2.41,
               "eta": 1795000000, "wait_min": 0.0, "charge_min": 19.7, "energy_kwh": 32.9, "power_kw": 100.0,
               "price_eur": 19.41, "hold_until": 1795000120}


def _bad(parse, payload: dict | bytes, code: str, field: str | None = None) -> None:
    raw = payload if isinstance(payload, bytes) else W.encode(payload)
    with pytest.raises(W.ProtocolError) as e:
        parse(raw)
    assert e.value.code == code, (e.value.code, str(e.value))
    if field is not None:
        assert e.value.field == field


def test_central_topics_parse_back():
    assert PC.overflow_id("a", "c", "r") == PC.overflow_id("a", "c", "r") != PC.overflow_id("a", "c", "r2")
    assert PC.XID_RE.match(XID)
    for leaf in PC.CENTRAL_LEAVES:
        topic = PC.summary_topic("a", 7) if leaf == "summary" else PC.central_topic("a", leaf)
        ref = PC.parse_central_topic(topic)
        assert ref == PC.CentralRef("a", leaf, 7 if leaf == "summary" else None)
        assert D.parse_topic("a", topic) is None  # never mistaken for a device topic
        assert mqtt.topic_matches_sub(PC.central_filter(leaf), topic)
    for bad in ("recarga/v1/a/central/summary/x", "recarga/v1/a/central/summary/01", "recarga/v1/a/central/nope",
                "recarga/v1/central/central/hold/answer", "recarga/v1/a/central/summary/999"):
        assert PC.parse_central_topic(bad) is None, bad
    with pytest.raises(ValueError, match="reserved"):
        PC.central_topic("central", "hold/answer")
    assert PC.shared(PC.central_filter("hold/answer")) == "$share/central/recarga/v1/+/central/hold/answer"


def test_overflow_request_validation():
    ok = PC.overflow_request(XID, "a", "car-1", 1795000004.5, NEED, beat_s=2400)
    req = PC.parse_overflow_request("a", W.encode(ok))
    assert (req.xid, req.origin, req.car, req.deadline, req.beat_s) == (XID, "a", "car-1", 1795000004.5, 2400.0)
    assert req.need == NEED
    assert PC.parse_overflow_request("a", W.encode(PC.overflow_abandon(XID, "a"))) == PC.OverflowAbandon(XID, "a")
    parse = lambda raw: PC.parse_overflow_request("a", raw)  # noqa: E731
    _bad(parse, {**ok, "origin": "b"}, PC.REGION_MISMATCH, "origin")
    _bad(parse, {**ok, "op": "steal"}, W.UNKNOWN_OP, "op")
    _bad(parse, {**ok, "xid": "car-1-0-1"}, W.OUT_OF_RANGE, "xid")
    _bad(parse, {k: v for k, v in ok.items() if k != "deadline"}, W.MISSING_FIELD, "deadline")
    _bad(parse, {**ok, "deadline": "soon"}, W.BAD_TYPE, "deadline")
    _bad(parse, {**ok, "need": {**NEED, "soc": 1.5}}, W.OUT_OF_RANGE, "soc")
    _bad(parse, {**ok, "need": {**NEED, "target_soc": 0.1}}, W.OUT_OF_RANGE, "target_soc")
    _bad(parse, {**ok, "need": {**NEED, "max_ac_kw": 0, "max_dc_kw": 0}}, W.OUT_OF_RANGE)
    _bad(parse, {**ok, "need": {**NEED, "wings": 2}}, W.UNKNOWN_FIELD, "wings")
    _bad(parse, {**ok, "need": [1]}, W.BAD_TYPE, "need")
    _bad(parse, {**ok, "beat_s": -1}, W.OUT_OF_RANGE, "beat_s")
    _bad(parse, {**ok, "extra": 1}, W.UNKNOWN_FIELD, "extra")
    _bad(parse, {**PC.overflow_abandon(XID, "a"), "car": "car-1"}, W.UNKNOWN_FIELD, "car")
    _bad(parse, {**ok, "v": 2}, W.BAD_VERSION, "v")
    _bad(parse, b"[1]", W.BAD_JSON)
    _bad(parse, W.encode({**ok, "car": "x" * 5000}), W.TOO_LARGE)


def test_hold_request_validation():
    ok = PC.hold_request(XID, "a", "b", "car-1", "st-9", 1795000004, 1795000184, NEED)
    req = PC.parse_hold_request("b", W.encode(ok))
    assert (req.origin, req.region, req.station, req.deadline, req.confirm_by) == ("a", "b", "st-9", 1795000004, 1795000184)
    anywhere = PC.parse_hold_request("b", W.encode(PC.hold_request(XID, "a", "b", "car-1", None, 1, 2, NEED)))
    assert anywhere.station is None
    release = PC.hold_release(XID, "b", "car-1", "r3f9a0c21b7de")
    assert PC.parse_hold_request("b", W.encode(release)) == PC.HoldRelease(XID, "b", "car-1", "r3f9a0c21b7de")
    parse = lambda raw: PC.parse_hold_request("b", raw)  # noqa: E731
    _bad(lambda raw: PC.parse_hold_request("c", raw), ok, PC.REGION_MISMATCH, "region")
    _bad(parse, {**ok, "confirm_by": ok["deadline"] - 1}, W.OUT_OF_RANGE, "confirm_by")
    _bad(parse, {k: v for k, v in ok.items() if k != "need"}, W.MISSING_FIELD, "need")
    _bad(parse, {**ok, "reservation": "r1"}, W.UNKNOWN_FIELD, "reservation")
    _bad(parse, {**release, "deadline": 1}, W.UNKNOWN_FIELD, "deadline")
    _bad(parse, {k: v for k, v in release.items() if k != "reservation"}, W.MISSING_FIELD, "reservation")
    _bad(parse, {**ok, "station": "a/b"}, W.OUT_OF_RANGE, "station")


def test_hold_answer_and_event_validation():
    ok = PC.hold_answer(XID, "b", "car-1", 1795000004, reservation=RESERVATION)
    a = PC.parse_hold_answer("b", W.encode(ok))
    assert a.ok and a.reservation == RESERVATION and a.car == "car-1"
    no = PC.parse_hold_answer("b", W.encode(PC.hold_answer(XID, "b", "car-1", 1, code=W.NO_CAPACITY, message="full")))
    assert not no.ok and no.error == {"code": W.NO_CAPACITY, "message": "full"}
    parse = lambda raw: PC.parse_hold_answer("b", raw)  # noqa: E731
    _bad(parse, {**ok, "ok": False}, W.MISSING_FIELD, "error")
    _bad(parse, {**ok, "error": {"code": "x", "message": ""}}, W.UNKNOWN_FIELD, "error")
    _bad(parse, {**ok, "ok": "yes"}, W.BAD_TYPE, "ok")
    _bad(parse, {**ok, "reservation": {**RESERVATION, "state": "confirmed"}}, W.OUT_OF_RANGE, "state")
    _bad(parse, {**ok, "reservation": {**RESERVATION, "slot": 0}}, W.OUT_OF_RANGE, "slot")
    _bad(parse, {**ok, "reservation": {**RESERVATION, "colour": "red"}}, W.UNKNOWN_FIELD, "colour")
    _bad(parse, {k: v for k, v in ok.items() if k != "car"}, W.MISSING_FIELD, "car")
    _bad(parse, PC.hold_answer(XID, "b", "car-1", 1, code="weird", message=""), W.OUT_OF_RANGE, "error")
    ev = PC.hold_event(XID, "b", "confirmed", "r3f9a0c21b7de")
    assert PC.parse_hold_event("b", W.encode(ev)) == PC.HoldEvent(XID, "b", "confirmed", "r3f9a0c21b7de")
    _bad(lambda raw: PC.parse_hold_event("b", raw), {**ev, "event": "exploded"}, W.OUT_OF_RANGE, "event")
    _bad(lambda raw: PC.parse_hold_event("a", raw), ev, PC.REGION_MISMATCH, "region")


def test_overflow_answer_and_car_reply():
    ok = PC.overflow_answer(XID, "a", 1795000004, region="b", host="10.0.0.2", port=1883, reservation=RESERVATION)
    a = PC.parse_overflow_answer("a", W.encode(ok))
    assert a.ok and a.region == "b" and a.broker == {"host": "10.0.0.2", "port": 1883}
    err = PC.overflow_answer(XID, "a", 1795000004, code=PC.OVERFLOW_UNAVAILABLE, message="no summaries")
    assert PC.parse_overflow_answer("a", W.encode(err)).error["code"] == PC.OVERFLOW_UNAVAILABLE
    parse = lambda raw: PC.parse_overflow_answer("a", raw)  # noqa: E731
    _bad(parse, {k: v for k, v in ok.items() if k != "broker"}, W.MISSING_FIELD, "broker")
    _bad(parse, {**ok, "broker": {"host": "h", "port": 0}}, W.OUT_OF_RANGE, "port")
    _bad(parse, {**ok, "broker": {"host": "bad host", "port": 1}}, W.BAD_TYPE, "broker")
    _bad(parse, {**err, "region": "b"}, W.UNKNOWN_FIELD, "region")
    _bad(lambda raw: PC.parse_overflow_answer("b", raw), ok, PC.REGION_MISMATCH, "origin")
    reply = PC.overflow_reply("car-1-0-1", RESERVATION, "b", a.broker)
    assert reply["ok"] and reply["region"] == "b" and reply["broker"]["port"] == 1883
    # the car's confirmation after the handover is the ordinary confirm on the target's broker
    confirm = D.reservation_request("confirm", "car-1-0-2", "car-1", RESERVATION["id"])
    assert D.parse_car_request("car-1", W.encode(confirm)).fields["reservation"] == RESERVATION["id"]
    local = D.error_reply("car-1-0-1", W.NO_CAPACITY, "full", earliest_free=None)
    noted = PC.with_overflow_note(local, PC.DEADLINE_PASSED, "central did not answer in time")
    assert noted["error"] == local["error"] and noted["overflow"]["code"] == PC.DEADLINE_PASSED
    assert PC.parse_link(b"1") is True and PC.parse_link(b"0") is False
    _bad(PC.parse_link, b"up", W.BAD_TYPE)


def _station(i: int, groups=((22.0, False, 2, 1, 1795000900.0),)) -> PC.SummaryStation:
    return PC.SummaryStation(f"st-{i}", 52.5 + i * 1e-4, 13.4, 0.49, tuple(PC.SlotGroup(*g) for g in groups))


def test_summary_round_trip_shards_and_size():
    stations = [_station(i) for i in range(4528)]  # Berlin's register
    msgs = PC.summary_messages("a", stations, 1795000000)
    assert len(msgs) == 12 and all(m["of"] == 12 for m in msgs)
    sizes = [len(W.encode(m)) for m in msgs]
    assert max(sizes) <= PC.MAX_SUMMARY_PAYLOAD and sum(sizes) < 400_000
    back = [PC.parse_summary("a", m["shard"], W.encode(m)) for m in msgs]
    assert sorted(s.id for b in back for s in b.stations) == sorted(s.id for s in stations)
    assert back[0].stations[0].groups[0] == PC.SlotGroup(22.0, False, 2, 1, 1795000900.0)
    # a station always lands in the same shard: a change republishes one shard only
    assert all(PC.summary_shard(s.id, 12) == b.shard for b in back for s in b.stations)
    # big stations: shards double until each fits
    fat = [_station(i, tuple((float(k + 1), k % 2 == 1, 1, 0, 1795000000.0 + k) for k in range(32))) for i in range(800)]
    msgs = PC.summary_messages("a", fat, 1795000000)
    assert all(len(W.encode(m)) <= PC.MAX_SUMMARY_PAYLOAD for m in msgs) and len(msgs) > 2


def test_summary_validation():
    m = PC.summary_messages("a", [_station(1)], 1795000000)[0]
    parse = lambda raw: PC.parse_summary("a", 0, raw)  # noqa: E731
    _bad(lambda raw: PC.parse_summary("a", 1, raw), m, W.OUT_OF_RANGE, "shard")
    _bad(lambda raw: PC.parse_summary("b", 0, raw), m, PC.REGION_MISMATCH, "region")
    entry = m["stations"][0]
    for bad_group, code in [([22, 0, 2, 3, None], W.OUT_OF_RANGE), ([22, 0, 2, 1, None], W.OUT_OF_RANGE),
                            ([22, True, 2, 1, 5], W.BAD_TYPE), ([0, 0, 1, 1, None], W.OUT_OF_RANGE),
                            ([22, 0, 1], W.BAD_TYPE)]:
        _bad(parse, {**m, "stations": [[*entry[:4], [bad_group]]]}, code)
    _bad(parse, {**m, "stations": [["bad id", *entry[1:]]]}, W.OUT_OF_RANGE)
    _bad(parse, {**m, "stations": [[*entry[:4], [[22, 0, 32, 0, 5], [50, 1, 1, 0, 5]]]]}, W.OUT_OF_RANGE)
    _bad(parse, json.dumps({**m, "stations": [entry] * 2000}).encode(), W.TOO_LARGE)

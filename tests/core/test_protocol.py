"""The protocol module: topics, filters, ACL lists, telemetry validation."""
from __future__ import annotations

import pytest

from recarga.core import protocol as P


def test_topics_and_parse_round_trip():
    t = P.car_topic("berlin", "car-1", "request")
    assert t == "recarga/v1/berlin/car/car-1/request"
    assert P.parse_topic("berlin", t) == P.TopicRef("car", "car-1", "request")
    assert P.parse_topic("berlin", "recarga/v1/hamburg/car/car-1/request") is None
    assert P.parse_topic("berlin", "recarga/v1/berlin/car/car+1/request") is None
    with pytest.raises(ValueError, match="bad car id"):
        P.car_topic("berlin", "a/b", "reply")


def test_filters_match_every_device():
    import paho.mqtt.client as mqtt
    assert mqtt.topic_matches_sub(P.car_filter("x", "reply"), P.car_topic("x", "c9", "reply"))
    assert mqtt.topic_matches_sub(P.station_filter("x", "cmd"), P.station_topic("x", "s9", "cmd"))
    assert not mqtt.topic_matches_sub(P.station_filter("x", "cmd"), P.station_topic("y", "s9", "cmd"))


def test_device_acls_are_confined_to_their_own_subtree():
    for access, topic in P.acl_car("r", "c1"):
        assert topic.startswith("recarga/v1/r/car/c1/")
    for access, topic in P.acl_station("r", "s1"):
        assert topic.startswith("recarga/v1/r/station/s1/")


def test_telemetry_validation():
    ok = b'{"v":1,"soc":0.4,"lat":52.5,"lon":13.4,"state":"charging","reservation":null}'
    assert P.parse_car_telemetry(ok)["state"] == "charging"
    for bad, code in [
        (ok.replace(b"charging", b"flying"), P.OUT_OF_RANGE),
        (ok.replace(b'"soc":0.4', b'"soc":4'), P.OUT_OF_RANGE),
        (ok.replace(b'"v":1,', b'"v":1,"x":1,'), P.UNKNOWN_FIELD),
        (ok.replace(b'"lat":52.5,', b""), P.MISSING_FIELD),
    ]:
        with pytest.raises(P.ProtocolError) as e:
            P.parse_car_telemetry(bad)
        assert e.value.code == code


# ---------------------------------------------------------------- across regions (central)

import json

import paho.mqtt.client as mqtt

NEED = {"lat": 52.52, "lon": 13.40, "soc": 0.2, "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
        "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8}
XID = P.overflow_id("a", "car-1", "car-1-0-1")
RESERVATION = {"id": "r3f9a0c21b7de", "station": "st-9", "slot": 1, "state": "held", "distance_km": 2.41,
               "eta": 1795000000, "wait_min": 0.0, "charge_min": 19.7, "energy_kwh": 32.9, "power_kw": 100.0,
               "price_eur": 19.41, "hold_until": 1795000120}


def _bad(parse, payload: dict | bytes, code: str, field: str | None = None) -> None:
    raw = payload if isinstance(payload, bytes) else P.encode(payload)
    with pytest.raises(P.ProtocolError) as e:
        parse(raw)
    assert e.value.code == code, (e.value.code, str(e.value))
    if field is not None:
        assert e.value.field == field


def test_central_topics_parse_back_and_are_carried_by_the_bridge():
    assert P.overflow_id("a", "c", "r") == P.overflow_id("a", "c", "r") != P.overflow_id("a", "c", "r2")
    assert P.XID_RE.match(XID)
    bridged = P.bridge_topics("a")
    for leaf in P.CENTRAL_LEAVES:
        topic = P.summary_topic("a", 7) if leaf == "summary" else P.central_topic("a", leaf)
        ref = P.parse_central_topic(topic)
        assert ref == P.CentralRef("a", leaf, 7 if leaf == "summary" else None)
        assert P.parse_topic("a", topic) is None  # never mistaken for a device topic
        # exactly one bridge line carries it, in the direction the protocol says
        carried = [d for pattern, d in bridged if mqtt.topic_matches_sub(pattern, topic)]
        assert carried == [P.CENTRAL_LEAVES[leaf][0]]
        assert mqtt.topic_matches_sub(P.central_filter(leaf), topic)
        assert not any(mqtt.topic_matches_sub(pattern, topic.replace("/a/", "/b/")) for pattern, _ in bridged)
    for bad in ("recarga/v1/a/central/summary/x", "recarga/v1/a/central/summary/01", "recarga/v1/a/central/nope",
                "recarga/v1/central/central/hold/answer", "recarga/v1/a/central/summary/999"):
        assert P.parse_central_topic(bad) is None, bad
    with pytest.raises(ValueError, match="reserved"):
        P.central_topic("central", "hold/answer")
    assert P.shared(P.central_filter("hold/answer")) == "$share/central/recarga/v1/+/central/hold/answer"


def test_central_acls_confine_each_bridge_to_its_region():
    for access, topic in P.acl_bridge("a"):
        assert topic.startswith("recarga/v1/a/central/") and access in ("read", "write")
    # what a bridge writes, central reads, and the other way round
    bridge = {t.replace("/a/", "/+/"): a for a, t in P.acl_bridge("a")}
    for access, topic in P.acl_central():
        if topic in bridge:
            assert {access, bridge[topic]} == {"read", "write"}
    assert ("read", P.central_topic("a", "link")) in P.acl_gateway_central("a")


def test_overflow_request_validation():
    ok = P.overflow_request(XID, "a", "car-1", 1795000004.5, NEED, beat_s=2400)
    req = P.parse_overflow_request("a", P.encode(ok))
    assert (req.xid, req.origin, req.car, req.deadline, req.beat_s) == (XID, "a", "car-1", 1795000004.5, 2400.0)
    assert req.need == NEED
    assert P.parse_overflow_request("a", P.encode(P.overflow_abandon(XID, "a"))) == P.OverflowAbandon(XID, "a")
    parse = lambda raw: P.parse_overflow_request("a", raw)  # noqa: E731
    _bad(parse, {**ok, "origin": "b"}, P.REGION_MISMATCH, "origin")
    _bad(parse, {**ok, "op": "steal"}, P.UNKNOWN_OP, "op")
    _bad(parse, {**ok, "xid": "car-1-0-1"}, P.OUT_OF_RANGE, "xid")
    _bad(parse, {k: v for k, v in ok.items() if k != "deadline"}, P.MISSING_FIELD, "deadline")
    _bad(parse, {**ok, "deadline": "soon"}, P.BAD_TYPE, "deadline")
    _bad(parse, {**ok, "need": {**NEED, "soc": 1.5}}, P.OUT_OF_RANGE, "soc")
    _bad(parse, {**ok, "need": {**NEED, "target_soc": 0.1}}, P.OUT_OF_RANGE, "target_soc")
    _bad(parse, {**ok, "need": {**NEED, "max_ac_kw": 0, "max_dc_kw": 0}}, P.OUT_OF_RANGE)
    _bad(parse, {**ok, "need": {**NEED, "wings": 2}}, P.UNKNOWN_FIELD, "wings")
    _bad(parse, {**ok, "need": [1]}, P.BAD_TYPE, "need")
    _bad(parse, {**ok, "beat_s": -1}, P.OUT_OF_RANGE, "beat_s")
    _bad(parse, {**ok, "extra": 1}, P.UNKNOWN_FIELD, "extra")
    _bad(parse, {**P.overflow_abandon(XID, "a"), "car": "car-1"}, P.UNKNOWN_FIELD, "car")
    _bad(parse, {**ok, "v": 2}, P.BAD_VERSION, "v")
    _bad(parse, b"[1]", P.BAD_JSON)
    _bad(parse, P.encode({**ok, "car": "x" * 5000}), P.TOO_LARGE)


def test_hold_request_validation():
    ok = P.hold_request(XID, "a", "b", "car-1", "st-9", 1795000004, 1795000184, NEED)
    req = P.parse_hold_request("b", P.encode(ok))
    assert (req.origin, req.region, req.station, req.deadline, req.confirm_by) == ("a", "b", "st-9", 1795000004, 1795000184)
    anywhere = P.parse_hold_request("b", P.encode(P.hold_request(XID, "a", "b", "car-1", None, 1, 2, NEED)))
    assert anywhere.station is None
    release = P.hold_release(XID, "b", "car-1", "r3f9a0c21b7de")
    assert P.parse_hold_request("b", P.encode(release)) == P.HoldRelease(XID, "b", "car-1", "r3f9a0c21b7de")
    parse = lambda raw: P.parse_hold_request("b", raw)  # noqa: E731
    _bad(lambda raw: P.parse_hold_request("c", raw), ok, P.REGION_MISMATCH, "region")
    _bad(parse, {**ok, "confirm_by": ok["deadline"] - 1}, P.OUT_OF_RANGE, "confirm_by")
    _bad(parse, {k: v for k, v in ok.items() if k != "need"}, P.MISSING_FIELD, "need")
    _bad(parse, {**ok, "reservation": "r1"}, P.UNKNOWN_FIELD, "reservation")
    _bad(parse, {**release, "deadline": 1}, P.UNKNOWN_FIELD, "deadline")
    _bad(parse, {k: v for k, v in release.items() if k != "reservation"}, P.MISSING_FIELD, "reservation")
    _bad(parse, {**ok, "station": "a/b"}, P.OUT_OF_RANGE, "station")


def test_hold_answer_and_event_validation():
    ok = P.hold_answer(XID, "b", "car-1", 1795000004, reservation=RESERVATION)
    a = P.parse_hold_answer("b", P.encode(ok))
    assert a.ok and a.reservation == RESERVATION and a.car == "car-1"
    no = P.parse_hold_answer("b", P.encode(P.hold_answer(XID, "b", "car-1", 1, code=P.NO_CAPACITY, message="full")))
    assert not no.ok and no.error == {"code": P.NO_CAPACITY, "message": "full"}
    parse = lambda raw: P.parse_hold_answer("b", raw)  # noqa: E731
    _bad(parse, {**ok, "ok": False}, P.MISSING_FIELD, "error")
    _bad(parse, {**ok, "error": {"code": "x", "message": ""}}, P.UNKNOWN_FIELD, "error")
    _bad(parse, {**ok, "ok": "yes"}, P.BAD_TYPE, "ok")
    _bad(parse, {**ok, "reservation": {**RESERVATION, "state": "confirmed"}}, P.OUT_OF_RANGE, "state")
    _bad(parse, {**ok, "reservation": {**RESERVATION, "slot": 0}}, P.OUT_OF_RANGE, "slot")
    _bad(parse, {**ok, "reservation": {**RESERVATION, "colour": "red"}}, P.UNKNOWN_FIELD, "colour")
    _bad(parse, {k: v for k, v in ok.items() if k != "car"}, P.MISSING_FIELD, "car")
    _bad(parse, P.hold_answer(XID, "b", "car-1", 1, code="weird", message=""), P.OUT_OF_RANGE, "error")
    ev = P.hold_event(XID, "b", "confirmed", "r3f9a0c21b7de")
    assert P.parse_hold_event("b", P.encode(ev)) == P.HoldEvent(XID, "b", "confirmed", "r3f9a0c21b7de")
    _bad(lambda raw: P.parse_hold_event("b", raw), {**ev, "event": "exploded"}, P.OUT_OF_RANGE, "event")
    _bad(lambda raw: P.parse_hold_event("a", raw), ev, P.REGION_MISMATCH, "region")


def test_overflow_answer_and_car_reply():
    ok = P.overflow_answer(XID, "a", 1795000004, region="b", host="10.0.0.2", port=1883, reservation=RESERVATION)
    a = P.parse_overflow_answer("a", P.encode(ok))
    assert a.ok and a.region == "b" and a.broker == {"host": "10.0.0.2", "port": 1883}
    err = P.overflow_answer(XID, "a", 1795000004, code=P.OVERFLOW_UNAVAILABLE, message="no summaries")
    assert P.parse_overflow_answer("a", P.encode(err)).error["code"] == P.OVERFLOW_UNAVAILABLE
    parse = lambda raw: P.parse_overflow_answer("a", raw)  # noqa: E731
    _bad(parse, {k: v for k, v in ok.items() if k != "broker"}, P.MISSING_FIELD, "broker")
    _bad(parse, {**ok, "broker": {"host": "h", "port": 0}}, P.OUT_OF_RANGE, "port")
    _bad(parse, {**ok, "broker": {"host": "bad host", "port": 1}}, P.BAD_TYPE, "broker")
    _bad(parse, {**err, "region": "b"}, P.UNKNOWN_FIELD, "region")
    _bad(lambda raw: P.parse_overflow_answer("b", raw), ok, P.REGION_MISMATCH, "origin")
    reply = P.overflow_reply("car-1-0-1", RESERVATION, "b", a.broker)
    assert reply["ok"] and reply["region"] == "b" and reply["broker"]["port"] == 1883
    # the car's confirmation after the handover is the ordinary confirm on the target's broker
    confirm = P.reservation_request("confirm", "car-1-0-2", "car-1", RESERVATION["id"])
    assert P.parse_car_request("car-1", P.encode(confirm)).fields["reservation"] == RESERVATION["id"]
    local = P.error_reply("car-1-0-1", P.NO_CAPACITY, "full", earliest_free=None)
    noted = P.with_overflow_note(local, P.DEADLINE_PASSED, "central did not answer in time")
    assert noted["error"] == local["error"] and noted["overflow"]["code"] == P.DEADLINE_PASSED
    assert P.parse_link(b"1") is True and P.parse_link(b"0") is False
    _bad(P.parse_link, b"up", P.BAD_TYPE)


def _station(i: int, groups=((22.0, False, 2, 1, 1795000900.0),)) -> P.SummaryStation:
    return P.SummaryStation(f"st-{i}", 52.5 + i * 1e-4, 13.4, 0.49, tuple(P.SlotGroup(*g) for g in groups))


def test_summary_round_trip_shards_and_size():
    stations = [_station(i) for i in range(4528)]  # Berlin's register
    msgs = P.summary_messages("a", stations, 1795000000)
    assert len(msgs) == 12 and all(m["of"] == 12 for m in msgs)
    sizes = [len(P.encode(m)) for m in msgs]
    assert max(sizes) <= P.MAX_SUMMARY_PAYLOAD and sum(sizes) < 400_000
    back = [P.parse_summary("a", m["shard"], P.encode(m)) for m in msgs]
    assert sorted(s.id for b in back for s in b.stations) == sorted(s.id for s in stations)
    assert back[0].stations[0].groups[0] == P.SlotGroup(22.0, False, 2, 1, 1795000900.0)
    # a station always lands in the same shard: a change republishes one shard only
    assert all(P.summary_shard(s.id, 12) == b.shard for b in back for s in b.stations)
    # big stations: shards double until each fits
    fat = [_station(i, tuple((float(k + 1), k % 2 == 1, 1, 0, 1795000000.0 + k) for k in range(32))) for i in range(800)]
    msgs = P.summary_messages("a", fat, 1795000000)
    assert all(len(P.encode(m)) <= P.MAX_SUMMARY_PAYLOAD for m in msgs) and len(msgs) > 2


def test_summary_validation():
    m = P.summary_messages("a", [_station(1)], 1795000000)[0]
    parse = lambda raw: P.parse_summary("a", 0, raw)  # noqa: E731
    _bad(lambda raw: P.parse_summary("a", 1, raw), m, P.OUT_OF_RANGE, "shard")
    _bad(lambda raw: P.parse_summary("b", 0, raw), m, P.REGION_MISMATCH, "region")
    entry = m["stations"][0]
    for bad_group, code in [([22, 0, 2, 3, None], P.OUT_OF_RANGE), ([22, 0, 2, 1, None], P.OUT_OF_RANGE),
                            ([22, True, 2, 1, 5], P.BAD_TYPE), ([0, 0, 1, 1, None], P.OUT_OF_RANGE),
                            ([22, 0, 1], P.BAD_TYPE)]:
        _bad(parse, {**m, "stations": [[*entry[:4], [bad_group]]]}, code)
    _bad(parse, {**m, "stations": [["bad id", *entry[1:]]]}, P.OUT_OF_RANGE)
    _bad(parse, {**m, "stations": [[*entry[:4], [[22, 0, 32, 0, 5], [50, 1, 1, 0, 5]]]]}, P.OUT_OF_RANGE)
    _bad(parse, json.dumps({**m, "stations": [entry] * 2000}).encode(), P.TOO_LARGE)

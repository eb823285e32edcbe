"""Malformed and out-of-bounds input from devices: every bad car request is refused with its
own error code and stores nothing; a station's bad status or meta changes nothing; the
gateway keeps serving and the invariants hold."""
from __future__ import annotations

import json

import pytest

from harness.broker import REGION
from harness.region import reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration


def confirm(car: str, rid: str, reservation: str) -> bytes:
    return W.encode(D.reservation_request("confirm", rid, car, reservation))


def raw(**fields) -> bytes:
    return json.dumps(fields).encode()


# (payload, error code, field named in the error or None); the car is "car-a" unless the
# payload says otherwise, each rid is b<n>
BAD = [
    (b"{not json", W.BAD_JSON, None),
    (b"[1, 2]", W.BAD_JSON, None),
    (b"\xff\xfe", W.BAD_JSON, None),
    (raw(op="reserve", rid="b4", car="car-a"), W.MISSING_FIELD, "v"),
    (raw(v=2, op="reserve", rid="b5", car="car-a"), W.BAD_VERSION, "v"),
    (raw(v=1, op="steal", rid="b6", car="car-a"), W.UNKNOWN_OP, "op"),
    (raw(v=1, op="reserve", rid="b7", car="car-a"), W.MISSING_FIELD, "lat"),
    (raw(v=1, op="reserve", rid="b/8", car="car-a"), W.OUT_OF_RANGE, "rid"),
    (raw(v=1, op="reserve", rid="b9" * 40, car="car-a"), W.OUT_OF_RANGE, "rid"),
    (reserve_msg("car-a", "b10", soc="low"), W.BAD_TYPE, "soc"),
    (reserve_msg("car-a", "b11", soc=True), W.BAD_TYPE, "soc"),
    (reserve_msg("car-a", "b12", soc=1.7), W.OUT_OF_RANGE, "soc"),
    (reserve_msg("car-a", "b13", lat=200), W.OUT_OF_RANGE, "lat"),
    (reserve_msg("car-a", "b14", lon=-181), W.OUT_OF_RANGE, "lon"),
    (reserve_msg("car-a", "b15", battery_kwh=1e300), W.OUT_OF_RANGE, "battery_kwh"),
    (reserve_msg("car-a", "b16", consumption_kwh_100km=0.1), W.OUT_OF_RANGE, "consumption_kwh_100km"),
    (reserve_msg("car-a", "b17", max_ac_kw=1e-9, max_dc_kw=0), W.OUT_OF_RANGE, "max_ac_kw"),
    (reserve_msg("car-a", "b18", max_dc_kw=0.5), W.OUT_OF_RANGE, "max_dc_kw"),
    (reserve_msg("car-a", "b19", max_ac_kw=0, max_dc_kw=0), W.OUT_OF_RANGE, "max_ac_kw"),
    (reserve_msg("car-a", "b20", soc=0.8, target_soc=0.5), W.OUT_OF_RANGE, "target_soc"),
    (reserve_msg("car-a", "b21").replace(b'"soc":0.2', b'"soc":NaN'), W.OUT_OF_RANGE, "soc"),
    (reserve_msg("car-a", "b22").replace(b'"soc":0.2', b'"soc":Infinity'), W.OUT_OF_RANGE, "soc"),
    (reserve_msg("car-a", "b23")[:-1] + b',"turbo":true}', W.UNKNOWN_FIELD, "turbo"),
    (reserve_msg("car-a", "b24")[:-1] + b',"pad":"' + b"x" * 500 + b'"}', W.TOO_LARGE, None),
    (reserve_msg("car-a", "b25", station="st-999"), D.UNKNOWN_STATION, "station"),
    (reserve_msg("car-a", "b26", station="st/1"), W.OUT_OF_RANGE, "station"),
    (reserve_msg("car-b", "b27"), D.CAR_MISMATCH, "car"),
    (raw(v=1, op="confirm", rid="b28", car="car-a"), W.MISSING_FIELD, "reservation"),
    (confirm("car-a", "b29", "r-nobody"), D.UNKNOWN_RESERVATION, "reservation"),
]
CARS = [f"car-{c}" for c in "abcdefgh"]  # the table spread over them: no car near its rate limit


def test_bad_requests_are_refused_with_their_codes_and_store_nothing(scenario):
    s = scenario(CARS, station_set(2, 2))
    for c in CARS:
        s.car(c)
    for i, (payload, code, field) in enumerate(BAD):
        # a car's own topic is what the gateway trusts: car_mismatch is car-a's topic naming car-b
        car = CARS[i % len(CARS)] if code != D.CAR_MISMATCH else "car-a"
        payload = payload.replace(b'"car": "car-a"', f'"car": "{car}"'.encode()).replace(
            b'"car":"car-a"', f'"car":"{car}"'.encode())
        rid = D.request_rid(payload)
        reply = s.ledger.ask(car, payload, rid) if rid is not None else _ask_unnamed(s, car, payload)
        assert reply["ok"] is False and reply["error"]["code"] == code, (payload, reply)
        assert reply["error"].get("field") == field, (payload, reply)
    snap = s.check()
    assert snap.reservations == []
    # still serving
    assert s.ledger.ask("car-a", reserve_msg("car-a", "good"), "good")["ok"] is True


def _ask_unnamed(s, car: str, payload: bytes) -> dict:
    """A request whose rid cannot be read: answered with rid null."""
    client = s.ledger.cars[car]
    topic = D.car_topic(REGION, car, "reply")
    before = len(client.messages(topic))
    client.publish(D.car_topic(REGION, car, "request"), payload)
    return json.loads(client.wait(lambda: client.messages(topic)[before:], 10, "a reply")[0].payload)


BAD_STATUS = [
    b"{not json",
    W.encode({"v": 1, "slots": ["free", "on_fire"]}),
    W.encode({"v": 1, "slots": []}),
    W.encode({"v": 1, "slots": ["free", "free"], "seq": -1}),
    W.encode({"v": 1, "slots": ["free", "free"], "extra": 1}),
]
BAD_META = [
    W.encode({"v": 1, "lat": 52.52, "lon": 13.40, "slots": [{"power_kw": 1e300}, {"power_kw": 22}]}),
    W.encode({"v": 1, "lat": 52.52, "lon": 13.40, "slots": [{"power_kw": 0.0001}, {"power_kw": 22}]}),
    W.encode({"v": 1, "lat": 95, "lon": 13.40, "slots": [{"power_kw": 22}, {"power_kw": 22}]}),
]


def test_bad_station_messages_change_nothing(scenario):
    s = scenario(["car-a"], station_set(1, 2))
    s.car("car-a")
    first = s.ledger.ask("car-a", reserve_msg("car-a", "q1"), "q1")["reservation"]
    station = s.station("st-1")
    for payload in BAD_STATUS:
        station.publish(D.station_topic(REGION, "st-1", "status"), payload, retain=True)
    for payload in BAD_META:
        station.publish(D.station_topic(REGION, "st-1", "meta"), payload, retain=True)
    # the station's messages and the car's come over different connections: no order between them
    wait_until(lambda: all(f"station st-1: bad {what}" in s.gw.log_text() for what in ("status", "meta")), 10,
               "the gateway's refusals of the bad status and meta")
    second = s.ledger.ask("car-a", W.encode(D.reservation_request("confirm", "q2", "car-a", first["id"])), "q2")
    assert second["ok"] and second["reservation"]["station"] == "st-1"
    snap = s.check()
    [r] = snap.reservations
    assert (r.state, r.slot, r.power_kw) == ("confirmed", first["slot"], first["power_kw"])

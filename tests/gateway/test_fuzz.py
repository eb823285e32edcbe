"""Generated payloads against validation and the engine: never a crash, never half-applied."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import REGION, T0, make

from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

FIELDS = ["v", "op", "rid", "car", "lat", "lon", "soc", "battery_kwh", "consumption_kwh_100km",
          "max_ac_kw", "max_dc_kw", "target_soc", "station", "reservation", "extra"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["reserve", "confirm", "cancel", "c1", "near", 1, 0.5]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5)


def valid_reserve() -> dict:
    return D.reserve_request("q1", "c1", lat=52.52, lon=13.405, soc=0.2, battery_kwh=50,
                             consumption_kwh_100km=17, max_ac_kw=11, max_dc_kw=50, target_soc=0.8)


# a valid request with some fields replaced, removed or added: close to the real thing
mutated = st.builds(
    lambda repl, drop: {**{k: v for k, v in valid_reserve().items() if k not in drop}, **repl},
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
    st.sets(st.sampled_from(FIELDS), max_size=2),
)
payloads = st.one_of(
    st.binary(max_size=600),
    mutated.map(lambda d: json.dumps(d).encode()),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_validation_accepts_or_raises_protocol_error(payload):
    try:
        req = D.parse_car_request("c1", payload)
    except W.ProtocolError as e:
        assert e.code in D.ERROR_CODES and str(e)
        return
    assert req.car == "c1" and req.op in ("reserve", "confirm", "cancel")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads, min_size=1, max_size=6))
def test_engine_answers_every_message_once_and_keeps_invariants(batch):
    e = make()
    for i, payload in enumerate(batch):
        before = dict(e.reservations)
        res = e.car_message("c1", payload, T0 + i)
        replies = [m for m in res.messages if m.topic == D.car_topic(REGION, "c1", "reply")]
        assert len(replies) == 1
        reply = replies[0].payload
        assert reply["v"] == 1 and isinstance(reply["ok"], bool)
        json.dumps(reply)  # always serialisable
        if not reply["ok"]:
            assert reply["error"]["code"] in D.ERROR_CODES
            # a refused request changes no reservation
            assert e.reservations == before and res.changed == []
        # invariants: one active reservation per car, no overlap on a slot
        assert len(e.by_car) == len(e.reservations) <= 1
        for ids in e.by_slot.values():
            rs = sorted((e.reservations[i] for i in ids), key=lambda r: r.start)
            assert all(b.start >= a.end for a, b in zip(rs, rs[1:]))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.dictionaries(st.sampled_from(["v", "slots", "seq", "x"]), json_values)
       .map(lambda d: json.dumps(d).encode()))
def test_station_messages_never_crash_the_engine(payload):
    e = make()
    e.station_status("near", payload, T0)
    e.station_online("near", payload, T0)
    e.station_meta("near", payload, T0)
    assert e.tick(T0 + 1).changed == []

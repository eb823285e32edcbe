"""The gateway down while a car plugs in before its deadline: on start it first catches up
with what the broker holds (the station's retained status), then expires; the car is checked
in, not a no-show."""
from __future__ import annotations

import time

import pytest

from harness.region import reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration

GRACE_S = 3


def test_a_car_plugged_in_while_the_gateway_was_down_is_checked_in_not_expired(scenario):
    [st] = stations = station_set(1, 1)
    s = scenario(["car-a"], stations, grace_s=GRACE_S)
    s.car("car-a")
    held = s.ledger.ask("car-a", reserve_msg("car-a", "q1", lat=st.lat, lon=st.lon), "q1")["reservation"]
    confirmed = s.ledger.ask("car-a", W.encode(D.reservation_request("confirm", "q2", "car-a", held["id"])),
                             "q2")["reservation"]
    deadline = confirmed["hold_until"]  # a confirmed reservation's is its no-show deadline
    s.gw.stop()
    s.ledger.status(s.station(st.id), ["occupied"])  # plugged in before the deadline
    assert time.time() < deadline
    wait_until(lambda: time.time() > deadline + 1, GRACE_S + 5, "the deadline passed")
    s.gw.start().wait_connected()
    s.ledger.cars["car-a"].wait(lambda: [m["event"] for m in s.ledger.messages("car-a") if "event" in m], 10,
                                "an event about the reservation")
    events = [m["event"] for m in s.ledger.messages("car-a") if "event" in m]
    assert events == ["checked_in"], events
    snap = s.check()
    assert [r.state for r in snap.reservations] == ["checked_in"]

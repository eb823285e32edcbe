"""A retained request: the broker replays it to the gateway on every subscribe. It acts only
when it is sent, never when replayed: a fresh gateway, and every restart, ignore it with one
warning line."""
from __future__ import annotations

import pytest

from harness.broker import REGION
from harness.region import reserve_msg
from recarga.core.protocol import device as D

pytestmark = pytest.mark.integration

IGNORED = "retained request on"


def test_a_retained_request_replayed_to_the_gateway_never_acts(scenario):
    s = scenario(["car-a"], start=False)
    car = s.car("car-a")
    # left retained on the broker before this gateway ever subscribed
    car.publish(D.car_topic(REGION, "car-a", "request"), reserve_msg("car-a", "stale"), retain=True)
    s.gw.start().wait_connected()
    s.gw.wait_log(IGNORED)
    assert s.ledger.ask("car-a", reserve_msg("car-a", "live"), "live")["ok"]  # a request sent acts
    s.gw.stop()
    s.gw.start().wait_connected()  # subscribes again: the broker replays the retained one
    s.gw.wait_log(IGNORED, count=2)
    assert s.ledger.replies("car-a", "stale") == []
    snap = s.check()
    assert [r.rid for r in snap.reservations] == ["live"]

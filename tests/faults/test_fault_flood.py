"""One car flooding the gateway with invalid and refused requests: it is rate limited
(rate_limited with retry_after), answered at most once per refusal period, its flood is
summarised in the log instead of a line per request, and another car is served meanwhile."""
from __future__ import annotations

import json

import pytest

from harness.broker import REGION
from harness.region import reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration

FLOOD = 400  # each of invalid and refused


def test_a_flooding_car_is_rate_limited_and_others_are_served(scenario):
    s = scenario(["car-a", "car-b"], station_set(2, 2))
    flooder = s.car("car-a")
    s.car("car-b")
    request = D.car_topic(REGION, "car-a", "request")
    infos = []
    for i in range(FLOOD):
        infos.append(flooder.paho.publish(request, b"{not json", qos=1))
        refused = W.encode(D.reservation_request("confirm", f"f{i}", "car-a", "r-none"))
        infos.append(flooder.paho.publish(request, refused, qos=1))
    ok = s.ledger.ask("car-b", reserve_msg("car-b", "q1"), "q1", timeout=5)
    assert ok["ok"] is True
    wait_until(lambda: all(i.is_published() for i in infos), 30, "the flood acknowledged", s.gw.alive)
    s.ledger.ask("car-b", reserve_msg("car-b", "q2", station="st-2"), "q2")  # after the whole flood
    replies = [json.loads(m.payload) for m in flooder.messages(D.car_topic(REGION, "car-a", "reply"))]
    limited = [r for r in replies if not r["ok"] and r["error"]["code"] == D.RATE_LIMITED]
    assert limited and all(r["error"]["retry_after"] >= 1 for r in limited)
    assert len(replies) < 50, f"{len(replies)} replies to a flood of {2 * FLOOD}"
    warnings = [line for line in s.gw.log_text().splitlines() if " WARNING " in line and "car-a" in line]
    assert len(warnings) < 20, warnings[:30]
    s.check()

"""GatewayService without a broker (tests/gateway/conftest.py): after each connect it
publishes a marker to itself and expires nothing until the marker is back, so what the
broker held for it (a station's status queued while it was down) is applied first; a marker
of an earlier connection does not count; without the marker expiry starts CATCH_UP_MAX_S
after the connect; statuses before the marker may be stale copies, after it they are live."""
from __future__ import annotations

import json
import logging

import pytest

from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway import service as S

T0 = 1_800_000_000.0
ONLINE = D.station_topic("t", "s1", "online")
STATUS = D.station_topic("t", "s1", "status")
REQUEST = D.car_topic("t", "c1", "request")
SYNC = D.gateway_sync_topic("t")


@pytest.fixture
def held(make_service, message):
    """A service whose clock stands at T0 (tests move it), with car c1 holding slot 1 of s1
    until T0 + 120 (hold_s), decided before the service connected."""
    svc = make_service()
    svc.now = T0
    svc.clock = lambda: svc.now
    request = W.encode(D.reserve_request("q1", "c1", lat=52.521, lon=13.401, soc=0.2, battery_kwh=58,
                                         consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=0, target_soc=0.8))
    assert svc.handle([message(ONLINE, W.online_message(True), 1),
                       message(STATUS, W.encode(D.station_status(["free"], 1, 1)), 2),
                       message(REQUEST, request, 3)])
    [r] = svc.store.active()
    assert (r.state, r.hold_until) == ("held", T0 + 120)
    return svc


def connect(svc, now: float = T0 + 200) -> bytes:
    """The broker accepts the connection at `now` (by default after the hold lapsed: the
    gateway was away meanwhile); returns the marker the service published."""
    svc.now = now
    svc.client.connected()
    [subscribed] = [e[1] for e in svc.client.events if isinstance(e, tuple) and e[0] == "subscribe"][-1:]
    assert SYNC in subscribed
    return [e[1] for e in svc.client.events if isinstance(e, tuple) and e[0] == SYNC][-1]


def states(svc) -> list[str]:
    return [r.state for r in svc.store.reservations()]


def test_expiry_waits_for_the_marker_and_a_status_queued_before_it_checks_in(held, message, caplog):
    caplog.set_level(logging.INFO, "recarga.gateway")
    marker = connect(held)
    held.now += 1
    assert held.handle([])
    assert states(held) == ["held"]  # not before the marker is back
    # what the broker held for the gateway arrives before its marker: the car plugged in
    held.now += 1
    assert held.handle([message(STATUS, W.encode(D.station_status(["occupied"], 1, 2)), 4),
                        message(SYNC, marker, 5)])
    assert states(held) == ["checked_in"]
    assert "caught up with the broker in 2.0 s; expiry runs" in caplog.text


def test_the_marker_back_lets_expiry_run_at_once(held, message):
    marker = connect(held)
    assert held.handle([message(SYNC, marker, 4)])
    assert states(held) == ["expired"]
    assert any(e[0] == D.car_topic("t", "c1", "reply") and json.loads(e[1]).get("event") == "expired"
               for e in held.client.events if isinstance(e, tuple))


def test_a_marker_of_an_earlier_connection_does_not_count(held, message):
    earlier = connect(held)
    marker = connect(held)  # reconnected before the first marker came back
    assert marker != earlier
    assert held.handle([message(SYNC, earlier, 4), message(SYNC, b'{"v":1,"sync":7}', 5)])
    assert states(held) == ["held"]
    assert held.handle([message(SYNC, marker, 6)])
    assert states(held) == ["expired"]


def test_without_the_marker_expiry_starts_after_the_bound(held, caplog):
    connect(held)
    held.now = T0 + 200 + S.CATCH_UP_MAX_S - 1
    assert held.handle([])
    assert states(held) == ["held"]
    held.now = T0 + 200 + S.CATCH_UP_MAX_S
    assert held.handle([])
    assert states(held) == ["expired"]
    assert f"catch-up marker not back within {S.CATCH_UP_MAX_S:.0f} s of connecting" in caplog.text


def test_before_the_marker_a_stale_status_is_ignored_after_it_a_live_one_is_believed(held, message, caplog):
    caplog.set_level(logging.INFO, "recarga.gateway")
    marker = connect(held)
    assert held.handle([message(STATUS, W.encode(D.station_status(["occupied"], 1, 3)), 4)])
    assert states(held) == ["checked_in"]
    # the broker's older copy, replayed before the marker: the car is still plugged in
    assert held.handle([message(STATUS, W.encode(D.station_status(["free"], 1, 2)), 5, retain=True),
                        message(SYNC, marker, 6)])
    assert states(held) == ["checked_in"]
    assert "(1 stale station statuses ignored)" in caplog.text
    # after the marker the station is heard live: a wiped board counting from boot 1 seq 0 again
    assert held.handle([message(STATUS, W.encode(D.station_status(["free"], 0, 0)), 7)])
    assert states(held) == ["completed"]

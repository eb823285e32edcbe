"""The region broker restarted in the middle of a burst, and killed (SIGKILL) so that it comes
back with retained statuses older than what the gateway has seen."""
from __future__ import annotations

import pytest

from harness.region import reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration


def test_broker_restarted_mid_burst_loses_nothing_acknowledged(scenario):
    cars = [f"b{i:02d}" for i in range(60)]
    s = scenario(cars, station_set(40, 2))
    for c in cars:
        s.car(c)
    for c in cars:
        s.ledger.send(c, reserve_msg(c, "q1"), "q1")
    wait_until(lambda: s.ledger.answered() > 0, 20, "the first answer", s.gw.alive, every=0.002)
    s.region.broker.restart()  # SIGTERM: Mosquitto saves its sessions and queues, then starts again
    # the cars' clients reconnect by themselves and send again what was not acknowledged
    wait_until(lambda: s.ledger.answered() == len(cars), 40,
               lambda: f"an answer for every car ({s.ledger.answered()} of {len(cars)})", s.gw.alive, every=0.2)
    assert all(x.acknowledged for x in s.ledger.sent)
    snap = s.check()
    assert len([r for r in snap.reservations if r.state == "held"]) == len(cars)


def test_broker_crash_with_stale_retained_status_ends_no_live_session(scenario):
    s = scenario(["car-a", "car-b"], station_set(1, 2))
    station = s.station("st-1")
    s.ledger.status(station, ["free", "free"], seq=1)
    s.region.broker.restart()  # a clean stop saves the broker's state: "free, free" seq 1 on disk
    s.gw.wait_log("connected to", count=2)
    wait_until(lambda: station.paho.is_connected(), 10, "the station back on the broker")
    s.car("car-a")
    held = s.ledger.ask("car-a", reserve_msg("car-a", "q1", lat=52.52, lon=13.40), "q1")["reservation"]
    s.ledger.ask("car-a", W.encode(D.reservation_request("confirm", "q2", "car-a", held["id"])), "q2")
    plugged = ["free", "free"]
    plugged[held["slot"] - 1] = "occupied"
    s.ledger.status(station, plugged, seq=2)
    s.ledger.cars["car-a"].wait(lambda: any(m.get("event") == "checked_in" for m in s.ledger.messages("car-a")),
                                10, "checked in")
    # killed before its next autosave: it comes back with the retained "free, free" of seq 1
    s.region.broker.kill()
    s.region.broker.start()
    s.gw.wait_log("connected to", count=3)
    # the station, back on the broker, reports its state again as the firmware does (next seq)
    wait_until(lambda: station.paho.is_connected(), 10, "the station back on the broker")
    s.ledger.status(station, plugged, seq=3)
    s.car("car-b")  # read after the station's status: the gateway has seen everything before it
    s.ledger.ask("car-b", reserve_msg("car-b", "q1"), "q1")
    snap = s.check()
    assert next(r for r in snap.reservations if r.id == held["id"]).state == "checked_in"
    assert not any(m.get("event") == "completed" for m in s.ledger.messages("car-a"))

"""Slots that leave service under live sessions, and an operator's commands on the running
gateway: a station's metadata loses a slot with a checked-in car, another station leaves the
station file across a gateway restart, an operator takes a slot with a confirmed reservation
out of service (and back), and ends a checked-in session. Each car gets its event, later
requests are served, and the invariants hold with exactly these ends allowed."""
from __future__ import annotations

import pytest

from harness.broker import REGION
from harness.region import reserve_msg, station_set
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.core.stations import dump_stations_json

pytestmark = pytest.mark.integration


def event(s, car: str, name: str, reservation: str) -> dict:
    """The car's `name` event about `reservation`, waiting for it."""
    def got() -> list[dict]:
        return [m for m in s.ledger.messages(car)
                if m.get("event") == name and m["reservation"]["id"] == reservation]
    return s.ledger.cars[car].wait(got, 10, f"{car}'s {name} event for {reservation}")[0]


def occupy(s, sid: str, slot: int) -> None:
    """The station reports `slot` occupied, its other slots as the test last left them."""
    states = list(s.ledger.statuses[sid])
    states[slot - 1] = "occupied"
    s.ledger.status(s.station(sid), states)


def test_vanished_slots_and_operator_commands_end_sessions_and_later_requests_are_served(scenario):
    cars = ["car-a", "car-b", "car-c", "car-d", "car-e", "car-f"]
    s = scenario(cars, station_set(6, 2))
    for c in cars:
        s.car(c)

    def reserve(car: str, rid: str, sid: str) -> dict:
        reply = s.ledger.ask(car, reserve_msg(car, rid, station=sid), rid)
        assert reply["ok"] and reply["reservation"]["station"] == sid, reply
        return reply["reservation"]

    # st-1's metadata loses slot 2 while car-b is checked in there
    ra, rb = reserve("car-a", "q1", "st-1"), reserve("car-b", "q1", "st-1")
    assert (ra["slot"], rb["slot"]) == (1, 2)
    occupy(s, "st-1", 2)
    event(s, "car-b", "checked_in", rb["id"])
    s.station("st-1").publish(D.station_topic(REGION, "st-1", "meta"),
                              W.encode({"v": 1, "lat": 52.52, "lon": 13.40, "slots": [{"power_kw": 22}]}),
                              retain=True)
    s.ledger.withdrawn.add(("st-1", 2))
    assert event(s, "car-b", "faulted", rb["id"])["offer"]["station"] != "st-1"

    # st-3 leaves the station file while the gateway is down, car-c checked in there
    rc = reserve("car-c", "q1", "st-3")
    occupy(s, "st-3", rc["slot"])
    event(s, "car-c", "checked_in", rc["id"])
    s.gw.stop()
    dump_stations_json([m for m in s.region.stations if m.id != "st-3"], s.gw.root / "stations.json")
    s.ledger.withdrawn.update(("st-3", n) for n in (1, 2))
    s.gw.start().wait_connected()
    event(s, "car-c", "faulted", rc["id"])

    # an operator takes the slot of car-d's confirmed reservation out of service
    rd, re_ = reserve("car-d", "q1", "st-4"), reserve("car-e", "q1", "st-4")
    s.ledger.ask("car-d", W.encode(D.reservation_request("confirm", "q2", "car-d", rd["id"])), "q2")
    out = s.gw.cli("slot", "out-of-service", "st-4", str(rd["slot"]), "--reason", "cable broken")
    assert out.returncode == 0, out.stderr
    s.ledger.withdrawn.add(("st-4", rd["slot"]))
    event(s, "car-d", "faulted", rd["id"])
    refused = s.ledger.ask("car-f", reserve_msg("car-f", "q1", station="st-4"), "q1")
    assert refused["error"]["code"] == W.NO_CAPACITY, refused  # never offered while out of service
    # ... and puts it back: once the station reports it free it is offered again
    out = s.gw.cli("slot", "in-service", "st-4", str(rd["slot"]))
    assert out.returncode == 0, out.stderr
    s.station("st-4").wait(lambda: [m for m in s.stations_cmds("st-4") if b"in_service" in m], 5,
                           "the in_service command")
    s.ledger.status(s.station("st-4"), ["free", "free"])
    assert reserve("car-f", "q2", "st-4")["slot"] == rd["slot"] != re_["slot"]

    # an operator ends car-a's session while its car is still plugged in
    occupy(s, "st-1", 1)
    event(s, "car-a", "checked_in", ra["id"])
    out = s.gw.cli("reservation", "end", ra["id"])
    assert out.returncode == 0, out.stderr
    s.ledger.operator_ended.add(ra["id"])
    event(s, "car-a", "completed", ra["id"])

    # later requests are served, and none finds a car stuck at a slot that is gone
    for car in ("car-b", "car-c", "car-d"):
        again = s.ledger.ask(car, reserve_msg(car, "q9"), "q9")
        assert again["ok"], again
    snap = s.check()
    states = {r.id: r.state for r in snap.reservations}
    assert [states[r["id"]] for r in (ra, rb, rc, rd)] == ["completed", "faulted", "faulted", "faulted"]

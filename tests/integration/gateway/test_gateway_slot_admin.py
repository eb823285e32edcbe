"""Slots that disappear and an operator's commands, with the real gateway process and
Mosquitto: a session whose slot leaves the station's metadata, or whose station leaves the
station file across a restart, ends (faulted, the car told and offered another slot), and
`recarga-gateway reservation end` / `slot out-of-service` / `slot in-service` act on the
running gateway, or on the next start when it is down."""
from __future__ import annotations

import json

import pytest

from harness.broker import REGION
from harness.clients import MqttClient
from harness.region import Region, ask, reserve_msg, station_set
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.core.stations import dump_stations_json

pytestmark = pytest.mark.integration


def car(region: Region, name: str) -> MqttClient:
    c = region.client(name)
    c.subscribe(D.car_topic(REGION, name, "reply"))
    return c


def station(region: Region, sid: str) -> MqttClient:
    return next(c for c in region.clients if c.username == sid)


def next_event(c: MqttClient, event: str, timeout: float = 10) -> dict:
    topic = D.car_topic(REGION, c.username, "reply")
    got = c.wait(lambda: [m for m in (json.loads(r.payload) for r in c.messages(topic)) if m.get("event") == event],
                 timeout, f"a {event!r} event")
    return got[-1]


def commands(s: MqttClient, cmd: str) -> list[dict]:
    msgs = (json.loads(m.payload) for m in s.messages(D.station_topic(REGION, s.username, "cmd")))
    return [m for m in msgs if m["cmd"] == cmd]


def set_status(region: Region, sid: str, slots: list[str]) -> None:
    station(region, sid).publish(D.station_topic(REGION, sid, "status"), W.encode(D.station_status(slots)),
                                 retain=True)


def stored(region: Region, rid: str) -> dict:
    return next(r for r in region.reservations() if r["id"] == rid)


def test_a_session_whose_slot_leaves_the_stations_metadata_ends(region_factory):
    region = region_factory(["car-a", "car-b"], station_set(2, 2))
    a, b = car(region, "car-a"), car(region, "car-b")
    ra = ask(a, reserve_msg("car-a", "q1"))["reservation"]
    rb = ask(b, reserve_msg("car-b", "q1"))["reservation"]
    assert (ra["station"], ra["slot"], rb["station"], rb["slot"]) == ("st-1", 1, "st-1", 2)
    set_status(region, "st-1", ["reserved", "occupied"])
    assert next_event(b, "checked_in")["reservation"]["id"] == rb["id"]
    # the station announces itself with one slot only: slot 2 and car-b's session are gone
    station(region, "st-1").publish(D.station_topic(REGION, "st-1", "meta"),
                                    W.encode({"v": 1, "lat": 52.52, "lon": 13.40, "slots": [{"power_kw": 22}]}),
                                    retain=True)
    ev = next_event(b, "faulted")
    assert ev["reservation"]["id"] == rb["id"] and ev["offer"]["station"] == "st-2"
    region.gw.wait_log("station st-1 slot 2 no longer exists (its metadata has 1 slots); ending its reservations")
    assert stored(region, rb["id"])["state"] == "faulted" and stored(region, ra["id"])["state"] == "held"
    again = ask(b, reserve_msg("car-b", "q2"))
    assert again["ok"], again  # not "bad_state: car is checked in at st-1 slot 2"


def test_a_session_whose_station_left_the_station_file_ends_after_the_restart(region_factory):
    region = region_factory(["car-a"], station_set(2, 1))
    a = car(region, "car-a")
    r = ask(a, reserve_msg("car-a", "q1"))["reservation"]
    assert r["station"] == "st-1"
    set_status(region, "st-1", ["occupied"])
    next_event(a, "checked_in")
    region.gw.stop()
    dump_stations_json([s for s in region.stations if s.id != "st-1"], region.gw.root / "stations.json")
    region.gw.start().wait_connected()
    ev = next_event(a, "faulted")
    assert ev["reservation"]["id"] == r["id"] and ev["offer"]["station"] == "st-2"
    region.gw.wait_log(f"reservation {r['id']} (car car-a): station st-1 is not in the station file, "
                       "so slot 1 is gone; ending it")
    assert stored(region, r["id"])["state"] == "faulted"
    again = ask(a, reserve_msg("car-a", "q2"))
    assert again["ok"] and again["reservation"]["station"] == "st-2", again


def test_operator_takes_a_slot_out_of_service_puts_it_back_and_ends_a_reservation(region_factory):
    region = region_factory(["car-a", "car-b"], station_set(2, 1))
    a, b = car(region, "car-a"), car(region, "car-b")
    ra = ask(a, reserve_msg("car-a", "q1"))["reservation"]
    assert (ra["station"], ra["slot"]) == ("st-1", 1)

    out = region.gw.cli("slot", "out-of-service", "st-1", "1", "--reason", "cable broken")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "station st-1 slot 1 out of service (cable broken); 1 reservation(s) faulted\n"
    ev = next_event(a, "faulted")
    assert ev["reservation"]["id"] == ra["id"] and ev["offer"]["station"] == "st-2"
    st1 = station(region, "st-1")
    st1.wait(lambda: commands(st1, "out_of_service"), 5, "the out_of_service command")
    assert commands(st1, "out_of_service") == [D.station_cmd("out_of_service", 1)]
    # never offered, whatever the station reports
    set_status(region, "st-1", ["free"])
    refused = ask(b, reserve_msg("car-b", "q1", station="st-1"))
    assert refused["error"]["code"] == W.NO_CAPACITY, refused
    for args, message in [(("st-1", "1"), "station st-1 slot 1 is already out of service since "),
                          (("st-9", "1"), "unknown station 'st-9' in region"),
                          (("st-2", "2"), "station st-2 has 1 slot(s); there is no slot 2")]:
        out = region.gw.cli("slot", "out-of-service", *args)
        assert out.returncode == 1 and out.stderr.startswith(f"recarga-gateway: refused: {message}"), out
    out = region.gw.cli("slot", "in-service", "st-2", "1")
    assert (out.returncode, out.stderr) == (1, "recarga-gateway: refused: station st-2 slot 1 is not out of service\n")

    out = region.gw.cli("slot", "in-service", "st-1", "1")
    assert out.returncode == 0 and "station st-1 slot 1 in service" in out.stdout, out.stderr
    st1.wait(lambda: commands(st1, "in_service"), 5, "the in_service command")
    set_status(region, "st-1", ["free"])  # as the station does on the command (the broker passes it on first)
    got = ask(b, reserve_msg("car-b", "q2", station="st-1"))
    assert got["ok"] and got["reservation"]["station"] == "st-1", got
    rb = got["reservation"]

    out = region.gw.cli("reservation", "end", rb["id"])
    assert out.returncode == 0 and out.stdout == f"reservation {rb['id']} (car car-b, st-1 slot 1, held) cancelled\n"
    assert next_event(b, "cancelled")["reservation"]["id"] == rb["id"]
    assert stored(region, rb["id"])["state"] == "cancelled"
    out = region.gw.cli("reservation", "end", rb["id"])
    assert out.returncode == 1
    assert out.stderr == f"recarga-gateway: refused: reservation {rb['id']} already ended (cancelled)\n"


def test_a_command_given_while_the_gateway_is_down_applies_when_it_starts(region_factory):
    region = region_factory(["car-a"], station_set(2, 1))
    a = car(region, "car-a")
    region.gw.stop()
    out = region.gw.cli("slot", "out-of-service", "st-1", "1", "--reason", "flooded", "--timeout", "1")
    assert out.returncode == 75 and "queued but not applied within 1 s" in out.stderr
    region.gw.start().wait_connected()
    region.gw.wait_log("operator command 1 (slot_out_of_service): station st-1 slot 1 out of service (flooded)")
    st1 = station(region, "st-1")
    st1.wait(lambda: commands(st1, "out_of_service"), 5, "the out_of_service command")
    got = ask(a, reserve_msg("car-a", "q1"))
    assert got["ok"] and got["reservation"]["station"] == "st-2", got

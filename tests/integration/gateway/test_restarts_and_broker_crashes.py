"""State after restarts and broker crashes, with a real Mosquitto and the real gateway process:
the gateway reads what the broker held for it before it expires anything, and a stale status
(the broker's retained copy restored from an older save after a crash) never undoes newer
state."""
from __future__ import annotations

import json
import time

import pytest

from harness.broker import REGION
from harness.clients import MqttClient
from harness.region import Region, ask, reserve_msg
from harness.wait import wait_until
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration

STATION = StationMeta("st-1", 52.52, 13.40, (SlotMeta(22.0, False),), operator="op", price_per_kwh=0.45)
STATUS = D.station_topic(REGION, "st-1", "status")
REPLY = D.car_topic(REGION, "car-a", "reply")


def car_client(region: Region) -> MqttClient:
    car = region.client("car-a")
    car.subscribe(REPLY)
    return car


def station_client(region: Region) -> MqttClient:
    """The station's connection (one at a time: the broker binds client ids to users)."""
    return next(c for c in region.clients if c.username == "st-1")


def events(car: MqttClient) -> list[str]:
    return [json.loads(m.payload).get("event") for m in car.messages(REPLY) if b'"event"' in m.payload]


def report(station: MqttClient, slots: list[str], boot: int, seq: int) -> None:
    """The station's status as its firmware publishes it: numbered, retained, QoS 1."""
    station.publish(STATUS, W.encode(D.station_status(slots, seq, boot)), retain=True)


def test_a_car_that_plugged_in_while_the_gateway_was_down_is_checked_in_not_expired(region_factory):
    region = region_factory(["car-a"], [STATION], grace_s=4)
    car = car_client(region)
    # at the station: no drive, so the no-show deadline is 4 s (grace) away
    held = ask(car, reserve_msg("car-a", "q1", lat=STATION.lat, lon=STATION.lon))["reservation"]
    confirmed = ask(car, W.encode(D.reservation_request("confirm", "q2", "car-a", held["id"])))["reservation"]
    assert confirmed["state"] == "confirmed"
    deadline = confirmed["hold_until"]
    assert deadline - time.time() > 1.0, "the deadline passed before the gateway stopped; give more grace"
    region.gw.stop()
    # the car plugs in before its deadline while the gateway is down: the status is retained
    # and queued for the gateway's persistent session
    report(station_client(region), ["occupied"], 1, 1)
    wait_until(lambda: time.time() > deadline + 1, 10, "the deadline passing while the gateway is down")
    region.gw.start()
    wait_until(lambda: region.reservations()[0]["state"] != "confirmed", 15, "the gateway deciding",
               region.gw.alive)
    assert region.reservations()[0]["state"] == "checked_in"
    car.wait(lambda: "checked_in" in events(car), 5, "the checked_in event")
    assert "expired" not in events(car)
    restart = region.gw.log_text().rsplit("active reservations restored", 1)[1]
    assert "caught up with the broker" in restart and "expired" not in restart


def test_a_broker_crash_that_restores_an_older_retained_status_does_not_end_a_live_session(region_factory):
    region = region_factory(["car-a"], [STATION])
    report(station_client(region), ["free"], 1, 1)
    # a clean restart saves the broker's state: the retained status boot 1 seq 1 "free"
    for c in region.clients:
        c.close()
    region.clients.clear()
    region.broker.restart()
    region.gw.wait_log("connected to", 15, count=2)
    station, car = region.client("st-1"), car_client(region)
    rid = ask(car, reserve_msg("car-a", "q1"))["reservation"]["id"]
    report(station, ["occupied"], 1, 2)  # the car plugs in
    car.wait(lambda: "checked_in" in events(car), 5, "the checked_in event")
    # the broker crashes before its next autosave (every 60 s): what it saved is older than
    # what the gateway saw
    for c in region.clients:
        c.close()
    region.clients.clear()
    region.broker.kill()
    region.broker.start()
    monitor = region.client("st-1")  # a station may read its own retained status
    monitor.subscribe(STATUS)
    restored = json.loads(monitor.expect(STATUS).payload)
    assert (restored["slots"], restored["seq"]) == (["free"], 1), "the broker saved the newer status; test void"
    region.gw.wait_log("connected to", 15, count=3)
    # a request sent after the gateway subscribed is answered after the retained status it got
    car = car_client(region)
    reply = ask(car, W.encode(D.reservation_request("cancel", "q2", "car-a", rid)))
    assert reply["error"]["code"] == D.BAD_STATE, reply  # still checked in: "unplug to end it"
    [r] = region.reservations()
    assert r["state"] == "checked_in"
    region.gw.wait_log("1 stale station statuses ignored", 10)
    # the station reconnects and publishes its latest status again, then the car unplugs
    report(monitor, ["occupied"], 1, 2)
    report(monitor, ["free"], 1, 3)
    wait_until(lambda: region.reservations()[0]["state"] == "completed", 10, "the session completed",
               region.gw.alive)
    car.wait(lambda: "completed" in events(car), 5, "the completed event")
    assert events(car).count("completed") == 1

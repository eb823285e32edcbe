"""The gateway process end to end over a real Mosquitto (auth + ACL on), with paho clients."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from harness.broker import MONITOR_USER, REGION
from harness.clients import MqttClient
from harness.region import ask, reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration


def test_request_reply_reservation_and_station_command(region_factory):
    region = region_factory(["car-a"], station_set(2, 2))
    car = region.client("car-a")
    car.subscribe(D.car_topic(REGION, "car-a", "reply"))
    reply = ask(car, reserve_msg("car-a", "q1"))
    assert reply["ok"] and reply["rid"] == "q1"
    r = reply["reservation"]
    assert r["state"] == "held" and r["station"] in ("st-1", "st-2")
    station = next(c for c in region.clients if c.username == r["station"])
    cmd = json.loads(station.expect(D.station_topic(REGION, r["station"], "cmd")).payload)
    assert cmd == {"v": 1, "cmd": "reserve", "slot": r["slot"], "reservation": r["id"], "until": cmd["until"]}
    [stored] = region.reservations()
    assert stored["id"] == r["id"] and stored["state"] == "held"
    # confirm, plug in, unplug: the full lifecycle over the broker
    assert ask(car, W.encode(D.reservation_request("confirm", "q2", "car-a", r["id"])))["reservation"]["state"] == "confirmed"
    slots = ["free", "free"]
    slots[r["slot"] - 1] = "occupied"
    station.publish(D.station_topic(REGION, r["station"], "status"), W.encode(D.station_status(slots)), retain=True)
    reply_topic = D.car_topic(REGION, "car-a", "reply")
    car.wait(lambda: any(b'"checked_in"' in m.payload for m in car.messages(reply_topic)), 5,
             "the checked_in event")
    assert region.reservations()[0]["state"] == "checked_in"
    station.publish(D.station_topic(REGION, r["station"], "status"), W.encode(D.station_status(["free", "free"])), retain=True)
    wait_until(lambda: region.reservations()[0]["state"] == "completed", 5, "the reservation completed",
               region.gw.alive)


BAD = [
    (b"{not json", W.BAD_JSON),
    (b'{"v":1,"op":"reserve","rid":"b2","car":"car-a"}', W.MISSING_FIELD),
    (reserve_msg("car-a", "b3", soc="low"), W.BAD_TYPE),
    (reserve_msg("car-a", "b4", soc=1.7), W.OUT_OF_RANGE),
    (reserve_msg("car-a", "b5", lat=200), W.OUT_OF_RANGE),
    (reserve_msg("car-a", "b6")[:-1] + b',"turbo":true}', W.UNKNOWN_FIELD),
    (reserve_msg("car-a", "b7")[:-1] + b',"pad":"' + b"x" * 500 + b'"}', W.TOO_LARGE),
    (reserve_msg("car-a", "b8", station="st-999"), D.UNKNOWN_STATION),
    (reserve_msg("car-b", "b9"), D.CAR_MISMATCH),
]


def test_bad_input_error_replies_log_nothing_stored_and_keeps_serving(region_factory):
    region = region_factory(["car-a", "car-b"], station_set(2, 1))
    car = region.client("car-a")
    car.subscribe(D.car_topic(REGION, "car-a", "reply"))
    for payload, code in BAD:
        reply = ask(car, payload)
        assert reply["ok"] is False and reply["error"]["code"] == code, (payload, reply)
        assert reply["error"]["message"]
    assert region.reservations() == []
    # the car's first refusal is a line of its own; the others within 10 s are counted (the
    # ones that failed validation as "invalid"), and summarised at the end of those 10 s
    summary = f"car car-a: {len(BAD)} requests refused ("
    region.gw.wait_log(summary, timeout=20)
    log = region.gw.log_text()
    assert f"rejected request ({BAD[0][1]})" in log
    [line] = [line for line in log.splitlines() if summary in line]
    refused = sum(code == D.UNKNOWN_STATION for _, code in BAD)  # valid, refused by the engine
    assert f"(invalid {len(BAD) - refused}, unknown_station {refused}) in the last 10 s" in line, line
    # still serving
    assert ask(car, reserve_msg("car-a", "good"))["ok"] is True
    assert region.gw.proc.poll() is None


def test_200_cars_at_once_10_free_slots(region_factory):
    cars = [f"c{i:03d}" for i in range(200)]
    # 10 free slots; the others are busy for longer than max_wait, so exactly 10 can be held
    stations = station_set(5, 4)
    region = region_factory(cars, stations, initial=["free", "free", "occupied", "occupied"])
    clients = [region.client(c) for c in cars]
    for c in clients:
        c.subscribe(D.car_topic(REGION, c.username, "reply"))
    barrier = threading.Barrier(len(clients))

    def fire(c: MqttClient) -> None:
        barrier.wait()
        c.paho.publish(D.car_topic(REGION, c.username, "request"), reserve_msg(c.username, "burst"), qos=1)

    threads = [threading.Thread(target=fire, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def answered() -> int:
        return sum(bool(c.messages(D.car_filter(REGION, "reply"))) for c in clients)

    wait_until(lambda: answered() >= len(clients), 60, lambda: f"a reply for each car ({answered()} of {len(clients)})",
               region.gw.alive, every=0.1)
    time.sleep(0.5)  # room for any duplicate to show up
    replies = {}
    for c in clients:
        got = c.messages(D.car_topic(REGION, c.username, "reply"))
        assert len(got) == 1, f"{c.username} got {len(got)} replies"
        replies[c.username] = json.loads(got[0].payload)
    ok = [r for r in replies.values() if r["ok"]]
    assert len(ok) == 10
    assert all(r["error"]["code"] == W.NO_CAPACITY for r in replies.values() if not r["ok"])
    taken = Counter((r["reservation"]["station"], r["reservation"]["slot"]) for r in ok)
    assert max(taken.values()) == 1 and len(taken) == 10
    stored = region.reservations("--active")
    assert sorted(r["id"] for r in stored) == sorted(r["reservation"]["id"] for r in ok)


# FULL as deployed: its fsync inside the commit, or on the syncer thread
@pytest.mark.parametrize("extra", ["", "sync_thread = true"], ids=["fsync-in-commit", "sync-thread"])
def test_sigkill_mid_burst_loses_nothing_acknowledged(region_factory, extra):
    cars = [f"k{i:03d}" for i in range(120)]
    stations = station_set(40, 4)  # 160 free slots, enough for everyone
    region = region_factory(cars, stations, hold_s=4, extra=extra, synchronous="FULL")
    assert ("synchronous FULL, fsync on the sync thread" in region.gw.log_text()) == bool(extra)
    clients = [region.client(c) for c in cars]
    for c in clients:
        c.subscribe(D.car_topic(REGION, c.username, "reply"))

    def burst() -> None:  # spread over ~1 s, so requests are still arriving when the gateway dies
        for c in clients:
            c.paho.publish(D.car_topic(REGION, c.username, "request"), reserve_msg(c.username, "crash"), qos=1)
            time.sleep(0.008)

    sender = threading.Thread(target=burst)
    sender.start()
    try:
        # kill the gateway as soon as the first answers are out, in the middle of the burst
        wait_until(lambda: sum(bool(c.received) for c in clients) >= 10, 30, "the first 10 answers",
                   region.gw.alive, every=0.005)
        region.gw.kill()
        answered_before = sum(bool(c.received) for c in clients)
    finally:
        sender.join()
    assert answered_before < len(clients), "the burst finished before the kill; make it longer"
    region.gw.start().wait_connected()
    wait_until(lambda: all(c.received for c in clients), 60,
               lambda: f"an answer for each car ({sum(bool(c.received) for c in clients)} of {len(clients)})",
               region.gw.alive)
    replies: dict[str, dict] = {}
    for c in clients:
        got = [json.loads(m.payload) for m in c.received if b'"rid":"crash"' in m.payload]
        assert got, f"{c.username} never got an answer"
        # a redelivered request is answered again, but always with the same answer
        assert all(g == got[0] for g in got), got
        replies[c.username] = got[0]
    assert all(r["ok"] for r in replies.values()), [r for r in replies.values() if not r["ok"]][:3]
    stored = {r["id"]: r for r in region.reservations()}
    assert len(stored) == len(cars)  # one each, none twice
    for car, r in replies.items():
        s = stored[r["reservation"]["id"]]
        assert (s["car"], s["station"], s["slot"]) == (car, r["reservation"]["station"], r["reservation"]["slot"])
    assert len({(s["station"], s["slot"]) for s in stored.values()}) == len(cars)
    # expiry still works after the restart: the 4 s holds lapse and the stations are told
    wait_until(lambda: not any(s["state"] == "held" for s in region.reservations()), 15, "every hold lapsed",
               region.gw.alive, every=0.2)
    assert {s["state"] for s in region.reservations()} == {"expired"}
    releases = sum(b'"release"' in m.payload for c in region.clients for m in c.messages(D.station_filter(REGION, "cmd")))
    assert releases >= len(cars)


def test_gateway_reconnects_after_broker_restart_and_keeps_its_state(region_factory):
    region = region_factory(["car-a", "car-b"], station_set(2, 1))
    car = region.client("car-a")
    car.subscribe(D.car_topic(REGION, "car-a", "reply"))
    first = ask(car, reserve_msg("car-a", "before"))["reservation"]
    for c in region.clients:
        c.close()
    region.clients.clear()
    region.broker.restart()  # same port and persistence: retained statuses survive
    region.gw.wait_log("connected to", 15, count=2)
    car_b = region.client("car-b")
    car_b.subscribe(D.car_topic(REGION, "car-b", "reply"))
    second = ask(car_b, reserve_msg("car-b", "after"))
    assert second["ok"]
    # the slot held before the restart is still held: car-b got the other one
    assert (second["reservation"]["station"], second["reservation"]["slot"]) != (first["station"], first["slot"])


def online_flags(monitor: MqttClient) -> list[bool]:
    return [json.loads(m.payload)["online"] for m in monitor.messages(D.gateway_online_topic(REGION))]


def test_online_flag_clean_stop_is_prompt_and_last_will_on_kill(region_factory):
    region = region_factory(["car-a"], station_set(1, 1))
    monitor = region.client(MONITOR_USER)
    monitor.subscribe(D.gateway_online_topic(REGION))
    wait_until(lambda: online_flags(monitor) == [True], 5, "the retained online flag")
    t0 = time.monotonic()
    region.gw.stop()  # SIGTERM: the single loop wakes at once, says offline, disconnects
    assert region.gw.proc.returncode == 0
    assert time.monotonic() - t0 < 4.0
    wait_until(lambda: online_flags(monitor)[-1:] == [False], 5, "offline after a clean stop")
    assert "stopped" in region.gw.log_text()
    region.gw.start().wait_connected()
    wait_until(lambda: online_flags(monitor)[-1:] == [True], 5, "online again")
    region.gw.kill()  # no goodbye: the broker publishes the Last Will
    wait_until(lambda: online_flags(monitor)[-1:] == [False], 10, "the Last Will")


def test_gateway_started_before_its_broker_connects_with_backoff(region_factory):
    region = region_factory(["car-a"], station_set(2, 1))
    region.gw.stop()
    region.broker.stop()
    region.gw.start()
    wait_until(lambda: region.gw.log_text().count("cannot connect to broker") >= 2, 10, "failed attempts")
    assert region.gw.proc.poll() is None
    region.broker.start()  # reconnect_max_s = 2 in the test config: back within a few seconds
    wait_until(lambda: region.gw.log_text().count("connected to") >= 2, 10, "the reconnection")
    car = region.client("car-a")
    car.subscribe(D.car_topic(REGION, "car-a", "reply"))
    assert ask(car, reserve_msg("car-a", "late"))["ok"] is True

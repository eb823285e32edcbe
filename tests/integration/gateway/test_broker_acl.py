"""The gateway broker's authentication and ACL, proven against a real Mosquitto.

Every negative check ("X does not receive Y") is paired with a positive control sent after the
forbidden message on the same path: once the control has arrived, the forbidden message would
have arrived too, and a further bounded wait (NEGATIVE_WAIT) catches stragglers. MQTT 3.1.1
cannot tell a publisher that the ACL dropped its message (the broker PUBACKs it anyway), so the
proof is always on the receiving side.
"""
from __future__ import annotations

import os
import time

import pytest

from harness.broker import REGION, Broker
from harness.clients import CliSubscriber, cli_publish, try_connect
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration

NEGATIVE_WAIT = 0.5  # seconds a forbidden message gets to show up after the control arrived


def car(cid: str, leaf: str) -> str:
    return D.car_topic(REGION, cid, leaf)


def station(sid: str, leaf: str) -> str:
    return D.station_topic(REGION, sid, leaf)


def request(cid: str, rid: str) -> bytes:
    return W.encode(D.reserve_request(rid, cid, lat=52.52, lon=13.40, soc=0.2, battery_kwh=58.0,
                                      consumption_kwh_100km=16.6, max_ac_kw=11.0, max_dc_kw=100.0,
                                      target_soc=0.8))


def reply(rid: str) -> bytes:
    return W.encode(D.error_reply(rid, W.NO_CAPACITY, "test reply"))


@pytest.fixture
def gateway(mqtt_client):
    """The gateway user, subscribed to everything the real gateway subscribes to."""
    gw = mqtt_client("gateway")
    for topic in D.gateway_subscriptions(REGION):
        assert not gw.subscribe(topic)[0].is_failure
    return gw


# ---------------------------------------------------------------- authentication

def test_anonymous_connect_is_refused(broker: Broker):
    rc = try_connect(broker, None)
    assert rc.is_failure, f"anonymous client was accepted: {rc}"
    # Mosquitto's own client, independent of paho, is refused too.
    done = cli_publish(broker, None, car("car-a", "request"), "anonymous")
    assert done.returncode != 0
    assert "not authorised" in done.stderr


def test_wrong_password_and_unknown_user_are_refused(broker: Broker):
    assert not try_connect(broker, "car-a", broker.password("car-a")).is_failure  # control
    assert try_connect(broker, "car-a", "not-the-password").is_failure
    assert try_connect(broker, "car-a", broker.password("car-b")).is_failure  # B's password for A
    assert try_connect(broker, "car-c", "whatever").is_failure  # no such user
    done = cli_publish(broker, "gateway", D.gateway_online_topic(REGION), "x", password="wrong")
    assert done.returncode != 0 and "not authorised" in done.stderr


# ---------------------------------------------------------------- cars

def test_car_request_reaches_gateway(mqtt_client, gateway):
    a = mqtt_client("car-a")
    payload = request("car-a", "r-1")
    a.publish(car("car-a", "request"), payload)
    got = gateway.expect(car("car-a", "request"))
    assert got.payload == payload


def test_car_cannot_publish_as_someone_else(mqtt_client, gateway):
    a = mqtt_client("car-a")
    forbidden = [car("car-b", "request"), car("car-b", "online"), station("st-1", "status"),
                 station("st-1", "online"), station("st-1", "meta")]
    for topic in forbidden:
        a.publish(topic, request("car-b", "forged"))
    a.publish(car("car-a", "request"), request("car-a", "control"))  # positive control, sent last
    gateway.expect(car("car-a", "request"))
    for i, topic in enumerate(forbidden):
        gateway.expect_nothing(topic, within=NEGATIVE_WAIT if i == 0 else 0)


def test_car_cannot_read_other_cars_replies(mqtt_client):
    gw = mqtt_client("gateway")
    a = mqtt_client("car-a")
    b = mqtt_client("car-b")
    b.subscribe(car("car-b", "reply"))
    # Mosquitto grants these subscriptions and filters on delivery; what counts is delivery.
    a.subscribe(car("car-b", "reply"))
    a.subscribe(D.car_filter(REGION, "reply"))
    a.subscribe(car("car-a", "reply"))
    gw.publish(car("car-b", "reply"), reply("for-b"))
    gw.publish(car("car-a", "reply"), reply("for-a"))  # control for A, sent after B's
    assert b.expect(car("car-b", "reply")).payload == reply("for-b")
    assert a.expect(car("car-a", "reply")).payload == reply("for-a")
    a.expect_nothing(car("car-b", "reply"), within=NEGATIVE_WAIT)


def test_car_cannot_read_other_cars_replies_with_mosquitto_clients(broker: Broker):
    """Same property, with mosquitto_sub / mosquitto_pub as clients independent of paho."""
    b_reply, a_reply = car("car-b", "reply"), car("car-a", "reply")
    with CliSubscriber(broker, "car-a", [b_reply, D.car_filter(REGION, "reply")]) as a, \
            CliSubscriber(broker, "car-b", [b_reply]) as b:
        for topic, text in ((b_reply, "reply-for-b"), (a_reply, "reply-for-a")):
            done = cli_publish(broker, "gateway", topic, text)
            assert done.returncode == 0, done.stderr
        b.expect(b_reply, "reply-for-b")
        a.expect(a_reply, "reply-for-a")  # A's wildcard works for its own topic: control
        pids = (a.pid, b.pid)
        time.sleep(NEGATIVE_WAIT)
        assert (b_reply, "reply-for-b") not in a.messages(), a.log_text()
    for pid in pids:  # the helper stopped its processes
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_car_cannot_forge_gateway_messages(mqtt_client):
    """A car must not answer another car's request or command a station."""
    gw = mqtt_client("gateway")
    a = mqtt_client("car-a")
    b = mqtt_client("car-b")
    st = mqtt_client("st-1")
    b.subscribe(car("car-b", "reply"))
    st.subscribe(station("st-1", "cmd"))
    forged_cmd = W.encode(D.station_cmd("reserve", 1, reservation="forged"))
    a.publish(car("car-b", "reply"), reply("forged"))
    a.publish(station("st-1", "cmd"), forged_cmd)
    gw.publish(car("car-b", "reply"), reply("real"))
    gw.publish(station("st-1", "cmd"), W.encode(D.station_cmd("release", 1)))
    assert b.expect(car("car-b", "reply")).payload == reply("real")
    assert st.expect(station("st-1", "cmd")).payload == W.encode(D.station_cmd("release", 1))
    time.sleep(NEGATIVE_WAIT)
    assert [m.payload for m in b.messages()] == [reply("real")]
    assert forged_cmd not in [m.payload for m in st.messages()]


# ---------------------------------------------------------------- stations

def test_station_publishes_own_status_and_online_not_another_stations(mqtt_client, gateway):
    st1 = mqtt_client("st-1")
    status = W.encode(D.station_status(["free", "occupied"], seq=1))
    forged = W.encode(D.station_status(["out_of_service"], seq=99))
    st1.publish(station("st-2", "status"), forged, retain=True)
    st1.publish(station("st-2", "online"), W.online_message(False), retain=True)
    st1.publish(station("st-1", "status"), status, retain=True)
    st1.publish(station("st-1", "online"), W.online_message(True), retain=True)
    assert gateway.expect(station("st-1", "status")).payload == status
    assert gateway.expect(station("st-1", "online")).payload == W.online_message(True)
    gateway.expect_nothing(station("st-2", "status"), within=NEGATIVE_WAIT)
    gateway.expect_nothing(station("st-2", "online"), within=0)
    # Nor was anything retained for st-2: a fresh gateway session sees st-1's retained status only.
    late = mqtt_client("gateway")
    late.subscribe(D.station_filter(REGION, "status"))
    late.subscribe(D.station_filter(REGION, "online"))
    assert late.expect(station("st-1", "online")).retain
    late.expect_nothing(station("st-2", "status"), within=NEGATIVE_WAIT)
    late.expect_nothing(station("st-2", "online"), within=0)


def test_station_reads_only_its_own_commands(mqtt_client):
    gw = mqtt_client("gateway")
    st1 = mqtt_client("st-1")
    st2 = mqtt_client("st-2")
    st2.subscribe(station("st-2", "cmd"))
    st1.subscribe(station("st-2", "cmd"))
    st1.subscribe(D.station_filter(REGION, "cmd"))
    st1.subscribe(station("st-1", "cmd"))
    cmd2 = W.encode(D.station_cmd("reserve", 2, reservation="res-2", until=1_800_000_000))
    cmd1 = W.encode(D.station_cmd("reserve", 1, reservation="res-1", until=1_800_000_000))
    gw.publish(station("st-2", "cmd"), cmd2)
    gw.publish(station("st-1", "cmd"), cmd1)  # control for st-1, sent after st-2's
    assert st2.expect(station("st-2", "cmd")).payload == cmd2
    assert st1.expect(station("st-1", "cmd")).payload == cmd1
    st1.expect_nothing(station("st-2", "cmd"), within=NEGATIVE_WAIT)


def test_station_cannot_read_other_stations_status(mqtt_client):
    st1 = mqtt_client("st-1")
    st2 = mqtt_client("st-2")
    own = W.encode(D.station_status(["free"], seq=1))
    st2.publish(station("st-2", "status"), W.encode(D.station_status(["reserved"], seq=1)), retain=True)
    st1.publish(station("st-1", "status"), own, retain=True)
    st1.subscribe(D.station_filter(REGION, "status"))
    assert st1.expect(station("st-1", "status")).payload == own  # its own (readwrite) retained status
    st1.expect_nothing(station("st-2", "status"), within=NEGATIVE_WAIT)


# ---------------------------------------------------------------- the broker helper itself

def test_broker_restart_keeps_port_and_retained_messages(broker: Broker, mqtt_client):
    st1 = mqtt_client("st-1")
    status = W.encode(D.station_status(["occupied"], seq=7))
    st1.publish(station("st-1", "status"), status, retain=True)
    st1.close()
    old_pid, port = broker.pid, broker.port
    broker.restart()
    assert broker.port == port and broker.pid != old_pid
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    gw = mqtt_client("gateway")
    gw.subscribe(station("st-1", "status"))
    got = gw.expect(station("st-1", "status"))
    assert got.payload == status and got.retain

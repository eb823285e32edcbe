"""GatewayService without a broker: the database-failure path (no ack, clean exit)."""
from __future__ import annotations

import json
import sqlite3

import paho.mqtt.client as mqtt
import pytest

from gateway import config as C
from gateway import protocol as P
from gateway import service as S
from gateway.model import SlotMeta, StationMeta
from gateway.stations import dump_stations_json


@pytest.fixture
def service(tmp_path):
    dump_stations_json([StationMeta("s1", 52.52, 13.40, (SlotMeta(22.0, False),))], tmp_path / "st.json")
    (tmp_path / "gw.toml").write_text('region = "t"\ndatabase = "gw.db"\nstations = "st.json"\n')
    svc = S.GatewayService(C.load(tmp_path / "gw.toml"))
    yield svc
    svc.store.close()


def message(topic: str, payload: bytes, mid: int) -> mqtt.MQTTMessage:
    m = mqtt.MQTTMessage(mid, topic.encode())
    m.payload, m.qos = payload, 1
    return m


def test_database_failure_exits_without_acknowledging(service, monkeypatch):
    acked: list[int] = []
    monkeypatch.setattr(service.client, "ack", lambda mid, qos: acked.append(mid))
    monkeypatch.setattr(service.client, "publish", lambda *a, **k: None)

    def broken(results, *encoded):
        raise sqlite3.OperationalError("disk I/O error")

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(service.store, "commit_all", broken)
    monkeypatch.setattr(S.os, "_exit", fake_exit)
    batch = [message(P.station_topic("t", "s1", "online"), P.online_message(True), 1)]
    with pytest.raises(Exited) as e:
        service._process(batch)
    assert e.value.args == (S.EXIT_DB_FAILURE,)
    assert acked == []


def test_batch_is_committed_before_it_is_acknowledged(service, monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(service.client, "ack", lambda mid, qos: events.append(f"ack {mid}"))
    monkeypatch.setattr(service.client, "publish", lambda topic, *a, **k: events.append(f"pub {topic}"))
    real = service.store.commit_all
    monkeypatch.setattr(service.store, "commit_all", lambda *a: (events.append("commit"), real(*a)))
    batch = [message(P.station_topic("t", "s1", "online"), P.online_message(True), 1),
             message(P.station_topic("t", "s1", "status"), P.encode(P.station_status(["free"])), 2),
             message(P.car_topic("t", "c1", "request"), b"{bad", 3)]
    service._process(batch)
    assert events[0] == "commit" and events[-2:] == ["ack 1", "ack 2", "ack 3"][-2:]
    assert events.index("commit") < events.index(f"pub {P.car_topic('t', 'c1', 'reply')}") < events.index("ack 1")
    assert service.store.stations_live()["s1"].slots == ["free"]


def test_the_stored_reply_is_the_published_text(service, monkeypatch):
    published: dict[str, bytes] = {}
    monkeypatch.setattr(service.client, "ack", lambda mid, qos: None)
    monkeypatch.setattr(service.client, "publish", lambda topic, payload, **k: published.setdefault(topic, payload))
    request = P.encode(P.reserve_request("q1", "c1", lat=52.521, lon=13.401, soc=0.2, battery_kwh=58,
                                         consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=0, target_soc=0.8))
    service._process([message(P.station_topic("t", "s1", "online"), P.online_message(True), 1),
                      message(P.station_topic("t", "s1", "status"), P.encode(P.station_status(["free"])), 2),
                      message(P.car_topic("t", "c1", "request"), request, 3)])
    reply = published[P.car_topic("t", "c1", "reply")]
    assert json.loads(reply)["ok"] is True
    [(stored,)] = service.store.db.execute("SELECT reply FROM requests WHERE rid = 'q1'").fetchall()
    assert stored.encode() == reply

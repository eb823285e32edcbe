"""GatewayService with [overflow] on, without a broker (paho's publish and ack recorded): the
service's guarantees hold for overflow too. A forwarded request is committed before its
overflow request goes out and before the ack; a database error exits 70 with nothing of the
batch published or acknowledged; a poison central message is logged and acknowledged; the
loop wakes for a pending request's deadline."""
from __future__ import annotations

import json
import sqlite3

import pytest
from test_service import message, process

from recarga.core import protocol as P
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.stations import dump_stations_json
from recarga.gateway import config as C
from recarga.gateway import service as S

REQUEST = P.encode(P.reserve_request("q1", "c1", lat=52.521, lon=13.401, soc=0.2, battery_kwh=58,
                                     consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=0, target_soc=0.8))
LINK = P.central_topic("t", "link")


@pytest.fixture
def service(tmp_path, monkeypatch):
    dump_stations_json([StationMeta("s1", 52.52, 13.40, (SlotMeta(22.0, False),))], tmp_path / "st.json")
    (tmp_path / "gw.toml").write_text('region = "t"\ndatabase = "gw.db"\nstations = "st.json"\n'
                                      "[overflow]\nenabled = true\nanswer_within_s = 5\n")
    svc = S.GatewayService(C.load(tmp_path / "gw.toml"))
    svc.events = []
    monkeypatch.setattr(svc.client, "ack", lambda mid, qos: svc.events.append(f"ack {mid}"))
    monkeypatch.setattr(svc.client, "publish", lambda topic, payload, **k: svc.events.append((topic, payload)))
    real = svc.store.commit_all
    monkeypatch.setattr(svc.store, "commit_all", lambda *a: (svc.events.append("commit"), real(*a)))
    # the station full, the link up
    process(svc, [message(P.station_topic("t", "s1", "online"), P.online_message(True), 1),
                  message(P.station_topic("t", "s1", "status"), P.encode(P.station_status(["occupied"])), 2),
                  message(LINK, b"1", 3)])
    svc.events.clear()
    yield svc
    svc._syncer.stop()
    svc.store.close()


def published(svc, topic: str) -> list[bytes]:
    return [e[1] for e in svc.events if isinstance(e, tuple) and e[0] == topic]


def test_a_forwarded_request_is_committed_before_it_goes_to_central_and_is_acked(service):
    process(service, [message(P.car_topic("t", "c1", "request"), REQUEST, 4)])
    ev = service.events
    [req] = published(service, P.central_topic("t", "overflow/request"))
    assert ev.index("commit") < ev.index((P.central_topic("t", "overflow/request"), req)) < ev.index("ack 4")
    assert published(service, P.car_topic("t", "c1", "reply")) == []  # waits for central
    assert service.store.db.execute("SELECT count(*) FROM requests WHERE rid = 'q1'").fetchone() == (1,)
    deadline = P.parse_overflow_request("t", req).deadline
    assert service._next_tick <= deadline + 0.05  # the loop wakes for the deadline
    # no answer: at the deadline the car gets its local answer, stored as the request's record
    service.clock = lambda: deadline + 0.02
    process(service, [])
    [reply] = published(service, P.car_topic("t", "c1", "reply"))
    assert json.loads(reply)["overflow"]["code"] == P.DEADLINE_PASSED
    [(stored,)] = service.store.db.execute("SELECT reply FROM requests WHERE rid = 'q1'").fetchall()
    assert stored.encode() == reply


def test_database_failure_exits_70_with_nothing_published_or_acked(service, monkeypatch):
    class Exited(Exception):
        pass

    def broken(*a):
        raise sqlite3.OperationalError("disk I/O error")

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(service.store, "commit_all", broken)
    monkeypatch.setattr(S.os, "_exit", fake_exit)
    service._process([message(P.car_topic("t", "c1", "request"), REQUEST, 4)])
    with pytest.raises(Exited) as e:
        service._commit()
    service._settle(1)
    assert e.value.args == (S.EXIT_DB_FAILURE,) and service.events == []


def test_poison_central_messages_are_logged_and_acked(service, monkeypatch, caplog):
    def bug(*a):
        raise RuntimeError("a bug")

    monkeypatch.setattr(service.overflow.tracker, "on_answer", bug)
    process(service, [message(P.central_topic("t", "overflow/answer"), b"{}", 5),
                      message(P.central_topic("t", "hold/request"), b"junk", 6),
                      message(P.car_topic("t", "c1", "request"), REQUEST, 7)])
    assert {"ack 5", "ack 6", "ack 7"} <= set(service.events)
    assert "failed to handle message on" in caplog.text and "bad hold request" in caplog.text
    assert published(service, P.central_topic("t", "overflow/request"))  # the region keeps serving

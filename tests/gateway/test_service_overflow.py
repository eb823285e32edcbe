"""GatewayService with [overflow] on, without a broker (tests/gateway/conftest.py): the
service's guarantees hold for overflow too. A forwarded request is committed before its
overflow request goes out and before the ack; a database error exits 70 with nothing of the
batch published or acknowledged; a poison central message is logged and acknowledged; the
loop wakes for a pending request's deadline."""
from __future__ import annotations

import json
import sqlite3

import pytest

from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway import service as S

REQUEST = W.encode(D.reserve_request("q1", "c1", lat=52.521, lon=13.401, soc=0.2, battery_kwh=58,
                                     consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=0, target_soc=0.8))
LINK = PC.central_topic("t", "link")
OVERFLOW_REQUEST = PC.central_topic("t", "overflow/request")


@pytest.fixture
def region_full(make_service, message):
    """Overflow on, the region's only slot occupied, the link to central up."""
    svc = make_service("[overflow]\nenabled = true\nanswer_within_s = 5")
    assert svc.handle([message(D.station_topic("t", "s1", "online"), W.online_message(True), 1),
                       message(D.station_topic("t", "s1", "status"), W.encode(D.station_status(["occupied"])), 2),
                       message(LINK, b"1", 3)])
    svc.client.events.clear()
    return svc


def published(svc, topic: str) -> list[bytes]:
    return [e[1] for e in svc.client.events if isinstance(e, tuple) and e[0] == topic]


def test_a_forwarded_request_is_committed_before_it_goes_to_central_and_is_acked(region_full, message):
    service = region_full
    assert service.handle([message(D.car_topic("t", "c1", "request"), REQUEST, 4)])
    ev = service.client.events
    [req] = published(service, OVERFLOW_REQUEST)
    assert ev.index("commit") < ev.index((OVERFLOW_REQUEST, req)) < ev.index("ack 4")
    assert published(service, D.car_topic("t", "c1", "reply")) == []  # waits for central
    assert service.store.db.execute("SELECT count(*) FROM requests WHERE rid = 'q1'").fetchone() == (1,)
    deadline = PC.parse_overflow_request("t", req).deadline
    assert service.next_tick <= deadline + 0.05  # the loop wakes for the deadline
    # no answer: at the deadline the car gets its local answer, stored as the request's record
    service.clock = lambda: deadline + 0.02
    assert service.handle([])
    [reply] = published(service, D.car_topic("t", "c1", "reply"))
    assert json.loads(reply)["overflow"]["code"] == PC.DEADLINE_PASSED
    [(stored,)] = service.store.db.execute("SELECT reply FROM requests WHERE rid = 'q1'").fetchall()
    assert stored.encode() == reply


def test_database_failure_exits_70_with_nothing_published_or_acked(region_full, message, monkeypatch):
    service = region_full

    def broken(*a):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(service.store, "commit_all", broken)
    service.process([message(D.car_topic("t", "c1", "request"), REQUEST, 4)])
    with pytest.raises(SystemExit) as e:
        service.commit()
    service.settle(1)
    assert e.value.code == S.EXIT_DB_FAILURE and service.client.events == [f"exit {S.EXIT_DB_FAILURE}"]


def test_poison_central_messages_are_logged_and_acked(region_full, message, monkeypatch, caplog):
    service = region_full

    def bug(*a):
        raise RuntimeError("a bug")

    monkeypatch.setattr(service.overflow.tracker, "on_answer", bug)
    assert service.handle([message(PC.central_topic("t", "overflow/answer"), b"{}", 5),
                           message(PC.central_topic("t", "hold/request"), b"junk", 6),
                           message(D.car_topic("t", "c1", "request"), REQUEST, 7)])
    assert {"ack 5", "ack 6", "ack 7"} <= set(service.client.events)
    assert "failed to handle message on" in caplog.text and "bad hold request" in caplog.text
    assert published(service, OVERFLOW_REQUEST)  # the region keeps serving

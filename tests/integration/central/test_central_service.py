"""The central service as real processes (`python -m recarga.central.cli run`) on a real central
broker (auth and ACL on): two instances under a burst, a restart after SIGKILL, messages
past their deadline.

The regions' sides are played on the central broker itself by clients logged in as the
regions' bridge users (what the Mosquitto bridge does, test_bridge.py proves the
bridge): region "a" asks, region "b" answers hold requests with the real gateway engine
through recarga.gateway.overflow.answer_hold. Answers are counted on the wire by mosquitto_sub
as a separate monitoring user.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.central import (
    MONITOR_ACL,
    MONITOR_USER,
    CentralBroker,
    CentralProcess,
    central_passwords,
    overflow_request,
)
from harness.clients import CliSubscriber, connect_client
from harness.wait import wait_until
from recarga.central.store import Store
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway.engine import Engine, EngineConfig
from recarga.gateway.overflow import EngineHoldPort, answer_hold, summary_stations

pytestmark = pytest.mark.integration

REGIONS = ("a", "b")
REGION_PORTS = {"a": 18831, "b": 18832}  # what central's answers name; no broker listens there


class TargetRegion:
    """Region b's gateway side: the real engine answers central's hold requests (one
    thread, as the gateway's engine thread), and its summary is published retained."""

    def __init__(self, broker: CentralBroker, stations: int = 40, delay: dict[str, float] | None = None):
        metas = [StationMeta(f"b-{i}", 52.52 + i * 0.002, 13.40, (SlotMeta(150.0, True), SlotMeta(150.0, True)))
                 for i in range(stations)]
        now = time.time()
        self.engine = Engine(EngineConfig(region="b", hold_s=120), metas)
        for m in metas:
            self.engine.station_online(m.id, W.online_message(True), now)
            self.engine.station_status(m.id, W.encode(D.station_status(["free", "free"])), now)
        self.port = EngineHoldPort(self.engine)
        self.delay = delay or {}  # car -> seconds its answer takes to leave (a slow link)
        self.inbox: queue.Queue = queue.Queue()
        self.client = connect_client(broker, "bridge-b", client_id="test-region-b",
                                     on_message=lambda m: self.inbox.put((m.topic, m.payload)))
        self.client.subscribe(PC.central_topic("b", "hold/request"))
        busy = {m.id: [now, now] for m in metas}
        for msg in PC.summary_messages("b", summary_stations(metas, busy, now), now):
            self.client.publish(PC.summary_topic("b", msg["shard"]), W.encode(msg), retain=True)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                _, payload = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            answer, _ = answer_hold("b", payload, time.time(), self.port)
            time.sleep(self.delay.get(json.loads(payload).get("car"), 0))  # the answer travels slowly
            if answer is not None:
                self.client.publish(answer.topic, answer.payload)

    def active(self, car: str) -> list:
        return [r for r in self.engine.reservations.values() if r.car == car]

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.client.close()


@pytest.fixture
def central_broker(tmp_path: Path):
    b = CentralBroker.launch(tmp_path / "broker", regions=REGIONS,
                             passwords={**central_passwords(REGIONS), MONITOR_USER: "monitor-secret"},
                             extra_acl=MONITOR_ACL, tls=True)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def started(tmp_path: Path):
    """start(process) registers what the test starts; all of it is stopped at the end."""
    things: list = []
    yield lambda thing: things.append(thing) or thing
    for thing in reversed(things):
        (thing.close if hasattr(thing, "close") else thing.stop)()


def answers(monitor: CliSubscriber, region: str = "a") -> list[dict]:
    topic = PC.central_topic(region, "overflow/answer")
    return [json.loads(p) for t, p in monitor.messages() if t == topic]


def hold_requests(monitor: CliSubscriber) -> list[dict]:
    return [json.loads(p) for t, p in monitor.messages() if t == PC.central_topic("b", "hold/request")]


def setup(tmp_path: Path, broker: CentralBroker, started, names=("c1",), **target):
    """Region b (TargetRegion(**target)), the monitor, central instances sharing one database
    (subscribed: the retained summary comes right after the SUBACK, before any request) and
    region a's side. Returns (target, monitor, instances, origin, database)."""
    db = tmp_path / "central.db"
    region_b = started(TargetRegion(broker, **target))
    monitor = started(CliSubscriber(broker, MONITOR_USER, ["recarga/v1/+/central/#"]).start())
    instances = [started(CentralProcess(tmp_path / n, broker, REGION_PORTS, instance=n, database=db).start())
                 for n in names]
    for c in instances:
        c.wait_log("subscribed: serving overflow")
    origin = started(connect_client(broker, "bridge-a", client_id="test-region-a"))
    return region_b, monitor, instances, origin, db


def test_two_instances_answer_each_request_of_a_burst_exactly_once(tmp_path, central_broker, started):
    target, monitor, instances, origin, db = setup(tmp_path, central_broker, started, ("c1", "c2"))
    deadline = time.time() + 20
    sent = dict(overflow_request("a", f"car-{i}", deadline) for i in range(40))
    for payload in sent.values():
        origin.publish(PC.central_topic("a", "overflow/request"), payload, timeout=None)
    wait_until(lambda: len(answers(monitor)) >= len(sent), 20, "40 answers")
    time.sleep(0.5)  # a duplicate would show up now
    got = Counter(a["xid"] for a in answers(monitor))
    assert got == Counter({xid: 1 for xid in sent})
    assert all(a["ok"] and a["region"] == "b" and a["broker"] == {"host": "127.0.0.1", "port": 18832}
               for a in answers(monitor))
    assert Counter(h["xid"] for h in hold_requests(monitor)) == Counter({xid: 1 for xid in sent})
    # both instances did part of the work (shared subscription)
    assert all(c.log_text().count("asking b for station") > 0 for c in instances), \
        [c.log_text()[-2000:] for c in instances]
    store = Store(db)
    try:
        holds = store.holds()
    finally:
        store.close()
    assert sorted(h.xid for h in holds) == sorted(sent) and len({h.reservation for h in holds}) == 40
    assert len(target.engine.reservations) == 40


def test_restarted_central_loses_and_duplicates_no_hold(tmp_path, central_broker, started):
    # answers take 0.1 s each: the kill comes while hold answers wait for central in the broker
    target, monitor, [c1], origin, db = setup(tmp_path, central_broker, started,
                                              delay={f"car-{i}": 0.1 for i in range(30)})
    deadline = time.time() + 25
    sent = dict(overflow_request("a", f"car-{i}", deadline) for i in range(30))
    for payload in sent.values():
        origin.publish(PC.central_topic("a", "overflow/request"), payload, timeout=None)
    wait_until(lambda: len(answers(monitor)) >= 5, 15, "the first answers")
    c1.kill()  # in the middle of the burst: some decided, some published, some not acknowledged
    done_before = {a["xid"] for a in answers(monitor)}
    assert len(done_before) < len(sent)
    time.sleep(1)  # hold answers arrive while no central is there
    c1.start()
    wait_until(lambda: {a["xid"] for a in answers(monitor)} == set(sent), 20, "every request answered")
    time.sleep(0.5)
    # every answer for a request names one and the same reservation (repeats are re-sends)
    by_xid: dict[str, set] = {}
    for a in answers(monitor):
        assert a["ok"], a
        by_xid.setdefault(a["xid"], set()).add(a["reservation"]["id"])
    assert all(len(ids) == 1 for ids in by_xid.values()), by_xid
    store = Store(db)
    try:
        holds = store.holds()
    finally:
        store.close()
    assert sorted(h.xid for h in holds) == sorted(sent)
    assert {h.reservation for h in holds} == {ids.pop() for ids in by_xid.values()}
    # the target region holds exactly one slot per request, the ones central recorded
    assert sorted(r.id for r in target.engine.reservations.values()) == sorted(h.reservation for h in holds)


def test_messages_past_their_deadline_are_ignored_and_leave_no_hold(tmp_path, central_broker, started):
    target, monitor, [c1], origin, db = setup(tmp_path, central_broker, started, delay={"car-slow": 2.5})
    now = time.time()
    # 1. a request that arrives past its deadline: no hold request, no answer
    stale, payload = overflow_request("a", "car-stale", now - 1)
    origin.publish(PC.central_topic("a", "overflow/request"), payload)
    # 2. a hold answer that comes back too late: central releases that hold
    slow, payload = overflow_request("a", "car-slow", now + 2)
    origin.publish(PC.central_topic("a", "overflow/request"), payload)
    # control: an ordinary request after both is answered
    fine, payload = overflow_request("a", "car-fine", now + 10)
    origin.publish(PC.central_topic("a", "overflow/request"), payload)
    wait_until(lambda: fine in {a["xid"] for a in answers(monitor)}, 10, "the control's answer")
    wait_until(lambda: any(h["op"] == "release" and h["xid"] == slow for h in hold_requests(monitor)), 10,
               "the late hold released")
    wait_until(lambda: not target.active("car-slow"), 5, "the late hold gone at the target")
    assert {a["xid"] for a in answers(monitor)} == {fine}
    assert stale not in {h["xid"] for h in hold_requests(monitor)}
    store = Store(db)
    try:
        assert store.request(stale) is None and store.hold(stale) is None
        assert store.hold(slow) is None and store.request(slow).state == "expired"
        assert store.hold(fine).state == "held"
    finally:
        store.close()
    assert "past its deadline, ignored" in c1.log_text() and "late, ignored; releasing it" in c1.log_text()

"""The central service as real processes (`python -m central.cli run`) on a real central
broker (auth and ACL on): two instances under a burst, a restart after SIGKILL, messages
past their deadline.

The regions' sides are played on the central broker itself by clients logged in as the
regions' bridge users (what the Mosquitto bridge does, tests/test_bridge.py proves the
bridge): region "a" asks, region "b" answers hold requests with the real gateway engine
through gateway.overflow.answer_hold. Answers are counted on the wire by mosquitto_sub
as a separate monitoring user.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from brokers import CliSubscriber, connect_client
from central.localnet import CENTRAL_USER, CentralBroker, central_passwords
from central.store import Store
from gateway import protocol as P
from gateway.engine import Engine, EngineConfig
from gateway.model import SlotMeta, StationMeta
from gateway.overflow import EngineHoldPort, answer_hold, summary_stations

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
REGIONS = ("a", "b")
MONITOR = {"monitor": [("read", "recarga/v1/+/central/#")]}
NEED = {"lat": 52.52, "lon": 13.40, "soc": 0.3, "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
        "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8}


class CentralProcess:
    """One central instance as a child process; stopped by its pid."""

    def __init__(self, root: Path, instance: str, broker: CentralBroker, database: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / f"{instance}.log"
        (root / "central.password").write_text(broker.password(CENTRAL_USER))
        self.config = root / f"{instance}.toml"
        self.config.write_text(f"""\
instance = "{instance}"
database = "{database}"
tick_s = 0.2
synchronous = "NORMAL"
[broker]
host = "{broker.host}"
port = {broker.port}
username = "{CENTRAL_USER}"
password_file = "central.password"
session_expiry_s = 60
reconnect_min_s = 1
reconnect_max_s = 2
[regions.a]
broker_host = "127.0.0.1"
broker_port = 18831
[regions.b]
broker_host = "127.0.0.1"
broker_port = 18832
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> CentralProcess:
        self._out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "central.cli", "run", "--config", str(self.config)],
                                     cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, line: str, count: int = 1, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(line) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"central exited with {self.proc.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} in central's log within {timeout} s:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_out", None):
            self._out.close()


class TargetRegion:
    """Region b's gateway side: the real engine answers central's hold requests (one
    thread, as the gateway's engine thread), and its summary is published retained."""

    def __init__(self, broker: CentralBroker, stations: int = 40, delay: dict[str, float] | None = None):
        metas = [StationMeta(f"b-{i}", 52.52 + i * 0.002, 13.40, (SlotMeta(150.0, True), SlotMeta(150.0, True)))
                 for i in range(stations)]
        now = time.time()
        self.engine = Engine(EngineConfig(region="b", hold_s=120), metas)
        for m in metas:
            self.engine.station_online(m.id, P.online_message(True), now)
            self.engine.station_status(m.id, P.encode(P.station_status(["free", "free"])), now)
        self.port = EngineHoldPort(self.engine)
        self.delay = delay or {}  # car -> seconds its answer takes to leave (a slow link)
        self.client = connect_client(broker, "bridge-b", client_id="test-region-b")
        self.inbox: queue.Queue = queue.Queue()
        self.client.paho.on_message = lambda c, u, m: self.inbox.put((m.topic, m.payload))
        self.client.subscribe(P.central_topic("b", "hold/request"))
        busy = {m.id: [now, now] for m in metas}
        for msg in P.summary_messages("b", summary_stations(metas, busy, now), now):
            self.client.publish(P.summary_topic("b", msg["shard"]), P.encode(msg), retain=True)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                topic, payload = self.inbox.get(timeout=0.1)
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
                             passwords={**central_passwords(REGIONS), "monitor": "monitor-secret"}, extra_acl=MONITOR)
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


def overflow(car: str, deadline: float) -> tuple[str, bytes]:
    xid = P.overflow_id("a", car, f"{car}-0-1")
    return xid, P.encode(P.overflow_request(xid, "a", car, deadline, NEED))


def answers(monitor: CliSubscriber, region: str = "a") -> list[dict]:
    topic = P.central_topic(region, "overflow/answer")
    return [json.loads(p) for t, p in monitor.messages() if t == topic]


def hold_requests(monitor: CliSubscriber) -> list[dict]:
    return [json.loads(p) for t, p in monitor.messages() if t == P.central_topic("b", "hold/request")]


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def setup(tmp_path: Path, broker: CentralBroker, started, names=("c1",), **target):
    """Region b (TargetRegion(**target)), the monitor, central instances sharing one database
    (subscribed: the retained summary comes right after the SUBACK, before any request) and
    region a's side. Returns (target, monitor, instances, origin, database)."""
    db = tmp_path / "central.db"
    region_b = started(TargetRegion(broker, **target))
    monitor = started(CliSubscriber(broker, "monitor", ["recarga/v1/+/central/#"]).start())
    instances = [started(CentralProcess(tmp_path / n, n, broker, db).start()) for n in names]
    for c in instances:
        c.wait_for("subscribed: serving overflow")
    origin = started(connect_client(broker, "bridge-a", client_id="test-region-a"))
    return region_b, monitor, instances, origin, db


def test_two_instances_answer_each_request_of_a_burst_exactly_once(tmp_path, central_broker, started):
    target, monitor, instances, origin, db = setup(tmp_path, central_broker, started, ("c1", "c2"))
    deadline = time.time() + 20
    sent = dict(overflow(f"car-{i}", deadline) for i in range(40))
    for payload in sent.values():
        origin.paho.publish(P.central_topic("a", "overflow/request"), payload, qos=1)
    wait_until(lambda: len(answers(monitor)) >= len(sent), 20, "40 answers")
    time.sleep(0.5)  # a duplicate would show up now
    got = Counter(a["xid"] for a in answers(monitor))
    assert got == Counter({xid: 1 for xid in sent})
    assert all(a["ok"] and a["region"] == "b" and a["broker"] == {"host": "127.0.0.1", "port": 18832}
               for a in answers(monitor))
    assert Counter(h["xid"] for h in hold_requests(monitor)) == Counter({xid: 1 for xid in sent})
    # both instances did part of the work (shared subscription)
    assert all(c.text().count("asking b for station") > 0 for c in instances), [c.text()[-2000:] for c in instances]
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
    sent = dict(overflow(f"car-{i}", deadline) for i in range(30))
    for payload in sent.values():
        origin.paho.publish(P.central_topic("a", "overflow/request"), payload, qos=1)
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
    stale, payload = overflow("car-stale", now - 1)
    origin.publish(P.central_topic("a", "overflow/request"), payload)
    # 2. a hold answer that comes back too late: central releases that hold
    slow, payload = overflow("car-slow", now + 2)
    origin.publish(P.central_topic("a", "overflow/request"), payload)
    # control: an ordinary request after both is answered
    fine, payload = overflow("car-fine", now + 10)
    origin.publish(P.central_topic("a", "overflow/request"), payload)
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
    assert "past its deadline, ignored" in c1.text() and "late, ignored; releasing it" in c1.text()

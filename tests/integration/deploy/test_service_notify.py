"""The gateway and central as Type=notify services: the real processes, started with
NOTIFY_SOCKET pointing at a unix datagram socket the test binds in systemd's place
(harness.systemd.NotifySocket) and WATCHDOG_USEC = 2 s, as systemd starts them.

READY=1 comes once the service is connected and subscribed; WATCHDOG=1 comes from the loop
that does the work, at half the watchdog period: it goes on while the broker is unreachable
(the loop runs), stops while that loop is blocked on a database another process holds locked
(the process lives, its other threads run: a pet from a thread of its own would go on), and
comes back when the loop does. SIGTERM brings STOPPING=1.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from harness.broker import Broker, free_port
from harness.central import CentralBroker, CentralProcess
from harness.clients import connect_client
from harness.services import GatewayProcess, ServiceProcess
from harness.systemd import NotifySocket
from harness.wait import wait_until
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration

REGION = "test"
WATCHDOG_S = 2.0  # WATCHDOG_USEC: pets every 1 s
STATION = StationMeta("st-1", 52.52, 13.40, (SlotMeta(22.0, False),) * 2, operator="op", price_per_kwh=0.45)
PASSWORDS = {"gateway": "gw-pw", "car-a": "car-a-pw", "st-1": "st-1-pw"}


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    with NotifySocket() as sock:
        yield sock


def supervised(service: ServiceProcess, notify: NotifySocket) -> ServiceProcess:
    """The service's environment as systemd sets it for Type=notify with WatchdogSec=2."""
    assert service.env is not None
    service.env.update(notify.environment(WATCHDOG_S))
    return service


def pet_gaps(notify: NotifySocket) -> list[float]:
    """Seconds between successive pets."""
    return [b - a for a, b in pairwise(notify.times("WATCHDOG", "1"))]


def wait_for_silence(notify: NotifySocket, service: ServiceProcess, seconds: float, timeout: float) -> None:
    """Until no pet has come for `seconds` (longer than the watchdog period), the process alive."""
    def silent() -> bool:
        pets = notify.times("WATCHDOG", "1")
        return bool(pets) and time.monotonic() - pets[-1] > seconds
    wait_until(silent, timeout, f"{seconds:g} s without a watchdog pet", service.alive)


def held_locked(database: Path) -> sqlite3.Connection:
    """Another process's write lock on the service's database (BEGIN EXCLUSIVE): the service's
    next write waits for it (its busy_timeout), and with it the loop that writes."""
    db = sqlite3.connect(database, isolation_level=None, timeout=10)
    db.execute("BEGIN EXCLUSIVE")
    return db


def test_gateway_is_ready_once_connected_and_pets_from_its_loop(tmp_path: Path, notify: NotifySocket):
    port = free_port()
    broker = Broker.generate(tmp_path / "broker", region=REGION, cars=["car-a"], stations=[STATION.id],
                             passwords=PASSWORDS, port=port)
    gw = supervised(GatewayProcess(tmp_path / "gw", REGION, port, "gateway", PASSWORDS["gateway"], [STATION],
                                   tick_s=0.2), notify)
    try:
        gw.start()
        # the broker is not there yet: the loop runs (reconnecting with backoff) and pets, not ready
        notify.wait_for("WATCHDOG", "1", count=3, alive=gw.alive)
        gw.wait_log("cannot connect to broker")
        assert notify.times("READY") == []
        broker.start()
        notify.wait_for("READY", "1", alive=gw.alive)
        gw.wait_connected()
        assert [f["STATUS"] for _, f in notify.received() if f.get("READY") == "1"] == \
            [f"serving region {REGION} on 127.0.0.1:{port}"]
        n = len(notify.times("WATCHDOG", "1"))
        notify.wait_for("WATCHDOG", "1", count=n + 3, alive=gw.alive)
        # systemd would not have fired: no two pets further apart than the watchdog period
        assert max(pet_gaps(notify)) < WATCHDOG_S, pet_gaps(notify)

        # the loop blocked on the database (a station's status to store, the lock held elsewhere)
        station = connect_client(broker, STATION.id)
        try:
            lock = held_locked(gw.db)
            try:
                blocked_at = time.monotonic()
                station.publish(D.station_topic(REGION, STATION.id, "status"),
                                W.encode(D.station_status(["occupied", "free"])), retain=True)
                wait_for_silence(notify, gw, WATCHDOG_S + 0.5, timeout=4.5)  # under the 5 s busy_timeout
                # the process is alive and the broker connection open: only the loop is stuck
                assert gw.running
            finally:
                lock.rollback()
                lock.close()
            resumed = notify.wait_for("WATCHDOG", "1", count=len(notify.times("WATCHDOG", "1")) + 1,
                                      alive=gw.alive)
            assert resumed - blocked_at > WATCHDOG_S
            assert "database write failed" not in gw.log_text()
        finally:
            station.close()

        gw.stop()
        assert gw.returncode == 0, gw.log_text()[-2000:]
        assert notify.times("STOPPING", "1"), notify.received()[-5:]
    finally:
        gw.stop()
        broker.stop()


def test_gateway_without_notify_socket_runs_as_before(tmp_path: Path, broker: Broker):
    """Outside systemd nothing changes: the same command connects and serves."""
    gw = GatewayProcess(tmp_path / "gw", broker.region, broker.port, "gateway", broker.password("gateway"), [],
                        tick_s=0.2)
    assert gw.env is not None and "NOTIFY_SOCKET" not in gw.env
    try:
        gw.start().wait_connected()
        assert gw.running
    finally:
        gw.stop()
    assert gw.returncode == 0


def test_central_is_ready_once_subscribed_and_pets_from_its_worker(tmp_path: Path, notify: NotifySocket):
    broker = CentralBroker.launch(tmp_path / "central-broker", regions=["a", "b"])
    central = supervised(CentralProcess(tmp_path / "central", broker, {"a": 1883, "b": 1884}), notify)
    try:
        central.start()
        notify.wait_for("READY", "1", alive=central.alive)
        central.wait_log("subscribed: serving overflow")
        notify.wait_for("WATCHDOG", "1", count=3, alive=central.alive)
        assert max(pet_gaps(notify)) < WATCHDOG_S, pet_gaps(notify)

        # the worker's batch (every tick) waits for the database's write lock: the pets stop
        lock = held_locked(tmp_path / "central" / "central.db")
        try:
            blocked_at = time.monotonic()
            wait_for_silence(notify, central, WATCHDOG_S + 0.5, timeout=8)  # under the 10 s busy_timeout
            assert central.running
        finally:
            lock.rollback()
            lock.close()
        resumed = notify.wait_for("WATCHDOG", "1", count=len(notify.times("WATCHDOG", "1")) + 1,
                                  alive=central.alive)
        assert resumed - blocked_at > WATCHDOG_S
        assert "database write failed" not in central.log_text()

        central.stop()
        assert central.returncode == 0, central.log_text()[-2000:]
        assert notify.times("STOPPING", "1"), notify.received()[-5:]
    finally:
        central.stop()
        broker.stop()

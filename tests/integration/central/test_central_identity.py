"""The central broker's identities: a region's bridge user can neither take a central
instance's client id nor join central's shared subscriptions (overflow requests, hold
answers, hold events), and no request is lost to it. Real Mosquitto and the real
`recarga-central run`."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from harness.central import (
    CENTRAL_USER,
    MONITOR_ACL,
    MONITOR_USER,
    CentralBroker,
    central_passwords,
    overflow_request,
)
from harness.clients import connect_client
from harness.wait import wait_until
from recarga.core.protocol import central as PC
from tests.integration.central.test_central_service import answers, setup

THIEF = "bridge-c"  # a third region's bridge: regions a and b are played by the test


@pytest.fixture
def central_broker(tmp_path: Path):
    regions = ("a", "b", "c")
    b = CentralBroker.launch(tmp_path / "broker", regions=regions,
                             passwords={**central_passwords(regions), MONITOR_USER: "monitor-secret"},
                             extra_acl=MONITOR_ACL)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def started():
    """started(thing) registers what the test starts; all of it is stopped at the end."""
    things: list = []
    yield lambda thing: things.append(thing) or thing
    for thing in reversed(things):
        (thing.close if hasattr(thing, "close") else thing.stop)()


def burst(origin, monitor, n: int = 20) -> None:
    """n overflow requests from region a; each is answered exactly once, successfully."""
    deadline = time.time() + 20
    sent = dict(overflow_request("a", f"car-{i}", deadline) for i in range(n))
    for payload in sent.values():
        origin.publish(PC.central_topic("a", "overflow/request"), payload, timeout=None)
    wait_until(lambda: len(answers(monitor)) >= n, 20, f"{n} answers")
    assert Counter(a["xid"] for a in answers(monitor)) == Counter({xid: 1 for xid in sent})
    assert all(a["ok"] for a in answers(monitor)), answers(monitor)


def test_a_bridge_user_cannot_take_a_central_instances_client_id(tmp_path, central_broker, started):
    _, monitor, [c1], origin, _ = setup(tmp_path, central_broker, started)
    # bridge c's credentials with each client id a central instance has had
    for cid in (CENTRAL_USER, "recarga-central-c1"):
        connect_client(central_broker, THIEF, client_id=cid).close()
    burst(origin, monitor)
    log = central_broker.log_text()
    assert f"Client {CENTRAL_USER} already connected" not in log
    assert "Client recarga-central-c1 already connected" not in log
    assert c1.log_text().count("subscribed: serving overflow") == 1  # never reconnected


def test_only_central_instances_may_join_centrals_shared_subscriptions(tmp_path, central_broker, started):
    _, monitor, _, origin, _ = setup(tmp_path, central_broker, started)
    thief = started(connect_client(central_broker, THIEF))
    # the shared subscriptions central's instances serve: requests, hold answers, hold events
    granted = {f: thief.subscribe(f) for f in PC.central_subscriptions() if f.startswith("$share/")}
    assert len(granted) == 3
    burst(origin, monitor)  # every request (and its hold answer) reached central, none the thief
    assert {f: [c.value for c in codes] for f, codes in granted.items()} == {f: [0x80] for f in granted}

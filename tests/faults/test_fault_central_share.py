"""A region's bridge credential in the wrong hands on the central broker, while a full
region's cars overflow: three regions bridged to central (harness.regions.RegionsNet, TLS,
real Mosquitto, gateways and `recarga-central run`). Region c is down and its bridge user
joins central's shared subscriptions (overflow requests, hold answers, hold events); the
broker refuses it, so central answers every overflow request of region test once, each car
is sent to region b, and both gateways' databases pass the invariants."""
from __future__ import annotations

from collections import Counter

import pytest
from invariants import Ledger, assert_invariants

from harness.broker import REGION
from harness.central import MONITOR_USER
from harness.clients import CliSubscriber, connect_client
from harness.region import reserve_msg
from harness.regions import RegionsNet, berlin_split
from harness.wait import wait_until
from recarga.core.bridge import bridge_user
from recarga.core.protocol import central as PC
from tests.integration.central.test_central_service import answers

pytestmark = pytest.mark.integration

CARS = [f"o{i}" for i in range(8)]


def test_a_bridge_user_cannot_take_a_share_of_centrals_requests(tmp_path):
    regions = (REGION, "b", "c")  # test and c full, b free: every car goes to b
    net = RegionsNet(tmp_path, berlin_split(regions, 6), CARS, states={REGION: "occupied", "c": "occupied"},
                     overflow="answer_within_s = 5\n")
    monitor = None
    try:
        net.start()
        net.wait_summary("b", lambda st: len(st) == 6 and all(g.free for s in st for g in s.groups))
        net.gateways["c"].stop()
        net.brokers["c"].stop()  # region c is down; whoever holds its bridge password is not
        monitor = CliSubscriber(net.central_broker, MONITOR_USER, ["recarga/v1/+/central/#"]).start()
        thief = connect_client(net.central_broker, bridge_user("c"))
        net.clients.append(thief)
        granted = {f: thief.subscribe(f) for f in PC.central_subscriptions() if f.startswith("$share/")}
        ledger = Ledger()
        for car in CARS:
            ledger.car(net.client(REGION, car, client_id=car, clean_session=False))
        ledger.statuses.update({m.id: ["occupied"] * len(m.slots) for m in net.stations[REGION]})
        for car in CARS:
            ledger.send(car, reserve_msg(car, "q1"), "q1")
        wait_until(lambda: ledger.answered() == len(CARS), 20,
                   lambda: f"an answer for every car ({ledger.answered()} of {len(CARS)})",
                   net.gateways[REGION].alive, every=0.1)
        sent_to = {car: ledger.replies(car, "q1")[0].get("region") for car in CARS}
        assert sent_to == {car: "b" for car in CARS}, [ledger.replies(c, "q1")[0] for c in CARS]
        got = answers(monitor, REGION)
        assert len(got) == len(CARS) and len(Counter(a["xid"] for a in got)) == len(CARS), got  # once each
        assert thief.messages() == []
        assert {f: [c.value for c in codes] for f, codes in granted.items()} == {f: [0x80] for f in granted}
        assert_invariants(net.gateways[REGION].db, ledger, elsewhere={"b": net.gateways["b"].db})
    finally:
        if monitor is not None:
            monitor.stop()
        net.stop()

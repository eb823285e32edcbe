"""A logged-in device that connects with another client's id: the broker binds client ids to
user names, so it can neither push the gateway off the broker nor wipe another car's
stored session."""
from __future__ import annotations

import pytest

from harness.broker import REGION
from harness.clients import MqttClient
from harness.region import reserve_msg, station_set
from harness.wait import wait_until

pytestmark = pytest.mark.integration


def impostor(s, user: str, client_id: str) -> MqttClient:
    """`user`'s own credentials, someone else's client id, a clean session."""
    c = MqttClient(s.region.broker, user, s.region.passwords[user], client_id=client_id, clean_session=True)
    s.region.clients.append(c)
    try:
        c.connect()
    except ConnectionRefusedError:
        pass  # refused outright is as good as bound to its own id
    return c


def test_a_car_with_the_gateways_client_id_cannot_push_it_off(scenario):
    s = scenario(["car-a", "car-b"], station_set(5, 2))
    s.car("car-b")
    impostor(s, "car-a", f"recarga-gateway-{REGION}")
    for i in range(10):
        s.ledger.send("car-b", reserve_msg("car-b", f"q{i}"), f"q{i}")
    wait_until(lambda: s.ledger.answered() == 10, 15, lambda: f"car-b's 10 answers ({s.ledger.answered()})",
               s.gw.alive, every=0.1)
    assert "disconnected from broker" not in s.gw.log_text()
    s.check()


def test_a_car_with_another_cars_client_id_cannot_wipe_its_session(scenario):
    s = scenario(["car-a", "car-b"], station_set(1, 1), hold_s=1)
    car_b = s.car("car-b")
    held = s.ledger.ask("car-b", reserve_msg("car-b", "q1"), "q1")["reservation"]
    car_b.close()  # away: its persistent session keeps what the gateway sends it
    wait_until(lambda: s.region.reservations()[0]["state"] == "expired", 10, "the hold lapsed", s.gw.alive)
    impostor(s, "car-a", "car-b").close()
    car_b = s.car("car-b")  # back, same client id: the queued expired event arrives
    car_b.wait(lambda: any(m.get("event") == "expired" for m in s.ledger.messages("car-b")), 5,
               f"the expired event for {held['id']}")
    s.check()

"""The gateway killed (SIGKILL) in the middle of a burst of requests, twice: while cars
reserve, and while they confirm. Nothing the broker acknowledged is lost, nothing is booked
twice, every car's answer is the stored one."""
from __future__ import annotations

import pytest

from harness.region import reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration


def kill_mid_burst(s, sent: int) -> None:
    """SIGKILL the gateway once a few of `sent` requests are answered, then start it again."""
    before = s.ledger.answered()
    wait_until(lambda: s.ledger.answered() > before, 20, "the first answers of the burst", s.gw.alive,
               every=0.002)
    s.gw.kill()
    assert s.ledger.answered() < before + sent, "the burst finished before the kill; make it larger"
    s.gw.start().wait_connected()
    wait_until(lambda: s.ledger.answered() == len(s.ledger.sent), 30,
               lambda: f"an answer to every request ({s.ledger.answered()} of {len(s.ledger.sent)})",
               s.gw.alive, every=0.1)


def test_gateway_killed_mid_burst_of_reserves_and_of_confirms(scenario):
    cars = [f"k{i:03d}" for i in range(100)]
    s = scenario(cars, station_set(40, 2), synchronous="FULL")  # 80 slots for 100 cars: some refused
    for c in cars:
        s.car(c)
    for c in cars:
        s.ledger.send(c, reserve_msg(c, "q1"), "q1")
    kill_mid_burst(s, len(cars))
    held = {c: r[0]["reservation"]["id"] for c in cars if (r := s.ledger.replies(c, "q1"))[0]["ok"]}
    assert len(held) == 80
    for c, rid in held.items():
        s.ledger.send(c, W.encode(D.reservation_request("confirm", "q2", c, rid)), "q2")
    kill_mid_burst(s, len(held))
    snap = s.check()
    assert sorted(r.id for r in snap.reservations if r.state == "confirmed") == sorted(held.values())

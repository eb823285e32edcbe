"""The gateway killed (SIGKILL) in the middle of a burst of requests, twice: while cars
reserve, and while they confirm. Nothing the broker acknowledged is lost, nothing is booked
twice, every car's answer is the stored one."""
from __future__ import annotations

import threading
import time

import pytest

from harness.region import reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration


def kill_mid_burst(s, burst: list[tuple[str, bytes, str]]) -> None:
    """Send `burst` ((car, payload, rid) each) spread over about a second, SIGKILL the gateway
    once the first of them are answered (requests are still arriving then), start it again
    and wait for an answer to every request."""
    before = s.ledger.answered()

    def send() -> None:
        for car, payload, rid in burst:
            s.ledger.send(car, payload, rid)
            time.sleep(0.008)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_until(lambda: s.ledger.answered() > before, 20, "the first answers of the burst", s.gw.alive,
                   every=0.002)
        s.gw.kill()
        answered = s.ledger.answered()
    finally:
        sender.join()
    assert answered < before + len(burst), "the burst finished before the kill; make it longer"
    s.gw.start().wait_connected()
    wait_until(lambda: s.ledger.answered() == len(s.ledger.sent), 30,
               lambda: f"an answer to every request ({s.ledger.answered()} of {len(s.ledger.sent)})",
               s.gw.alive, every=0.1)


def test_gateway_killed_mid_burst_of_reserves_and_of_confirms(scenario):
    cars = [f"k{i:03d}" for i in range(100)]
    s = scenario(cars, station_set(40, 2), synchronous="FULL")  # 80 slots for 100 cars: some refused
    for c in cars:
        s.car(c)
    kill_mid_burst(s, [(c, reserve_msg(c, "q1"), "q1") for c in cars])
    held = {c: r[0]["reservation"]["id"] for c in cars if (r := s.ledger.replies(c, "q1"))[0]["ok"]}
    assert len(held) == 80
    kill_mid_burst(s, [(c, W.encode(D.reservation_request("confirm", "q2", c, rid)), "q2")
                       for c, rid in held.items()])
    snap = s.check()
    assert sorted(r.id for r in snap.reservations if r.state == "confirmed") == sorted(held.values())

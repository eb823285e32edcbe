"""A car flooding the gateway (GatewayService without a broker, tests/gateway/conftest.py):
the flood is refused with rate_limited, acknowledged and not stored; other cars are served;
the log gets a line and a summary, not a line per request."""
from __future__ import annotations

import json
import logging

from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway.floodlog import FLOOD_WINDOW_S
from recarga.gateway.ratelimit import RateLimit

T0 = 1_800_000_000.0
ONLINE = D.station_topic("t", "s1", "online")
STATUS = D.station_topic("t", "s1", "status")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def flood(car: str, i: int) -> bytes:
    """Every other request invalid, the others refused (a cancel of no reservation)."""
    if i % 2:
        return b'{"v":1,"op":"cancel","rid":"f' + str(i).encode() + b'"'  # cut short
    return W.encode(D.reservation_request("cancel", f"f{i}", car, "r-none"))


def replies(events: list, car: str) -> list[dict]:
    topic = D.car_topic("t", car, "reply")
    return [json.loads(e[1]) for e in events if isinstance(e, tuple) and e[0] == topic]


def test_2000_requests_in_2_s_from_one_car_are_rate_limited_and_another_car_is_served(make_service, message,
                                                                                        caplog):
    caplog.set_level(logging.INFO, logger="recarga")
    svc = make_service()  # the default limit
    svc.clock = clock = Clock(T0)
    assert svc.handle([message(ONLINE, W.online_message(True), 1),
                       message(STATUS, W.encode(D.station_status(["free"])), 2)])
    reserve = W.encode(D.reserve_request("q1", "c2", lat=52.521, lon=13.401, soc=0.2, battery_kwh=58,
                                         consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=0, target_soc=0.8))
    mid = 2
    for b in range(20):  # 2,000 requests, 100 every 0.1 s
        batch = []
        for i in range(100 * b, 100 * (b + 1)):
            mid += 1
            batch.append(message(D.car_topic("t", "flood", "request"), flood("flood", i), mid))
        if b == 10:  # another car asks in the middle of the flood
            mid += 1
            batch.insert(50, message(D.car_topic("t", "c2", "request"), reserve, mid))
        assert svc.handle(batch)
        clock.t += 0.1
    [held] = replies(svc.client.events, "c2")
    confirm = W.encode(D.reservation_request("confirm", "q2", "c2", held["reservation"]["id"]))
    assert svc.handle([message(D.car_topic("t", "c2", "request"), confirm, mid + 1)])
    [_, confirmed] = replies(svc.client.events, "c2")
    assert held["ok"] and confirmed["ok"] and confirmed["reservation"]["state"] == "confirmed"

    # every message acknowledged
    assert sum(isinstance(e, str) and e.startswith("ack ") for e in svc.client.events) == mid + 1
    answers = replies(svc.client.events, "flood")
    limited = [a for a in answers if not a["ok"] and a["error"]["code"] == D.RATE_LIMITED]
    assert limited and all(a["error"]["retry_after"] >= 1 for a in limited)
    burst = RateLimit().burst
    assert len(answers) == burst + 1  # the burst answered as ever, then one refusal per refusal period
    # nothing kept of the flood past the burst: no reply of it stored for the request memory
    assert len([r for r in svc.store.requests(0) if r.car == "flood"]) == burst // 2  # its refused cancels
    assert [r.car for r in svc.store.active()] == ["c2"]

    clock.t = T0 + 2 + FLOOD_WINDOW_S
    assert svc.handle([])  # the tick writes the flood's summary
    flood_lines = [r.getMessage() for r in caplog.records
                   if r.levelno >= logging.WARNING and "car flood" in r.getMessage()]
    assert len(flood_lines) == 2, flood_lines  # its first refusal and the summary
    assert flood_lines[1] == (f"car flood: 2,000 requests refused (rate_limited {2000 - burst:,}, "
                              f"invalid {burst // 2}, unknown_reservation {burst // 2}) in the last 10 s")

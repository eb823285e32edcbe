"""A car flooding its request topic, against the real gateway process and a real Mosquitto:
refused with rate_limited and retry_after, nothing of it kept, another car served, and the
gateway's log a line and a summary rather than a line per request."""
from __future__ import annotations

import json
import re
import sqlite3

import pytest

from harness.broker import REGION
from harness.region import ask, reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway.ratelimit import RateLimit

pytestmark = pytest.mark.integration

FLOOD = 2000
SUMMARY = re.compile(r"car flood: ([\d,]+) requests refused \(([^)]*)\) in the last 10 s")


def flood_payload(i: int) -> bytes:
    """Every other request cut short (bad_json), the others a cancel of no reservation."""
    if i % 2:
        return b'{"v":1,"op":"cancel","rid":"f' + str(i).encode() + b'"'
    return W.encode(D.reservation_request("cancel", f"f{i}", "flood", "r-none"))


def test_a_flooding_car_is_rate_limited_and_another_car_is_served(region_factory):
    region = region_factory(["flood", "car-b"], station_set(2, 1))
    flood, other = region.client("flood"), region.client("car-b")
    flood.subscribe(D.car_topic(REGION, "flood", "reply"))
    other.subscribe(D.car_topic(REGION, "car-b", "reply"))
    topic = D.car_topic(REGION, "flood", "request")
    sent = [flood.paho.publish(topic, flood_payload(i), qos=1) for i in range(FLOOD // 2)]
    reply = ask(other, reserve_msg("car-b", "q1"))  # in the middle of the flood
    sent += [flood.paho.publish(topic, flood_payload(i), qos=1) for i in range(FLOOD // 2, FLOOD)]
    for info in sent:
        flood.wait_published(info, topic, 30)
    assert reply["ok"] and reply["reservation"]["state"] == "held"
    confirm = ask(other, W.encode(D.reservation_request("confirm", "q2", "car-b", reply["reservation"]["id"])))
    assert confirm["ok"] and confirm["reservation"]["state"] == "confirmed"

    # every refusal accounted for in the log's summaries, once the flood's windows have ended
    def summarised() -> int:
        return sum(int(m.group(1).replace(",", "")) for m in SUMMARY.finditer(region.gw.log_text()))

    wait_until(lambda: summarised() >= FLOOD, 40, lambda: f"the flood's summaries ({summarised()} of {FLOOD})",
               region.gw.alive)
    log = region.gw.log_text()
    flood_lines = [line for line in log.splitlines() if "car flood" in line]
    assert len(flood_lines) <= 4, flood_lines  # its first refusal and a summary per 10 s window
    assert summarised() == FLOOD
    assert len([line for line in log.splitlines() if " WARNING " in line]) <= 6, log

    burst = RateLimit().burst
    answers = [json.loads(m.payload) for m in flood.messages(D.car_topic(REGION, "flood", "reply"))]
    limited = [a for a in answers if not a["ok"] and a["error"]["code"] == D.RATE_LIMITED]
    assert limited and all(isinstance(a["error"]["retry_after"], int) and a["error"]["retry_after"] >= 1
                           for a in limited)
    assert len(answers) <= burst + 4, len(answers)  # a refusal answered once per refusal period
    # the request memory holds the burst's refused cancels only, not a reply per request
    db = sqlite3.connect(f"file:{region.gw.db}?mode=ro", uri=True)
    try:
        kept = db.execute("SELECT count(*) FROM requests WHERE car = 'flood'").fetchone()[0]
    finally:
        db.close()
    assert kept <= burst
    assert [r["car"] for r in region.reservations("--active")] == ["car-b"]

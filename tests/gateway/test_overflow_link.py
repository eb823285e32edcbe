"""recarga/gateway/overflow_link.py: the service's overflow adapter over the real engine, without a
broker: what a batch commits and publishes for forwarded requests, central's answers,
deadlines, the link, central's holds and the summary."""
from __future__ import annotations

import json

import pytest

from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway.engine import Engine, EngineConfig
from recarga.gateway.overflow import OverflowSettings
from recarga.gateway.overflow_link import OverflowLink

NOW = 1_795_000_000.0
NEED = {"lat": 52.52, "lon": 13.40, "soc": 0.3, "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
        "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8}
SETTINGS = OverflowSettings(wait_limit_s=900, answer_within_s=5, summary_min_interval_s=5, summary_refresh_s=60)
REPLY = D.car_topic("a", "car-1", "reply")


def link_with(states: list[str], up: bool = True) -> OverflowLink:
    e = Engine(EngineConfig(region="a"), [StationMeta("st-1", 52.52, 13.40, tuple(SlotMeta(22.0, False) for _ in states))])
    e.station_online("st-1", W.online_message(True), NOW - 10)
    e.station_status("st-1", W.encode(D.station_status(states)), NOW - 10)
    link = OverflowLink(e, SETTINGS)
    handler, _ = link.route(PC.central_topic("a", "link"))
    handler("", b"1" if up else b"0", NOW - 5)
    return link


def reserve(link: OverflowLink, rid: str = "car-1-0-1", now: float = NOW):
    return link.car_message("car-1", W.encode(D.reserve_request(rid, "car-1", **NEED)), now)


def topics(pubs) -> list[str]:
    return [p.topic for p in pubs]


def test_a_full_region_forwards_and_holds_the_reply_until_centrals_answer():
    link = link_with(["occupied"])
    link.step(NOW - 5, [])
    link.outbound([])  # the first summary
    res = reserve(link)
    assert res.request is not None and not [m for m in res.messages if m.topic == REPLY]
    assert link.step(NOW, [res]) == []
    [req] = [p for p in link.outbound([res]) if p.topic == PC.central_topic("a", "overflow/request")]
    xid = PC.parse_overflow_request("a", req.payload).xid
    # the car's redelivered request while central thinks: no reply yet
    again = reserve(link, now=NOW + 1)
    assert again.request is None and not again.messages
    assert link.next_due() == NOW + 5 + 0.01
    held = {"id": "rb", "station": "b-1", "slot": 1, "state": "held", "distance_km": 1.0, "eta": NOW + 200,
            "wait_min": 0.0, "charge_min": 30.0, "energy_kwh": 30.0, "power_kw": 22.0, "price_eur": 15.0,
            "hold_until": NOW + 185}
    handler, _ = link.route(PC.central_topic("a", "overflow/answer"))
    handler("", W.encode(PC.overflow_answer(xid, "a", NOW + 5, region="b", host="127.0.0.1", port=1884,
                                           reservation=held)), NOW + 2)
    [final] = link.step(NOW + 2, [])
    [msg] = final.messages
    assert msg.topic == REPLY and msg.payload["region"] == "b" and msg.payload["broker"]["port"] == 1884
    assert final.request.reply is msg.payload  # committed as the request's record
    assert link.engine.requests[("car-1", "car-1-0-1")].reply == msg.payload


def test_a_long_local_wait_is_forwarded_and_its_local_hold_cancelled_on_an_ok_answer():
    link = link_with(["occupied"])
    link.engine.cfg = EngineConfig(region="a", max_wait_s=7200)  # the occupant's hour: a local offer
    res = reserve(link)
    local = res.request.reply
    assert local["ok"] and res.reservation.wait_s > SETTINGS.wait_limit_s
    [req] = [p for p in link.outbound([res]) if p.topic.endswith("overflow/request")]
    xid = PC.parse_overflow_request("a", req.payload).xid
    held = dict(local["reservation"], id="rb", station="b-1")
    handler, _ = link.route(PC.central_topic("a", "overflow/answer"))
    handler("", W.encode(PC.overflow_answer(xid, "a", NOW + 5, region="b", host="h", port=1, reservation=held)),
            NOW + 1)
    reply, cancel = link.step(NOW + 1, [])
    assert reply.messages[0].payload["region"] == "b"
    assert [r.state for r in cancel.changed] == ["cancelled"] and not link.engine.reservations


def test_no_answer_by_the_deadline_gives_the_local_reply_with_the_reason():
    link = link_with(["occupied"])
    reserve(link)
    assert link.step(NOW + 5, []) == []  # at the deadline: still waiting
    [r] = link.step(NOW + 5.02, [])
    assert r.messages[0].payload["error"]["code"] == W.NO_CAPACITY
    assert r.messages[0].payload["overflow"]["code"] == PC.DEADLINE_PASSED and not link.tracker.pending


def test_link_down_answers_locally_at_once_and_nothing_goes_to_central():
    link = link_with(["occupied"], up=False)
    res = reserve(link)
    [r] = link.step(NOW, [res])
    assert r.messages[0].payload["overflow"]["code"] == PC.OVERFLOW_UNAVAILABLE
    assert link.outbound([res, r]) == []  # no summary either while the link is down


def test_a_region_with_room_answers_itself():
    link = link_with(["free"])
    res = reserve(link)
    assert [m.payload for m in res.messages if m.topic == REPLY] == [res.reply] and res.reply["ok"]
    assert not link.tracker.pending


@pytest.mark.parametrize("wait_s,forwarded", [(SETTINGS.wait_limit_s - 0.5, False), (SETTINGS.wait_limit_s + 0.5, True)])
def test_forwarding_decides_from_the_exact_local_wait(wait_s, forwarded):
    link = link_with(["occupied"])  # occupied since NOW - 10, at the car's position: no drive
    link.engine.cfg = EngineConfig(region="a", expected_session_s=wait_s + 10)
    res = reserve(link)
    assert res.reservation.wait_s == wait_s
    assert res.reply["reservation"]["wait_min"] == 15.0  # the same rounded minutes either way
    assert bool(link.tracker.pending) is forwarded
    assert [m.payload for m in res.messages if m.topic == REPLY] == ([] if forwarded else [res.reply])
    requests = [p for p in link.outbound([res]) if p.topic == PC.central_topic("a", "overflow/request")]
    assert len(requests) == forwarded
    if forwarded:
        assert PC.parse_overflow_request("a", requests[0].payload).beat_s == round(wait_s + res.reservation.charge_s, 1)


def test_centrals_hold_and_release_with_hold_events_after_the_commit():
    link = link_with(["free", "free"])
    xid = PC.overflow_id("o", "car-1", "r1")
    handler, _ = link.route(PC.central_topic("a", "hold/request"))
    handler("", W.encode(PC.hold_request(xid, "o", "a", "car-1", "st-1", NOW + 4, NOW + 184, NEED)), NOW)
    [held] = link.step(NOW, [])
    out = link.outbound([held])
    [ans] = [p for p in out if p.topic == PC.central_topic("a", "hold/answer")]
    r = PC.parse_hold_answer("a", ans.payload).reservation
    assert r["hold_until"] == NOW + 184 and not [m for m in held.messages if m.topic == REPLY]
    handler("", W.encode(PC.hold_release(xid, "a", "car-1", r["id"])), NOW + 1)
    [released] = link.step(NOW + 1, [])
    [ev] = [p for p in link.outbound([released]) if p.topic.endswith("hold/event")]
    assert json.loads(ev.payload)["event"] == "cancelled"
    # late hold request: nothing held
    handler("", W.encode(PC.hold_request(PC.overflow_id("o", "car-2", "r1"), "o", "a", "car-2", None, NOW + 4,
                                        NOW + 184, NEED)), NOW + 4.5)
    assert link.step(NOW + 4.5, []) == [] and not link.engine.reservations


def test_summary_goes_out_when_the_link_is_up_on_change_and_on_refresh():
    link = link_with(["free", "occupied"], up=False)
    link.step(NOW, [])
    assert link.outbound([]) == [] and link.next_due() == float("inf")
    handler, _ = link.route(PC.central_topic("a", "link"))
    handler("", b"1", NOW)
    link.step(NOW, [])
    [shard] = link.outbound([])
    assert shard.retain and shard.topic == PC.summary_topic("a", 0)
    [st] = PC.parse_summary("a", 0, shard.payload).stations
    assert st.groups[0].usable == 2 and st.groups[0].free == 1
    link.step(NOW + 1, [])
    assert link.outbound([]) == [] and link.next_due() == NOW + 60  # nothing changed: the refresh
    res = link.engine.station_status("st-1", W.encode(D.station_status(["free", "free"])), NOW + 2)
    link.step(NOW + 2, [res])
    assert link.outbound([]) == [] and link.next_due() == NOW + 5  # changed: after min_interval
    link.step(NOW + 5, [])
    [shard] = link.outbound([])
    assert PC.parse_summary("a", 0, shard.payload).stations[0].groups[0].free == 2

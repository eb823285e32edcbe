"""recarga/gateway/overflow.py: when to forward, the forwarded requests and their deadlines, the
capacity summary, and central's holds answered through the real engine."""
from __future__ import annotations

import json

from recarga.core.model import CarNeed, Reservation, SlotMeta, StationMeta
from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway.engine import Engine, EngineConfig, reservation_view
from recarga.gateway.overflow import (
    EngineHoldPort,
    LocalOutcome,
    OverflowSettings,
    OverflowTracker,
    SummaryPublisher,
    answer_hold,
    hold_events,
    local_outcome,
    should_forward,
    summary_stations,
)

NOW = 1_795_000_000.0
NEED = CarNeed(52.52, 13.40, 0.3, 58.0, 16.6, 11.0, 100.0, 0.8)
SETTINGS = OverflowSettings(wait_limit_s=900, answer_within_s=5)
RESERVATION = {"id": "r3f9a0c21b7de", "station": "st-9", "slot": 1, "state": "held", "distance_km": 2.41,
               "eta": NOW + 300, "wait_min": 0.0, "charge_min": 19.7, "energy_kwh": 32.9, "power_kw": 100.0,
               "price_eur": 19.41, "hold_until": NOW + 185}


Local = tuple[dict, Reservation | None]  # the engine's reply and the reservation it chose


def local_ok(wait_s: float) -> Local:
    """A local hold 300 s away that waits wait_s and charges 1182 s, with its reply."""
    eta = NOW + 300
    r = Reservation("rlocal", "car-1", "car-1-0-1", "st-1", 1, "held", NOW, NOW + 120, eta, eta + wait_s,
                    eta + wait_s + 1182, eta + wait_s + 600, 2.41, wait_s, 1182.0, 32.9, 19.41, 100.0, NEED)
    return D.ok_reply("car-1-0-1", "reserve", reservation_view(r)), r


LOCAL_FULL: Local = (D.error_reply("car-1-0-1", W.NO_CAPACITY, "every slot is busy", earliest_free=None), None)


# ---------------------------------------------------------------- when to forward

def test_forward_when_nothing_local_or_the_wait_is_too_long():
    assert should_forward(SETTINGS, local_outcome(*LOCAL_FULL, NOW))
    assert should_forward(SETTINGS, local_outcome(*local_ok(1200), NOW))
    assert not should_forward(SETTINGS, local_outcome(*local_ok(600), NOW))
    bad = D.error_reply("car-1-0-1", D.BAD_STATE, "checked in")
    assert local_outcome(bad, None, NOW) is None and not should_forward(SETTINGS, None)
    confirmed = D.ok_reply("car-1-0-2", "confirm", local_ok(1200)[0]["reservation"])
    assert local_outcome(confirmed, None, NOW) is None  # only a reserve's answer
    assert not should_forward(OverflowSettings(enabled=False), local_outcome(*LOCAL_FULL, NOW))
    out = local_outcome(*local_ok(1200), NOW)
    assert out == LocalOutcome(1200.0, 300 + 1200 + 1182, "rlocal")


def test_forwarding_decides_from_the_exact_wait_not_the_replys_rounded_minutes():
    above, below = local_ok(SETTINGS.wait_limit_s + 0.5), local_ok(SETTINGS.wait_limit_s - 0.5)
    assert above[0]["reservation"]["wait_min"] == below[0]["reservation"]["wait_min"] == 15.0
    assert should_forward(SETTINGS, local_outcome(*above, NOW))
    assert not should_forward(SETTINGS, local_outcome(*below, NOW))
    assert local_outcome(*above, NOW).completion_s == 300 + 900.5 + 1182


# ---------------------------------------------------------------- forwarded requests

def tracker(up: bool = True) -> OverflowTracker:
    t = OverflowTracker("a", SETTINGS)
    t.on_link(b"1" if up else b"0", NOW)
    return t


def forward(t: OverflowTracker, local: Local = LOCAL_FULL, rid: str = "car-1-0-1"):
    return t.forward("car-1", rid, NEED, local[0], local_outcome(*local, NOW), NOW)


def answer(xid: str, deadline: float, **outcome) -> bytes:
    return W.encode(PC.overflow_answer(xid, "a", deadline, **outcome))


def test_link_down_answers_locally_at_once():
    step = forward(tracker(up=False))
    assert not step.publish and not tracker(up=False).pending
    [r] = step.replies
    assert r.reply["error"]["code"] == W.NO_CAPACITY and r.reply["overflow"]["code"] == PC.OVERFLOW_UNAVAILABLE


def test_forwarded_request_and_an_ok_answer_send_the_car_elsewhere():
    t = tracker()
    step = forward(t, local_ok(1500))
    [pub] = step.publish
    assert pub.topic == PC.central_topic("a", "overflow/request") and not pub.retain
    req = PC.parse_overflow_request("a", pub.payload)
    assert req.deadline == NOW + 5 and req.car == "car-1" and req.beat_s == 300 + 1500 + 1182
    assert req.need == NEED.to_fields() and CarNeed.from_fields(req.need) == NEED
    assert not forward(t, local_ok(1500)).publish  # redelivered car request: already pending
    step = t.on_answer(answer(req.xid, req.deadline, region="b", host="10.0.0.2", port=1883,
                              reservation=RESERVATION), NOW + 1)
    [r] = step.replies
    assert r.reply == PC.overflow_reply("car-1-0-1", RESERVATION, "b", {"host": "10.0.0.2", "port": 1883})
    assert step.cancel_local == [("car-1", "rlocal")] and not t.pending


def test_refusal_deadline_and_link_loss_give_the_local_answer_with_the_reason():
    t = tracker()
    req = PC.parse_overflow_request("a", forward(t).publish[0].payload)
    [r] = t.on_answer(answer(req.xid, req.deadline, code=W.NO_CAPACITY, message="nothing near"), NOW + 1).replies
    assert r.reply["overflow"] == {"code": W.NO_CAPACITY, "message": "nothing near"}
    forward(t, rid="car-1-0-2")
    assert not t.expire(NOW + 5).replies  # at the deadline: still in time
    [r] = t.expire(NOW + 5.01).replies
    assert r.rid == "car-1-0-2" and r.reply["overflow"]["code"] == PC.DEADLINE_PASSED
    forward(t, rid="car-1-0-3")
    [r] = t.on_link(b"0", NOW + 1).replies
    assert r.rid == "car-1-0-3" and r.reply["overflow"]["code"] == PC.OVERFLOW_UNAVAILABLE and not t.link_up


def test_a_late_or_unknown_ok_answer_is_ignored_and_abandoned():
    t = tracker()
    req = PC.parse_overflow_request("a", forward(t).publish[0].payload)
    t.expire(NOW + 6)
    step = t.on_answer(answer(req.xid, req.deadline, region="b", host="h", port=1, reservation=RESERVATION), NOW + 6)
    assert not step.replies
    [pub] = step.publish
    assert PC.parse_overflow_request("a", pub.payload) == PC.OverflowAbandon(req.xid, "a")
    # a late refusal needs nothing undone
    assert not t.on_answer(answer(req.xid, req.deadline, code=W.NO_CAPACITY, message=""), NOW + 6).publish
    assert not t.on_answer(b"junk", NOW).replies


# ---------------------------------------------------------------- capacity summary

def station(sid: str, powers=(22.0, 22.0, 150.0), lat: float = 52.52) -> StationMeta:
    return StationMeta(sid, lat, 13.40, tuple(SlotMeta(p, p > 22) for p in powers), price_per_kwh=0.59)


def test_summary_groups_slots_by_power_with_free_and_next_free():
    metas = [station("st-1"), station("st-2"), station("st-3")]
    busy = {"st-1": [NOW, NOW + 600, None], "st-2": [None, None, None], "st-3": [NOW + 60, NOW + 30, NOW - 5]}
    got = {s.id: s for s in summary_stations(metas, busy, NOW)}
    assert set(got) == {"st-1", "st-3"}  # st-2 has no usable slot
    assert got["st-1"].groups == (PC.SlotGroup(22.0, False, 2, 1, NOW + 600),)
    assert got["st-3"].groups == (PC.SlotGroup(22.0, False, 2, 0, NOW + 30), PC.SlotGroup(150.0, True, 1, 1, None))
    assert got["st-3"].price_per_kwh == 0.59


def test_summary_publisher_sends_changes_refreshes_and_clears_surplus_shards():
    pub = SummaryPublisher("a", min_interval_s=5, refresh_s=60)
    stations = summary_stations([station(f"st-{i}") for i in range(900)],
                                {f"st-{i}": [NOW, NOW, NOW] for i in range(900)}, NOW)
    first = pub.due(stations, NOW)
    assert len(first) == 3 and all(p.retain for p in first)
    assert pub.due(stations, NOW + 1) == []
    changed = stations[:1] + [] + stations[1:]
    changed[0] = PC.SummaryStation(changed[0].id, changed[0].lat, changed[0].lon, 0.59,
                                  (PC.SlotGroup(22.0, False, 2, 0, NOW + 900), PC.SlotGroup(150.0, True, 1, 1, None)))
    assert pub.due(changed, NOW + 2) == []  # within min_interval_s of that shard's last send
    [one] = pub.due(changed, NOW + 6)
    assert one.topic == PC.summary_topic("a", PC.summary_shard(changed[0].id, 3))
    assert len(pub.due(changed, NOW + 61)) == 3  # refresh: every shard, with a new `at`
    smaller = pub.due(changed[:100], NOW + 62)
    assert [p.topic for p in smaller if p.payload == b""] == [PC.summary_topic("a", 1), PC.summary_topic("a", 2)]
    assert [json.loads(p.payload)["of"] for p in smaller if p.payload] == [1]


# ---------------------------------------------------------------- central's holds, through the engine

def engine_with(stations: list[StationMeta], statuses: dict[str, list[str]]) -> Engine:
    e = Engine(EngineConfig(region="b", hold_s=120), stations)
    for sid, slots in statuses.items():
        e.station_online(sid, W.online_message(True), NOW - 10)
        e.station_status(sid, W.encode(D.station_status(slots)), NOW - 10)
    return e


XID = PC.overflow_id("a", "car-1", "car-1-0-1")


def hold_msg(station: str | None, deadline: float = NOW + 4) -> bytes:
    return W.encode(PC.hold_request(XID, "a", "b", "car-1", station, deadline, deadline + 180, NEED.to_fields()))


def test_hold_at_centrals_station_then_confirmed_by_the_car_after_handover():
    e = engine_with([station("st-1"), station("st-2", lat=52.53)], {"st-1": ["free"] * 3, "st-2": ["free"] * 3})
    port = EngineHoldPort(e)
    pub, results = answer_hold("b", hold_msg("st-2"), NOW, port)
    ans = PC.parse_hold_answer("b", pub.payload)
    assert pub.topic == PC.central_topic("b", "hold/answer")
    assert ans.ok and ans.reservation["station"] == "st-2" and ans.car == "car-1" and ans.deadline == NOW + 4
    held = e.reservations[ans.reservation["id"]]
    assert held.car == "car-1" and held.rid == XID and held.state == "held"
    # the station is told, the car (not on this broker yet) is not
    msgs = [m for r in results for m in r.messages]
    assert [m.topic for m in msgs] == [D.station_topic("b", "st-2", "cmd")]
    assert all(r.request is not None for r in results)  # committed with the answer (idempotency)
    # the same hold request again (redelivery): the same answer, no second reservation
    pub2, _ = answer_hold("b", hold_msg("st-2"), NOW + 1, port)
    assert PC.parse_hold_answer("b", pub2.payload).reservation == ans.reservation and len(e.reservations) == 1
    # after the handover the car confirms on this region's broker with the ordinary confirm
    res = e.car_message("car-1", W.encode(D.reservation_request("confirm", "car-1-x-1", "car-1", held.id)), NOW + 30)
    assert res.reply["ok"] and json.loads(W.encode(res.reply))["reservation"]["state"] == "confirmed"
    [event] = hold_events("b", res.changed)
    assert PC.parse_hold_event("b", event.payload) == PC.HoldEvent(XID, "b", "confirmed", held.id)


def test_hold_falls_back_to_the_regions_best_and_refuses_when_full():
    e = engine_with([station("st-1"), station("st-2", lat=52.53)],
                    {"st-1": ["occupied"] * 3, "st-2": ["free"] * 3})
    e.cfg = EngineConfig(region="b", max_wait_s=60)  # st-1's occupants leave later than that
    pub, _ = answer_hold("b", hold_msg("st-1"), NOW, EngineHoldPort(e))
    ans = PC.parse_hold_answer("b", pub.payload)
    assert ans.ok and ans.reservation["station"] == "st-2"
    full = engine_with([station("st-1")], {"st-1": ["out_of_service"] * 3})
    pub, _ = answer_hold("b", hold_msg(None), NOW, EngineHoldPort(full))
    ans = PC.parse_hold_answer("b", pub.payload)
    assert not ans.ok and ans.error["code"] == W.NO_CAPACITY and not full.reservations


def test_a_hold_request_past_its_deadline_holds_nothing_and_release_cancels():
    e = engine_with([station("st-1")], {"st-1": ["free"] * 3})
    port = EngineHoldPort(e)
    assert answer_hold("b", hold_msg("st-1", deadline=NOW - 0.1), NOW, port) == (None, [])
    assert not e.reservations and not e.requests
    assert answer_hold("b", b'{"v":1}', NOW, port) == (None, [])
    pub, _ = answer_hold("b", hold_msg("st-1"), NOW, port)
    rid = PC.parse_hold_answer("b", pub.payload).reservation["id"]
    release = W.encode(PC.hold_release(XID, "b", "car-1", rid))
    none, [res] = answer_hold("b", release, NOW + 2, port)
    assert none is None and not e.reservations
    assert [r.state for r in res.changed] == ["cancelled"]
    assert [PC.parse_hold_event("b", p.payload).event for p in hold_events("b", res.changed)] == ["cancelled"]
    assert reservation_view(res.changed[0])["state"] == "cancelled"


# ---------------------------------------------------------------- the engine's overflow methods

def test_overflow_hold_lasts_until_confirm_by_and_answers_a_repeat_the_same():
    e = engine_with([station("st-1")], {"st-1": ["free"] * 3})
    out = e.overflow_hold("car-1", XID, NEED, "st-1", NOW + 180, NOW)
    assert out.reservation["hold_until"] == NOW + 180 and out.reservation["state"] == "held"
    [res] = out.results
    assert res.request.rid == XID and [m.topic for m in res.messages] == [D.station_topic("b", "st-1", "cmd")]
    assert res.messages[0].payload["until"] == NOW + 180  # the station's LED lasts as long
    assert res.reservation is e.reservations[out.reservation["id"]] and res.need == NEED and res.reply is None
    again = e.overflow_hold("car-1", XID, NEED, "st-1", NOW + 180, NOW + 1)
    assert again.reservation == out.reservation and again.results == [] and len(e.reservations) == 1
    # lapses at confirm_by, not at hold_s (120 s)
    assert not e.tick(NOW + 179).changed
    [expired] = e.tick(NOW + 180).changed
    assert expired.state == "expired"
    assert [PC.parse_hold_event("b", p.payload).event for p in hold_events("b", [expired])] == ["expired"]


def test_overflow_hold_unknown_station_falls_back_and_a_checked_in_car_is_refused():
    e = engine_with([station("st-1")], {"st-1": ["free"] * 3})
    out = e.overflow_hold("car-1", XID, NEED, "st-gone", NOW + 180, NOW)
    assert out.reservation["station"] == "st-1"
    slots = ["free"] * 3
    slots[out.reservation["slot"] - 1] = "occupied"
    e.station_status("st-1", W.encode(D.station_status(slots)), NOW + 5)
    assert e.reservations[out.reservation["id"]].state == "checked_in"
    xid2 = PC.overflow_id("a", "car-1", "car-1-0-2")
    refused = e.overflow_hold("car-1", xid2, NEED, None, NOW + 300, NOW + 10)
    assert refused.reservation is None and refused.code == D.BAD_STATE
    assert refused.results[0].request.reply["error"]["code"] == D.BAD_STATE  # stored: a repeat answers the same


def test_overflow_hold_replaces_the_cars_earlier_hold_and_refuses_when_full():
    e = engine_with([station("st-1")], {"st-1": ["free"] * 3})
    first = e.overflow_hold("car-1", XID, NEED, None, NOW + 180, NOW).reservation
    xid2 = PC.overflow_id("a", "car-1", "car-1-0-2")
    second = e.overflow_hold("car-1", xid2, NEED, None, NOW + 200, NOW + 1)
    assert [r.state for r in second.results[0].changed] == ["cancelled", "held"]
    assert list(e.reservations) == [second.reservation["id"]] != [first["id"]]
    full = engine_with([station("st-1")], {"st-1": ["out_of_service"] * 3})
    out = full.overflow_hold("car-1", XID, NEED, "st-1", NOW + 180, NOW)
    assert out.reservation is None and out.code == W.NO_CAPACITY and not full.reservations


def test_overflow_release_only_its_own_hold_and_cancel_without_a_car_event():
    e = engine_with([station("st-1")], {"st-1": ["free"] * 3})
    rid = e.overflow_hold("car-1", XID, NEED, None, NOW + 180, NOW).reservation["id"]
    other = PC.overflow_id("a", "car-1", "other")
    assert e.overflow_release("car-1", other, rid, NOW).changed == []  # another request's xid
    assert e.overflow_release("car-2", XID, rid, NOW).changed == []
    res = e.overflow_release("car-1", XID, rid, NOW + 1)
    assert [r.state for r in res.changed] == ["cancelled"] and not e.reservations
    assert [m.topic for m in res.messages] == [D.station_topic("b", "st-1", "cmd")]  # release, no car reply
    assert e.overflow_release("car-1", XID, rid, NOW + 2).changed == []  # repeated: no change
    # cancel: the car's local hold ends because overflow sent it elsewhere
    local = e.car_message("car-1", W.encode(D.reserve_request("car-1-0-9", "car-1", **NEED.to_fields())), NOW)
    lid = local.reservation.id
    res = e.cancel("car-1", lid, NOW + 3)
    assert [r.state for r in res.changed] == ["cancelled"]
    assert not [m for m in res.messages if m.topic == D.car_topic("b", "car-1", "reply")]
    assert e.cancel("car-1", lid, NOW + 4).changed == [] and e.cancel("car-1", "r-none", NOW).changed == []


def test_replace_reply_makes_a_retry_get_the_final_answer():
    e = engine_with([station("st-1")], {"st-1": ["out_of_service"] * 3})
    req = W.encode(D.reserve_request("car-1-0-1", "car-1", **NEED.to_fields()))
    local = e.car_message("car-1", req, NOW).request.reply
    final = PC.overflow_reply("car-1-0-1", RESERVATION, "c", {"host": "127.0.0.1", "port": 1883})
    res = e.replace_reply("car-1", "car-1-0-1", final, NOW + 2)
    assert res.request.reply == final and res.request.at == NOW and local["error"]["code"] == W.NO_CAPACITY
    assert [(m.topic, m.payload) for m in res.messages] == [(D.car_topic("b", "car-1", "reply"), final)]
    retry = e.car_message("car-1", req, NOW + 5)
    assert retry.messages[0].payload == final and retry.request is None


def test_slot_times_and_assignable_feed_the_summary():
    e = engine_with([station("st-1"), station("st-2"), station("st-3")],
                    {"st-1": ["free", "occupied", "out_of_service"], "st-2": ["free"] * 3})
    e.station_online("st-2", W.online_message(False), NOW)
    assert [m.id for m in e.assignable()] == ["st-1"]
    times = e.slot_times("st-1", NOW)
    assert times[0] == NOW and times[1] > NOW + 3000 and times[2] is None  # no max_wait horizon
    assert e.slot_times("st-9", NOW) == []
    [s] = summary_stations(e.assignable(), {m.id: e.slot_times(m.id, NOW) for m in e.assignable()}, NOW)
    assert s.groups == (PC.SlotGroup(22.0, False, 2, 1, times[1]),)

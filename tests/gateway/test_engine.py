"""The pure engine: requests, lifecycle, station events, idempotency (no broker, no clock)."""
from __future__ import annotations

import json
import logging

import pytest

from recarga.core.model import CarNeed, SlotMeta, StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway.engine import Engine, EngineConfig, Result, reservation_view

REGION = "test"
T0 = 1_800_000_000.0


def stations() -> list[StationMeta]:
    ac = SlotMeta(22.0, False)
    return [
        StationMeta("near", 52.5200, 13.4050, (ac, ac), operator="A", price_per_kwh=0.40),
        StationMeta("far", 52.5400, 13.4300, (ac,), operator="B", price_per_kwh=0.50),
    ]


def make(**kw) -> Engine:
    cfg = EngineConfig(region=REGION, hold_s=60, grace_s=300, **kw)
    e = Engine(cfg, stations())
    for s in e.stations.values():
        e.station_online(s.id, W.online_message(True), T0)
        e.station_status(s.id, W.encode(D.station_status(["free"] * len(s.slots))), T0)
    return e


def reserve(e: Engine, car: str, rid: str, now: float = T0, **over) -> Result:
    fields = dict(lat=52.5201, lon=13.4051, soc=0.2, battery_kwh=50, consumption_kwh_100km=17,
                  max_ac_kw=11, max_dc_kw=0, target_soc=0.8)
    fields.update(over)
    return e.car_message(car, W.encode(D.reserve_request(rid, car, **fields)), now)


def replies(res: Result, car: str) -> list[dict]:
    return [m.payload for m in res.messages if m.topic == D.car_topic(REGION, car, "reply")]


def cmds(res: Result, sid: str) -> list[dict]:
    return [m.payload for m in res.messages if m.topic == D.station_topic(REGION, sid, "cmd")]


def status(e: Engine, sid: str, slots: list[str], now: float) -> Result:
    return e.station_status(sid, W.encode(D.station_status(slots)), now)


def test_reserve_answers_with_full_offer_and_tells_station():
    e = make()
    res = reserve(e, "c1", "q1")
    [reply] = replies(res, "c1")
    assert reply["ok"] and reply["rid"] == "q1"
    r = reply["reservation"]
    assert r["station"] == "near" and r["slot"] == 1 and r["state"] == "held"
    for key in ("distance_km", "eta", "wait_min", "charge_min", "price_eur", "hold_until", "energy_kwh"):
        assert key in r
    assert r["hold_until"] == round(T0 + 60)
    assert r["charge_min"] > 0 and r["price_eur"] == pytest.approx(r["energy_kwh"] * 0.40, abs=0.02)
    [cmd] = cmds(res, "near")
    assert (cmd["cmd"], cmd["slot"], cmd["reservation"]) == ("reserve", 1, r["id"])
    assert len(res.changed) == 1 and res.request is not None


def test_result_carries_the_reply_and_the_chosen_reservation_with_exact_times():
    e = make(max_wait_s=86400)
    status(e, "near", ["occupied", "occupied"], T0 - 1234.567)  # an odd wait: not whole seconds
    status(e, "far", ["out_of_service"], T0)
    res = reserve(e, "c1", "q1")
    [reply] = replies(res, "c1")
    assert res.reply is reply and res.request.reply is reply
    r = res.reservation
    assert r is e.reservations[r.id] and r in res.changed and reply["reservation"] == reservation_view(r)
    assert r.start == pytest.approx(T0 - 1234.567 + 3600)  # when the occupant is expected to leave
    assert r.start == r.eta + r.wait_s and r.end == r.start + r.charge_s
    assert reply["reservation"]["wait_min"] == round(r.wait_s / 60, 1) != r.wait_s / 60
    assert res.need == r.need == CarNeed(52.5201, 13.4051, 0.2, 50, 17, 11, 0, 0.8)
    # a confirm answers but chooses nothing; a repeat answers the same and chooses nothing now
    conf = e.car_message("c1", W.encode(D.reservation_request("confirm", "q2", "c1", r.id)), T0 + 1)
    assert conf.reply["ok"] and conf.reply["reservation"]["state"] == "confirmed"
    assert conf.reservation is None and conf.need is None
    again = reserve(e, "c1", "q1", now=T0 + 2)
    assert again.reply is reply and again.reservation is None and again.request is None
    # refused for capacity: the reply and what the car asked for, nothing chosen
    full = reserve(e, "c2", "q1", soc=0.05, target_soc=0.5)
    assert full.reply["error"]["code"] == W.NO_CAPACITY and full.reservation is None
    assert full.need is not None and full.need.soc == 0.05
    # a station's event is no answer to a request
    checked_in = status(e, "near", ["occupied", "occupied"], T0 + 3)
    assert checked_in.reply is None and checked_in.reservation is None


def test_withholding_the_reply_keeps_the_rest_of_the_result():
    e = make()
    res = reserve(e, "c1", "q1")
    [reply] = replies(res, "c1")
    [cmd] = cmds(res, "near")
    res.withhold_reply()
    assert replies(res, "c1") == [] and cmds(res, "near") == [cmd]
    assert res.reply is reply and res.request.reply is reply and res.changed


def test_second_car_gets_other_slot_and_third_queues_or_goes_elsewhere():
    e = make()
    a = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    b = replies(reserve(e, "c2", "q1"), "c2")[0]["reservation"]
    assert (a["station"], a["slot"]) != (b["station"], b["slot"])
    c = replies(reserve(e, "c3", "q1"), "c3")[0]["reservation"]
    taken = {(a["station"], a["slot"]), (b["station"], b["slot"])}
    assert (c["station"], c["slot"]) not in taken or c["wait_min"] > 0


def test_repeated_request_id_same_answer_no_second_reservation():
    e = make()
    first = reserve(e, "c1", "q1")
    again = reserve(e, "c1", "q1", now=T0 + 5)
    assert replies(again, "c1") == replies(first, "c1")
    assert again.changed == [] and again.request is None
    assert len(e.reservations) == 1


def test_new_request_replaces_cars_reservation():
    e = make()
    old = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    res = reserve(e, "c1", "q2")
    new = replies(res, "c1")[0]["reservation"]
    assert new["id"] != old["id"]
    states = {r.id: r.state for r in res.changed}
    assert states[old["id"]] == "cancelled" and states[new["id"]] == "held"
    assert len(e.reservations) == 1


@pytest.mark.parametrize("payload,code", [
    (b"{not json", W.BAD_JSON),
    (b"[1,2]", W.BAD_JSON),
    (b'{"v":2,"op":"reserve","rid":"x","car":"c1"}', W.BAD_VERSION),
    (b'{"v":1,"rid":"x","car":"c1"}', W.MISSING_FIELD),
    (b'{"v":1,"op":"fly","rid":"x","car":"c1"}', W.UNKNOWN_OP),
    (b'{"v":1,"op":"cancel","rid":"x","car":"c2","reservation":"r1"}', D.CAR_MISMATCH),
    (b"{" + b" " * 600 + b"}", W.TOO_LARGE),
])
def test_bad_input_gets_specific_error_and_stores_nothing(payload, code):
    e = make()
    res = e.car_message("c1", payload, T0)
    [reply] = replies(res, "c1")
    assert reply["ok"] is False and reply["error"]["code"] == code
    assert res.changed == [] and res.request is None and e.requests == {}


@pytest.mark.parametrize("over,code,field", [
    (dict(soc=1.7), W.OUT_OF_RANGE, "soc"),
    (dict(lat=200), W.OUT_OF_RANGE, "lat"),
    (dict(soc="low"), W.BAD_TYPE, "soc"),
    (dict(battery_kwh=True), W.BAD_TYPE, "battery_kwh"),
    (dict(target_soc=0.1), W.OUT_OF_RANGE, "target_soc"),
    (dict(max_ac_kw=0, max_dc_kw=0), W.OUT_OF_RANGE, "max_ac_kw"),
    (dict(max_ac_kw=1e-9), W.OUT_OF_RANGE, "max_ac_kw"),  # a charge of millions of minutes
    (dict(station="nowhere"), D.UNKNOWN_STATION, "station"),
])
def test_out_of_range_and_unknown_station(over, code, field):
    e = make()
    res = reserve(e, "c1", "q1", **over)
    [reply] = replies(res, "c1")
    assert reply["error"]["code"] == code and reply["error"]["field"] == field
    assert e.reservations == {}


def test_unknown_field_rejected():
    e = make()
    msg = D.reserve_request("q1", "c1", lat=52.5, lon=13.4, soc=0.2, battery_kwh=50, consumption_kwh_100km=17,
                            max_ac_kw=11, max_dc_kw=0, target_soc=0.8)
    msg["colour"] = "red"
    [reply] = replies(e.car_message("c1", W.encode(msg), T0), "c1")
    assert reply["error"] == {"code": W.UNKNOWN_FIELD, "message": "unknown field 'colour' for op 'reserve'",
                              "field": "colour"}


def test_offline_and_out_of_service_never_assigned():
    e = make()
    e.station_online("near", W.online_message(False), T0)
    status(e, "far", ["out_of_service"], T0)
    res = reserve(e, "c1", "q1")
    [reply] = replies(res, "c1")
    assert reply["error"]["code"] == W.NO_CAPACITY and reply["error"]["earliest_free"] is None
    assert e.reservations == {}


def test_full_region_no_capacity_names_earliest_free():
    e = make()
    status(e, "near", ["occupied", "occupied"], T0)
    status(e, "far", ["occupied"], T0)
    # every slot busy for longer than max_wait_s (sessions are assumed to last an hour)
    reply = replies(reserve(e, "c1", "q1"), "c1")[0]
    assert reply["error"]["code"] == W.NO_CAPACITY
    assert reply["error"]["earliest_free"] == round(T0 + 3600)
    assert e.reservations == {}


def test_no_capacity_tells_the_car_to_ask_again_once_the_earliest_slot_is_within_max_wait():
    e = make(max_wait_s=1900)
    status(e, "near", ["occupied", "occupied"], T0)
    status(e, "far", ["occupied"], T0)
    # sessions are assumed to last an hour: the earliest frees at T0 + 3600, bookable from T0 + 1700
    err = replies(reserve(e, "c1", "q1", now=T0 + 100), "c1")[0]["error"]
    assert err["earliest_free"] == round(T0 + 3600) and err["retry_after"] == 3600 - 1900 - 100


@pytest.mark.parametrize("max_wait_s, expected", [(3590, 60), (0, 1800)])
def test_no_capacity_retry_after_is_bounded(max_wait_s, expected):
    e = make(max_wait_s=max_wait_s)
    for sid, n in (("near", 2), ("far", 1)):
        status(e, sid, ["occupied"] * n, T0)
    err = replies(reserve(e, "c1", "q1", now=T0), "c1")[0]["error"]
    assert err["code"] == W.NO_CAPACITY and err["retry_after"] == expected


def test_no_capacity_with_nothing_in_reach_asks_again_after_the_longest_retry():
    e = make(retry_max_s=900)
    err = replies(reserve(e, "c2", "q1", soc=0.05, target_soc=0.5), "c2")[0]["error"]
    assert err["earliest_free"] is None and err["retry_after"] == 900


def test_no_capacity_at_a_named_station_says_when_that_station_frees():
    e = make()
    status(e, "near", ["occupied", "occupied"], T0)
    status(e, "far", ["occupied"], T0 + 1800)  # frees half an hour after "near"
    reply = replies(reserve(e, "c1", "q1", station="far"), "c1")[0]
    assert reply["error"]["code"] == W.NO_CAPACITY and "at station far" in reply["error"]["message"]
    assert reply["error"]["earliest_free"] == round(T0 + 1800 + 3600)  # far's, not near's


def test_busy_slot_within_max_wait_is_booked_with_its_wait():
    e = make(max_wait_s=86400)
    status(e, "near", ["occupied", "occupied"], T0)
    status(e, "far", ["occupied"], T0)
    offers = [replies(reserve(e, f"c{i}", "q1"), f"c{i}")[0]["reservation"] for i in range(5)]
    assert all(o["wait_min"] > 0 for o in offers)
    # 5 cars on 3 slots: some queue behind others, never overlapping on the same slot
    rs = sorted(e.reservations.values(), key=lambda r: (r.station, r.slot, r.start))
    shared = 0
    for a, b in zip(rs, rs[1:]):
        if (a.station, a.slot) == (b.station, b.slot):
            shared += 1
            assert b.start >= a.end
    assert shared >= 2


def test_unreachable_gets_no_capacity_without_earliest():
    e = make()
    reply = replies(reserve(e, "c2", "q1", soc=0.05, target_soc=0.5), "c2")[0]
    assert reply["error"]["code"] == W.NO_CAPACITY and reply["error"]["earliest_free"] is None


def test_confirm_checkin_complete_lifecycle():
    e = make()
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    conf = replies(e.car_message("c1", W.encode(D.reservation_request("confirm", "q2", "c1", r["id"])), T0 + 10), "c1")[0]
    assert conf["ok"] and conf["reservation"]["state"] == "confirmed"
    # the hold no longer lapses; the no-show deadline governs
    assert e.tick(T0 + 61).changed == []
    res = status(e, "near", ["occupied", "free"], T0 + 100)
    assert replies(res, "c1")[0]["event"] == "checked_in"
    assert e.reservations[r["id"]].state == "checked_in"
    assert e.tick(T0 + 10_000).changed == []  # checked in: never expires
    res = status(e, "near", ["free", "free"], T0 + 2000)
    ev = replies(res, "c1")[0]
    assert ev["event"] == "completed" and ev["reservation"]["state"] == "completed"
    assert e.reservations == {} and e.by_slot == {}


def test_held_expires_and_station_released():
    e = make()
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    assert e.tick(T0 + 59).changed == []
    res = e.tick(T0 + 60)
    assert [x.state for x in res.changed] == ["expired"]
    assert replies(res, "c1")[0]["event"] == "expired"
    assert cmds(res, r["station"]) == [D.station_cmd("release", r["slot"])]


def test_confirmed_no_show_expires_after_grace():
    e = make()
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    e.car_message("c1", W.encode(D.reservation_request("confirm", "q2", "c1", r["id"])), T0 + 1)
    deadline = e.reservations[r["id"]].deadline
    assert e.tick(deadline - 1).changed == []
    res = e.tick(deadline)
    assert res.changed[0].state == "expired"


def confirmed(e: Engine, car: str, now: float = T0, **over) -> dict:
    r = replies(reserve(e, car, f"{car}-q1", now=now, **over), car)[0]["reservation"]
    assert replies(e.car_message(car, W.encode(D.reservation_request("confirm", f"{car}-q2", car, r["id"])), now),
                   car)[0]["ok"]
    return r


def test_a_confirmed_car_whose_slot_is_still_occupied_at_its_deadline_is_offered_the_best_slot_again():
    e = make(max_wait_s=86400)
    status(e, "near", ["occupied", "occupied"], T0)
    status(e, "far", ["out_of_service"], T0)
    r = confirmed(e, "c1")
    assert r["wait_min"] > 0
    deadline = e.reservations[r["id"]].deadline
    # the session ahead overruns its estimate: at the deadline the slot is still occupied
    res = e.tick(deadline)
    [ev] = replies(res, "c1")
    assert ev["event"] == "faulted" and ev["reason"] == "late" and ev["reservation"]["id"] == r["id"]
    assert ev["reservation"]["state"] == "faulted"  # not expired: the car may be waiting on site
    offer = ev["offer"]
    assert offer["state"] == "held" and offer["id"] != r["id"]
    assert list(e.reservations) == [offer["id"]]
    # planned from the station it was sent to: nothing more to drive to the same station
    assert offer["station"] == "near" and offer["distance_km"] == 0
    new = e.reservations[offer["id"]]
    assert new.start >= deadline and new.deadline > deadline


def test_a_late_reservation_behind_another_waiting_one_is_re_planned_too():
    e = make(max_wait_s=86400)
    status(e, "far", ["out_of_service"], T0)
    status(e, "near", ["free", "out_of_service"], T0)
    first = confirmed(e, "c1")
    second = confirmed(e, "c2")
    assert (first["station"], first["slot"]) == (second["station"], second["slot"])
    status(e, "near", ["occupied", "out_of_service"], T0 + 1)  # c1 plugs in and overruns
    res = e.tick(e.reservations[second["id"]].deadline)
    [ev] = replies(res, "c2")
    assert ev["event"] == "faulted" and ev["reason"] == "late" and "offer" in ev


def test_a_free_slot_at_the_deadline_is_a_no_show():
    e = make(max_wait_s=86400)
    status(e, "near", ["occupied", "occupied"], T0)
    status(e, "far", ["out_of_service"], T0)
    r = confirmed(e, "c1")
    deadline = e.reservations[r["id"]].deadline
    slots = ["occupied", "occupied"]
    slots[r["slot"] - 1] = "free"
    status(e, "near", slots, deadline - 200)  # the session ended in time; the car never came
    [ev] = replies(e.tick(deadline), "c1")
    assert ev["event"] == "expired" and "offer" not in ev
    assert e.reservations == {}


def test_a_held_offer_that_is_not_confirmed_still_expires_when_its_slot_is_busy():
    e = make(max_wait_s=86400)
    status(e, "near", ["occupied", "occupied"], T0)
    status(e, "far", ["out_of_service"], T0)
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    [ev] = replies(e.tick(r["hold_until"]), "c1")
    assert ev["event"] == "expired"


def test_a_late_reservation_with_nothing_to_offer_faults_without_offer():
    e = make(max_wait_s=4000)
    status(e, "near", ["occupied", "occupied"], T0)
    status(e, "far", ["out_of_service"], T0)
    r = confirmed(e, "c1")
    deadline = e.reservations[r["id"]].deadline
    # restarted with a short max_wait_s: at the deadline no slot frees up soon enough
    e2 = Engine(EngineConfig(region=REGION, hold_s=60, grace_s=300, max_wait_s=60), stations())
    e2.restore(list(e.reservations.values()), [], live=e.live)
    [ev] = replies(e2.tick(deadline), "c1")
    assert ev["event"] == "faulted" and ev["reason"] == "late" and "offer" not in ev
    assert e2.reservations == {}


def test_a_slot_out_of_service_faults_with_its_reason():
    e = make()
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    slots = ["free", "free"]
    slots[r["slot"] - 1] = "out_of_service"
    [ev] = replies(status(e, r["station"], slots, T0 + 5), "c1")
    assert ev["event"] == "faulted" and ev["reason"] == "out_of_service"


def test_cancel_and_bad_state():
    e = make()
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    res = e.car_message("c1", W.encode(D.reservation_request("cancel", "q2", "c1", r["id"])), T0)
    assert replies(res, "c1")[0]["reservation"]["state"] == "cancelled"
    res = e.car_message("c1", W.encode(D.reservation_request("confirm", "q3", "c1", r["id"])), T0)
    assert replies(res, "c1")[0]["error"]["code"] == D.UNKNOWN_RESERVATION
    # another car cannot touch c1's reservation
    r2 = replies(reserve(e, "c1", "q4"), "c1")[0]["reservation"]
    res = e.car_message("c2", W.encode(D.reservation_request("cancel", "q1", "c2", r2["id"])), T0)
    assert replies(res, "c2")[0]["error"]["code"] == D.UNKNOWN_RESERVATION
    assert r2["id"] in e.reservations


def test_fault_tells_car_and_offers_next_best():
    e = make()
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    slots = ["free", "free"]
    slots[r["slot"] - 1] = "out_of_service"
    res = status(e, r["station"], slots, T0 + 5)
    ev = replies(res, "c1")[0]
    assert ev["event"] == "faulted" and ev["reservation"]["state"] == "faulted"
    offer = ev["offer"]
    assert (offer["station"], offer["slot"]) != (r["station"], r["slot"]) and offer["state"] == "held"
    assert list(e.reservations) == [offer["id"]]


def test_station_back_online_gets_reserved_flags_again():
    e = make()
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    e.station_online(r["station"], W.online_message(False), T0 + 1)
    res = e.station_online(r["station"], W.online_message(True), T0 + 2)
    assert cmds(res, r["station"])[0]["cmd"] == "reserve"
    # a status claiming a slot reserved that has no reservation is corrected
    res = status(e, "far", ["reserved"], T0 + 3)
    assert cmds(res, "far") == [D.station_cmd("release", 1)]


def test_restore_from_records_keeps_answers():
    e = make()
    first = reserve(e, "c1", "q1")
    e2 = make()
    e2.restore(list(e.reservations.values()), list(e.requests.values()))
    again = reserve(e2, "c1", "q1", now=T0 + 1)
    assert replies(again, "c1") == replies(first, "c1") and again.changed == []
    assert e2.tick(T0 + 60).changed[0].state == "expired"


def test_request_ids_are_forgotten_oldest_first_after_their_memory():
    e = make(request_memory_s=100)
    reserve(e, "c1", "q1", now=T0)
    reserve(e, "c2", "q2", now=T0 + 10)
    e2 = make(request_memory_s=100)  # restored records (in any order) are forgotten the same way
    e2.restore([], list(reversed(list(e.requests.values()))))
    reserve(e2, "c3", "q3", now=T0 + 20)
    for eng in (e, e2):
        eng.tick(T0 + 99)
        assert ("c1", "q1") in eng.requests
        eng.tick(T0 + 105)
        assert ("c1", "q1") not in eng.requests and ("c2", "q2") in eng.requests
    e2.tick(T0 + 125)
    assert list(e2.requests) == []
    # a forgotten id is a new request again, and is remembered afresh
    again = reserve(e, "c1", "q1", now=T0 + 130)
    assert again.request is not None and ("c1", "q1") in e.requests
    e.tick(T0 + 200)
    assert ("c1", "q1") in e.requests and ("c2", "q2") not in e.requests
    e.tick(T0 + 231)
    assert e.requests == {}


def test_replay_is_deterministic():
    def run() -> list[str]:
        e = make()
        out = []
        for i in range(6):
            out.append(json.dumps(replies(reserve(e, f"c{i}", "q", now=T0 + i), f"c{i}")))
        return out
    assert run() == run()


def test_request_for_a_named_station():
    e = make()
    r = replies(reserve(e, "c1", "q1", station="far"), "c1")[0]["reservation"]
    assert (r["station"], r["slot"]) == ("far", 1)
    # its only slot is now held for c1 for longer than max_wait_s: nothing for c2 there
    r2 = replies(reserve(e, "c2", "q1", station="far"), "c2")[0]
    assert r2["error"]["code"] == W.NO_CAPACITY
    status(e, "near", ["out_of_service", "out_of_service"], T0)
    r3 = replies(reserve(e, "c3", "q1", station="near"), "c3")[0]
    assert r3["error"]["code"] == W.NO_CAPACITY and "at station near" in r3["error"]["message"]


def test_reserve_command_names_the_waiting_reservation_not_the_occupant():
    e = make(max_wait_s=86400)
    a = replies(reserve(e, "c1", "q1", station="far"), "c1")[0]["reservation"]
    status(e, "far", ["occupied"], T0 + 60)  # c1 checks in
    res = reserve(e, "c2", "q1", station="far", now=T0 + 120)  # c2 queues behind it
    b = replies(res, "c2")[0]["reservation"]
    assert b["wait_min"] > 0
    [cmd] = cmds(res, "far")
    assert cmd["reservation"] == b["id"] != a["id"]
    assert cmd["until"] == b["hold_until"]  # a held reservation: the hold is what the station waits for


def test_queue_moves_forward_when_a_reservation_ahead_ends():
    e = make(max_wait_s=86400)
    a = replies(reserve(e, "c1", "q1", station="far"), "c1")[0]["reservation"]
    b = replies(reserve(e, "c2", "q1", station="far"), "c2")[0]["reservation"]
    assert b["wait_min"] > 0
    promised = e.reservations[b["id"]].deadline
    res = e.car_message("c1", W.encode(D.reservation_request("cancel", "q2", "c1", a["id"])), T0 + 10)
    moved = e.reservations[b["id"]]
    assert moved.wait_s == 0 and moved.start == moved.eta
    assert moved in res.changed  # persisted
    assert moved.deadline == promised  # what the car was told still holds


def test_car_requests_log_at_debug_and_a_summary_a_minute_at_info(caplog):
    """A line per car request would flood INFO in a busy region: those are DEBUG, INFO has a
    count of them every SUMMARY_S, and transitions no car asked for stay INFO."""
    from recarga.gateway.engine import SUMMARY_S

    e = make()
    caplog.set_level(logging.DEBUG, logger="recarga.engine")  # after make()'s "station ... online"

    def lines(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    e.tick(T0)  # the first tick starts the first summary window
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    reserve(e, "c1", "q1")  # repeated
    e.car_message("c1", W.encode(D.reservation_request("confirm", "q2", "c1", r["id"])), T0 + 1)
    r2 = replies(reserve(e, "c2", "q1"), "c2")[0]["reservation"]
    e.car_message("c2", W.encode(D.reservation_request("cancel", "q2", "c2", r2["id"])), T0 + 2)
    e.car_message("c2", W.encode(D.reservation_request("cancel", "q3", "c2", r2["id"])), T0 + 3)  # refused
    e.car_message("c3", b"{not json", T0 + 4)  # invalid
    debug = lines(logging.DEBUG)
    assert any(f"car c1 rid q1 -> {r['station']} slot {r['slot']}" in m for m in debug), debug
    assert f"reservation {r['id']} (car c1, {r['station']} slot {r['slot']}) confirmed" in debug
    assert f"reservation {r2['id']} (car c2, {r2['station']} slot {r2['slot']}) cancelled" in debug
    assert lines(logging.INFO) == []
    assert len(lines(logging.WARNING)) == 2  # the refusal and the bad payload, each as it happens

    e.tick(T0 + SUMMARY_S - 1)
    assert lines(logging.INFO) == []
    e.tick(T0 + SUMMARY_S)
    assert lines(logging.INFO) == ["last 60 s: 7 car requests: 2 reserved, 1 confirmed, 1 cancelled, 1 refused, "
                                   "1 invalid, 1 repeated; 1 active reservations"]
    # the counts start again; a window without car requests writes no summary
    e.tick(T0 + 2 * SUMMARY_S + 5)
    assert len(lines(logging.INFO)) == 1
    # a no-show is no car's request: INFO as it happens
    deadline = e.reservations[r["id"]].deadline
    e.tick(deadline)
    assert f"reservation {r['id']} (car c1, {r['station']} slot {r['slot']}) expired" in lines(logging.INFO)


def test_retained_flags_and_miscounted_statuses_replayed_on_reconnect_log_once(caplog):
    """The broker replays every station's retained online flag and status on each reconnect:
    a region's log gets a line when something changed, not thousands per reconnect."""
    e = make()
    caplog.set_level(logging.INFO, logger="recarga.engine")
    for _ in range(3):  # three reconnects
        e.station_online("near", W.online_message(True), T0 + 1)
        status(e, "far", ["free", "free", "free"], T0 + 1)  # "far" has one slot in its metadata
    lines = [r.getMessage() for r in caplog.records]
    assert not any("near online" in line for line in lines), lines
    assert sum("station far reports 3 slots" in line for line in lines) == 1, lines
    e.station_online("near", W.online_message(False), T0 + 2)
    status(e, "far", ["free", "free"], T0 + 2)  # another wrong count: said again
    status(e, "far", ["free"], T0 + 3)
    status(e, "far", ["free", "free", "free"], T0 + 4)  # wrong again after it was right
    lines = [r.getMessage() for r in caplog.records]
    assert sum("station near offline" in line for line in lines) == 1
    assert sum("station far reports" in line for line in lines) == 3, lines


def test_a_reserve_naming_a_known_model_is_estimated_along_its_curve():
    from recarga.core.evmodels import CarModel, charge_seconds
    ac_only = CarModel("Single phase", 50.0, 17.0, 3.7, 0.0, ((3.7, 3.7), (22.0, 3.7)), (), "m-1")
    e = Engine(EngineConfig(region=REGION), stations(), models={"m-1": ac_only})
    for s in e.stations.values():
        e.station_online(s.id, W.online_message(True), T0)
        e.station_status(s.id, W.encode(D.station_status(["free"] * len(s.slots))), T0)
    flat = replies(reserve(e, "c1", "q1"), "c1")[0]
    curved = replies(reserve(e, "c2", "q1", model="m-1"), "c2")[0]
    assert "notice" not in curved
    r = e.reservations[curved["reservation"]["id"]]
    soc_arr = 0.8 - r.energy_kwh / 50.0
    assert r.charge_s == pytest.approx(charge_seconds(ac_only.power_curve(22.0, False, 11.0), 50.0, soc_arr, 0.8))
    assert curved["reservation"]["power_kw"] == 3.7 and flat["reservation"]["power_kw"] == 11.0
    assert r.need.model is ac_only


def test_a_reserve_naming_an_unknown_model_is_answered_at_constant_power_with_a_notice():
    e = make()
    reply = replies(reserve(e, "c1", "q1", model="no-such-model"), "c1")[0]
    assert reply["ok"] and reply["reservation"]["power_kw"] == 11.0
    assert reply["notice"]["code"] == D.UNKNOWN_MODEL and reply["notice"]["field"] == "model"
    assert "no-such-model" in reply["notice"]["message"]
    assert e.reservations[reply["reservation"]["id"]].need.model is None


def test_the_shipped_ev_models_are_known_by_their_open_ev_data_id():
    from recarga.core.evmodels import load_models
    m = next(m for m in load_models() if m.dc_curve and m.model_id)
    e = make()
    reply = replies(reserve(e, "c1", "q1", model=m.model_id), "c1")[0]
    assert reply["ok"] and "notice" not in reply
    assert e.reservations[reply["reservation"]["id"]].need.model == m


def test_station_meta_keeps_the_site_and_access_from_the_station_file():
    ac = SlotMeta(22.0, False)
    hub = [StationMeta("h1", 52.52, 13.405, (ac,), operator="A", site="h1", access="restricted"),
           StationMeta("h2", 52.5201, 13.405, (ac,), operator="A", site="h1", access="restricted")]
    e = Engine(EngineConfig(region=REGION), hub)
    e.station_meta("h2", W.encode({"v": 1, "lat": 52.5202, "lon": 13.4051, "operator": "A",
                                   "slots": [{"power_kw": 22}, {"power_kw": 50, "dc": True}]}), T0)
    h2 = e.stations["h2"]
    assert (h2.lat, h2.lon, len(h2.slots)) == (52.5202, 13.4051, 2)  # the message's facts ...
    assert (h2.site, h2.access) == ("h1", "restricted")  # ... with the file's site and access
    e.station_meta("new", W.encode({"v": 1, "lat": 52.53, "lon": 13.41, "slots": [{"power_kw": 11}]}), T0)
    assert (e.stations["new"].site, e.stations["new"].access) == ("", "public")  # known from meta only

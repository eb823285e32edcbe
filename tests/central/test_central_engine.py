"""Central's network view and overflow rules (pure): the best region and station from the
summaries, the request and hold lifecycle, deadlines, redelivery, releases."""
from __future__ import annotations

from dataclasses import replace

from recarga.central.config import OverflowConfig, RegionInfo
from recarga.central.engine import Decision, Overflow
from recarga.central.store import RequestRow
from recarga.central.view import NetworkView
from recarga.core.model import CarNeed
from recarga.core.protocol import central as PC
from recarga.core.protocol import wire as W

NOW = 1_795_000_000.0
NEED = CarNeed(52.52, 13.40, 0.3, 58.0, 16.6, 11.0, 100.0, 0.8)
XID = PC.overflow_id("a", "car-1", "car-1-0-1")
REGIONS = {r: RegionInfo(r, f"{r}.example", 1883) for r in ("a", "b", "c")}


def summary(region: str, stations: list[tuple[str, float, float, int, float | None]], at: float = NOW,
            shard: int = 0, of: int = 1) -> PC.Summary:
    """stations: (id, lat, lon, free of 2 DC 150 kW slots, next_free)."""
    return PC.Summary(region, shard, of, at, tuple(
        PC.SummaryStation(sid, lat, lon, 0.5, (PC.SlotGroup(150.0, True, 2, free, nxt),))
        for sid, lat, lon, free, nxt in stations))


def view_with(*summaries: PC.Summary) -> NetworkView:
    v = NetworkView(max_age_s=300, max_wait_s=1800)
    for s in summaries:
        v.apply(s.region, s.shard, s)
    return v


# ---------------------------------------------------------------- view

def test_best_station_across_regions_uses_the_gateways_selection():
    v = view_with(summary("b", [("b-far", 52.56, 13.40, 2, None), ("b-busy", 52.521, 13.401, 0, NOW + 1200)]),
                  summary("c", [("c-near", 52.53, 13.40, 1, NOW + 600)]))
    best = v.best(NEED, NOW, {"b", "c"})
    assert (best.region, best.station) == ("c", "c-near")
    assert v.best(NEED, NOW, {"b"}).station == "b-far"  # free 4.5 km away beats a 20 min wait next door
    assert v.best(NEED, NOW, {"c"}, beat_s=60) is None  # nothing finishes sooner than the local offer
    assert v.best(NEED, NOW, {"b"}, exclude=[("b", "b-far")]).station == "b-busy"
    assert v.best(NEED, NOW + 301, {"b", "c"}) is None  # no fresh summary
    flat = CarNeed(52.52, 13.40, 0.04, 58.0, 16.6, 11.0, 100.0, 0.8)  # below the safety margin: reaches nothing
    assert v.best(flat, NOW, {"b", "c"}) is None


def test_view_follows_changes_clears_and_resharding():
    v = view_with(summary("b", [("s1", 52.53, 13.40, 0, NOW + 600)], shard=0, of=2),
                  summary("b", [("s2", 52.54, 13.40, 2, None)], shard=1, of=2))
    assert {s.id for s in v.stations("b")} == {"s1", "s2"}
    v.apply("b", 1, None)  # the retained shard was cleared
    assert [s.id for s in v.stations("b")] == ["s1"]
    v.apply("b", 0, summary("b", [("s1", 52.53, 13.40, 2, None)], at=NOW + 10, of=1))
    assert v.best(NEED, NOW + 10, {"b"}).choice.wait_s == 0  # free now
    v.apply("b", 1, summary("b", [("old", 52.5, 13.4, 2, None)], at=NOW - 1000, shard=1, of=2))
    assert [s.id for s in v.stations("b")] == ["s1"]  # a stale shard of an older layout


# ---------------------------------------------------------------- rules

def rules(view: NetworkView | None = None, **cfg) -> Overflow:
    view = view or view_with(summary("b", [("b1", 52.53, 13.40, 2, None)]),
                             summary("c", [("c1", 52.60, 13.40, 2, None)]))
    return Overflow(OverflowConfig(**{"confirm_s": 180.0, "relay_s": 0.5, "max_attempts": 2, **cfg}), REGIONS, view)


def request(deadline: float = NOW + 5, beat_s: float | None = None) -> PC.OverflowRequest:
    return PC.parse_overflow_request("a", W.encode(PC.overflow_request(XID, "a", "car-1", deadline,
                                                                     NEED.to_fields(), beat_s)))


def held(region: str = "b", station: str = "b1", deadline: float = NOW + 4.5) -> PC.HoldAnswer:
    r = {"id": "rb1", "station": station, "slot": 1, "state": "held", "distance_km": 1.4, "eta": NOW + 170,
         "wait_min": 0.0, "charge_min": 12.0, "energy_kwh": 30.0, "power_kw": 100.0, "price_eur": 15.0,
         "hold_until": NOW + 185}
    return PC.parse_hold_answer(region, W.encode(PC.hold_answer(XID, region, "car-1", deadline, reservation=r)))


def refused(region: str, deadline: float = NOW + 4.5) -> PC.HoldAnswer:
    return PC.parse_hold_answer(region, W.encode(PC.hold_answer(XID, region, "car-1", deadline, code=W.NO_CAPACITY,
                                                              message="full")))


def parsed(d: Decision, leaf: str, region: str) -> list:
    parse = {"hold/request": PC.parse_hold_request, "overflow/answer": PC.parse_overflow_answer}[leaf]
    return [parse(region, W.encode(m.payload)) for m in d.publish if m.topic == PC.central_topic(region, leaf)]


def test_request_asks_the_best_region_then_answers_the_origin_with_its_broker():
    o = rules()
    d = o.on_request(request(), None, None, NOW)
    [row] = d.requests
    assert (row.state, row.target, row.station, row.tried) == ("holding", "b", "b1", ("b",))
    [hold] = parsed(d, "hold/request", "b")
    assert (hold.station, hold.deadline, hold.confirm_by, hold.car) == ("b1", NOW + 4.5, NOW + 185, "car-1")
    d2 = o.on_hold_answer(held(), row, None, NOW + 1)
    [h] = d2.holds
    assert (h.region, h.reservation, h.state, h.hold_until) == ("b", "rb1", "held", NOW + 185)
    [ans] = parsed(d2, "overflow/answer", "a")
    assert ans.ok and ans.region == "b" and ans.broker == {"host": "b.example", "port": 1883}
    assert d2.requests[-1].state == "answered" and d2.requests[-1].answer == d2.publish[0].payload
    # redelivered answer: nothing new recorded, the answer goes out again
    again = o.on_hold_answer(held(), d2.requests[-1], h, NOW + 2)
    assert not again.holds and not again.requests and parsed(again, "overflow/answer", "a") == [ans]
    # redelivered request: the same answer
    assert parsed(o.on_request(request(), d2.requests[-1], h, NOW + 2), "overflow/answer", "a") == [ans]


def test_refusal_asks_the_next_region_then_says_no_capacity():
    o = rules()
    row = o.on_request(request(), None, None, NOW).requests[0]
    d = o.on_hold_answer(refused("b"), row, None, NOW + 1)
    row = d.requests[-1]
    assert (row.state, row.target, row.tried) == ("holding", "c", ("b", "c"))
    assert parsed(d, "hold/request", "c")[0].station == "c1"
    d = o.on_hold_answer(refused("c"), row, None, NOW + 2)
    [ans] = parsed(d, "overflow/answer", "a")
    assert not ans.ok and ans.error["code"] == W.NO_CAPACITY and d.requests[-1].state == "answered"


def test_nothing_fresh_or_reachable_is_answered_at_once():
    stale = rules(view_with(summary("b", [("b1", 52.53, 13.40, 2, None)], at=NOW - 400)))
    [ans] = parsed(stale.on_request(request(), None, None, NOW), "overflow/answer", "a")
    assert ans.error["code"] == PC.OVERFLOW_UNAVAILABLE
    [ans] = parsed(rules().on_request(request(beat_s=10), None, None, NOW), "overflow/answer", "a")
    assert ans.error["code"] == W.NO_CAPACITY
    only_b = rules(view_with(summary("b", [("b1", 52.53, 13.40, 2, None)])))
    row = only_b.on_request(request(), None, None, NOW).requests[0]
    [ans] = parsed(only_b.on_hold_answer(refused("b"), row, None, NOW + 1), "overflow/answer", "a")
    assert ans.error["code"] == W.NO_CAPACITY  # b refused, c is silent: not "unavailable"
    neighbours = {**REGIONS, "a": RegionInfo("a", "a.example", neighbours=("c",))}
    o = Overflow(OverflowConfig(), neighbours, rules().view)
    assert o.on_request(request(), None, None, NOW).requests[0].target == "c"


def test_past_deadline_is_ignored_and_leaves_no_hold():
    o = rules()
    assert o.on_request(request(deadline=NOW - 0.1), None, None, NOW) == Decision()
    row = o.on_request(request(), None, None, NOW).requests[0]
    late = o.on_hold_answer(held(), row, None, NOW + 4.6)  # past the hold request's deadline
    assert not late.holds and not late.requests
    [release] = parsed(late, "hold/request", "b")
    assert release == PC.HoldRelease(XID, "b", "car-1", "rb1")
    # expired by the tick, an answer still in its own deadline is not awaited any more
    [expired] = o.tick([row], [], NOW + 6).requests
    assert expired.state == "expired"
    d = o.on_hold_answer(held(deadline=NOW + 100), expired, None, NOW + 7)
    assert not d.holds and parsed(d, "hold/request", "b") == [release]
    # an ok answer for a request central never saw, or from a region not asked: released
    assert parsed(o.on_hold_answer(held(), None, None, NOW + 1), "hold/request", "b") == [release]
    d = o.on_hold_answer(held(region="c", station="c1"), row, None, NOW + 1)
    assert not d.holds and parsed(d, "hold/request", "c")[0].reservation == "rb1"


def test_abandon_releases_the_hold_and_events_follow_it():
    o = rules()
    row = o.on_request(request(), None, None, NOW).requests[0]
    d = o.on_hold_answer(held(), row, None, NOW + 1)
    row, hold = d.requests[-1], d.holds[0]
    ev = PC.HoldEvent(XID, "b", "confirmed", "rb1")
    [confirmed] = o.on_hold_event(ev, hold, NOW + 20).holds
    assert confirmed.state == "confirmed"
    assert not o.on_hold_event(replace(ev, reservation="other"), hold, NOW + 20).holds
    d = o.on_request(PC.OverflowAbandon(XID, "a"), row, hold, NOW + 6)
    assert d.requests[0].state == "abandoned" and d.holds[0].state == "released"
    assert parsed(d, "hold/request", "b") == [PC.HoldRelease(XID, "b", "car-1", "rb1")]
    assert o.on_request(PC.OverflowAbandon(XID, "x"), row, hold, NOW + 6) == Decision()  # not its origin
    [lapsed] = o.tick([], [hold], NOW + 200).holds
    assert lapsed.state == "expired"


def test_a_region_without_a_broker_address_is_never_where_a_car_is_sent():
    view = view_with(summary("z", [("z1", 52.53, 13.40, 2, None)]))
    o = Overflow(OverflowConfig(), {**REGIONS, "a": RegionInfo("a", "a.example", neighbours=())}, view)
    row = RequestRow(XID, "a", "car-1", NEED.to_fields(), None, NOW + 5, "holding", "z", "z1", ("z",), None, NOW, NOW)
    d = o.on_hold_answer(held(region="z", station="z1"), row, None, NOW + 1)
    assert not d.holds and parsed(d, "overflow/answer", "a")[0].error["code"] == PC.OVERFLOW_UNAVAILABLE
    assert parsed(d, "hold/request", "z")[0].reservation == "rb1"

"""The demo's cast and timeline: who is where, and the scenes they play.

Eight real stations around Alexanderplatz (ids from the Berlin register) come online; every
other station of the register stays offline, so only these eight can be assigned. Ten cars
with real models from Open EV Data ask for them. The scenes walk through the reservation
lifecycle of docs/protocol.md; each scene checks that the gateway did what the protocol says
and the run fails (exit 1) if it did not.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from demo.actors import Car, DemoError, Station, hm, hms
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

if TYPE_CHECKING:
    from demo.run import Demo

# Around Alexanderplatz: 3 DC fast chargers, 5 AC stations (Ladeeinrichtungs-ID of the register).
STATIONS = (
    "1043260",  # Allego, Alexanderstr. 4: 2 x 150 kW DC
    "1147016",  # Berliner Stadtwerke, Otto-Braun-Str. 70-72: 2 x 150 kW DC
    "1102174",  # Tesla, Grunerstraße 20: 1 x 250 kW DC
    "1017553",  # Berliner Stadtwerke, Alexanderstr. 9: 2 x 11 kW AC
    "1063791",  # E.ON Drive, Dircksenstr. 103: 2 x 22 kW AC
    "1081938",  # eze.network, Alex-Wedding-Straße 3: 2 x 22 kW AC
    "1082205",  # eze.network, Rosa-Luxemburg-Straße 19: 2 x 22 kW AC
    "1032052",  # TotalEnergies, Littenstr. 9: 2 x 22 kW AC
)

IONIQ5 = ("Hyundai", "Ioniq 5", "")
ID3 = ("Volkswagen", "ID.3", "58 kWh")
ZOE = ("Renault", "Zoe", "R135 ZE50")
MODEL3 = ("Tesla", "Model 3", "LR")


@dataclass(frozen=True)
class CarSpec:
    cid: str
    model: tuple[str, str, str]  # brand, model, variant in data/ev_models_open_ev_data.json
    where: str
    lat: float
    lon: float
    soc: float


CARS = (
    CarSpec("ioniq5-1", IONIQ5, "Hackescher Markt", 52.5225, 13.4025, 0.15),
    CarSpec("id3-1", ID3, "Rosenthaler Platz", 52.5296, 13.4015, 0.18),
    CarSpec("zoe-1", ZOE, "Jannowitzbrücke", 52.5150, 13.4180, 0.20),
    CarSpec("model3-1", MODEL3, "Strausberger Platz", 52.5183, 13.4325, 0.12),
    # the rush-hour racers
    CarSpec("id3-2", ID3, "Spittelmarkt", 52.5113, 13.4035, 0.14),
    CarSpec("ioniq5-2", IONIQ5, "Senefelderplatz", 52.5325, 13.4125, 0.16),
    CarSpec("zoe-2", ZOE, "Friedrichstraße", 52.5202, 13.3868, 0.17),
    CarSpec("model3-2", MODEL3, "Märkisches Museum", 52.5122, 13.4107, 0.13),
    CarSpec("ioniq5-3", IONIQ5, "Weinmeisterstraße", 52.5254, 13.4057, 0.11),
    CarSpec("model3-3", MODEL3, "Schillingstraße", 52.5203, 13.4219, 0.15),
)
RACERS = ("id3-2", "ioniq5-2", "zoe-2", "model3-2", "ioniq5-3", "model3-3")
NOT_A_STATION = "9999999"  # a well-formed station id the register does not have


def play(demo: Demo) -> None:
    book_charge_leave(demo)
    lapsing = never_confirms(demo)
    bad_requests(demo)
    same_request_twice(demo)
    slot_breaks_down(demo)
    hold_lapses(demo, *lapsing)
    rush_hour(demo)
    wrap_up(demo)


# ---------------------------------------------------------------- helpers

def ok(demo: Demo, car: Car, reply: dict[str, Any], op: str) -> dict[str, Any]:
    """The reservation of a successful reply; a failed one ends the demo with its error."""
    if not reply.get("ok") or reply.get("op") != op:
        raise DemoError(f"{car.cid}: expected a successful '{op}' reply, got {reply}")
    return reply["reservation"]


def station_of(demo: Demo, r: dict[str, Any]) -> Station:
    st = demo.stations.get(r["station"])
    if st is None:
        raise DemoError(f"the gateway assigned {r['station']}, which is not online in this demo")
    return st


def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    try:
        return wait_until(pred, timeout, what, every=0.02)
    except TimeoutError:
        raise DemoError(f"{what} did not happen within {timeout:g} s") from None


def drive_there(demo: Demo, car: Car, r: dict[str, Any]) -> None:
    minutes = max(1, round((r["eta"] - time.time()) / 60))
    demo.tl.note(f"{car.cid} drives {r['distance_km']:.1f} km to {r['station']} "
                 f"(about {minutes} min; the demo takes {demo.pace.drive:g} s)")
    time.sleep(demo.pace.drive)


def plug_in(demo: Demo, car: Car, r: dict[str, Any]) -> None:
    st, slot = station_of(demo, r), r["slot"]
    mark, cmds = len(car.inbox), len(st.commands)
    st.set_slots({slot: "occupied"}, f"slot {slot}: {car.cid} plugged in")
    ev = car.wait_event("checked_in", 10, mark)
    demo.check(ev["reservation"]["id"] == r["id"], f"{car.cid} checked in on {r['id']}")
    demo.cast[f"{car.cid} done"] = time.time() + ev["reservation"]["charge_min"] * 60
    # the slot is no longer held for anyone: the gateway drops its reserved flag
    released(demo, st, slot, cmds)


def unplug(demo: Demo, car: Car, r: dict[str, Any]) -> None:
    st, slot = station_of(demo, r), r["slot"]
    mark = len(car.inbox)
    st.set_slots({slot: "free"}, f"slot {slot}: {car.cid} unplugged and left")
    ev = car.wait_event("completed", 10, mark)
    demo.check(ev["reservation"]["id"] == r["id"], f"{car.cid}'s reservation {r['id']} completed")


def released(demo: Demo, st: Station, slot: int, since: int) -> None:
    until(lambda: st.got_command("release", slot, since), 10, f"release of {st.sid} slot {slot}")


# ---------------------------------------------------------------- scenes

def book_charge_leave(demo: Demo) -> None:
    demo.tl.scene("1 · A driver books a slot, confirms, drives there, charges and leaves")
    car = demo.cars["ioniq5-1"]
    r = ok(demo, car, car.reserve(), "reserve")
    demo.pause()
    ok(demo, car, car.confirm(r["id"]), "confirm")
    drive_there(demo, car, r)
    plug_in(demo, car, r)
    demo.tl.note(f"{car.cid} charges for about {r['charge_min']:.0f} min "
                 f"(the demo takes {demo.pace.charge:g} s)")
    time.sleep(demo.pace.charge)
    unplug(demo, car, r)


def never_confirms(demo: Demo) -> tuple[Car, dict[str, Any], int]:
    demo.tl.scene("2 · A driver asks but never confirms (the hold will lapse later on)")
    car = demo.cars["id3-1"]
    r = ok(demo, car, car.reserve(), "reserve")
    st = station_of(demo, r)
    mark = len(st.commands)
    demo.tl.note(f"{car.cid} stays silent: its hold on {r['station']} slot {r['slot']} lapses at "
                 f"{hms(r['hold_until'])} ([reservations] hold_s = {demo.pace.hold_s:g}); the demo goes on")
    return car, r, mark


def bad_requests(demo: Demo) -> None:
    demo.tl.scene("3 · Bad requests get an error reply with a code, and change nothing")
    car = demo.cars["zoe-1"]
    rid = car.next_rid()
    car.say_reserve(rid, " but with soc 1.7 (a broken battery reading)")
    reply = car.ask(rid, car.reserve_payload(rid, soc=1.7))
    demo.check(not reply["ok"] and reply["error"]["code"] == W.OUT_OF_RANGE
               and reply["error"].get("field") == "soc", "soc 1.7 answered with out_of_range (field soc)")
    demo.pause()
    rid = car.next_rid()
    car.say_reserve(rid, f", only at station {NOT_A_STATION}")
    reply = car.ask(rid, car.reserve_payload(rid, station=NOT_A_STATION))
    demo.check(not reply["ok"] and reply["error"]["code"] == D.UNKNOWN_STATION,
               f"station {NOT_A_STATION} answered with unknown_station")


def same_request_twice(demo: Demo) -> None:
    demo.tl.scene("4 · The same request id twice (a retry, or a QoS 1 redelivery) gets the same answer")
    car = demo.cars["zoe-1"]
    rid = car.next_rid()
    payload = car.reserve_payload(rid)
    car.say_reserve(rid)
    first = car.ask(rid, payload)
    r = ok(demo, car, first, "reserve")
    demo.pause()
    demo.tl.event(car.who, "->", "gateway", f"reserve? rid {rid} again, the very same message")
    second = car.ask(rid, payload)
    demo.check(second == first, f"same answer for the repeated rid {rid}: reservation {r['id']}, "
                                "nothing booked twice")
    demo.pause()
    st = station_of(demo, r)
    mark = len(st.commands)
    ok(demo, car, car.cancel(r["id"]), "cancel")
    released(demo, st, r["slot"], mark)


def slot_breaks_down(demo: Demo) -> None:
    demo.tl.scene("5 · A reserved slot goes out of service: the car gets a new offer")
    car = demo.cars["model3-1"]
    r = ok(demo, car, car.reserve(), "reserve")
    demo.pause()
    ok(demo, car, car.confirm(r["id"]), "confirm")
    demo.pause()
    st, slot = station_of(demo, r), r["slot"]
    mark = len(car.inbox)
    st.set_slots({slot: "out_of_service"}, f"slot {slot} broke down")
    ev = car.wait_event("faulted", 10, mark)
    offer = ev.get("offer")
    demo.check(ev["reservation"]["id"] == r["id"] and ev["reservation"]["state"] == "faulted"
               and offer is not None and (offer["station"], offer["slot"]) != (r["station"], slot),
               f"{r['id']} faulted, with a new offer on another slot")
    if offer is None:
        return
    demo.pause()
    ok(demo, car, car.confirm(offer["id"]), "confirm")
    demo.cast["model3-1"] = offer  # charging there until the wrap-up
    drive_there(demo, car, offer)
    plug_in(demo, car, offer)


def hold_lapses(demo: Demo, car: Car, r: dict[str, Any], mark: int) -> None:
    demo.tl.scene("6 · The unconfirmed hold lapses: the gateway frees the slot")
    left = r["hold_until"] - time.time()
    if left > 0:
        demo.tl.note(f"waiting {left:.0f} s for {car.cid}'s hold to lapse at {hms(r['hold_until'])}")
    ev = car.wait_event("expired", max(0.0, left) + 10)
    demo.check(ev["reservation"]["id"] == r["id"], f"{car.cid}'s hold {r['id']} expired")
    st = station_of(demo, r)
    released(demo, st, r["slot"], mark)
    demo.check(True, f"station {st.sid} was told to release slot {r['slot']}")


def rush_hour(demo: Demo) -> None:
    demo.tl.scene(f"7 · Rush hour: {len(RACERS)} cars ask at the same moment; two fast chargers are left")
    # walk-in drivers (no reservation; the gateway expects them to stay an hour) take every
    # free slot but one fast charger at each of two stations
    keep: list[tuple[Station, int]] = []
    for st in demo.stations.values():
        dc = [k for k in st.free_slots() if st.meta.slots[k - 1].dc]
        if dc and len(keep) < 2:
            keep.append((st, dc[0]))
    for st in demo.stations.values():
        walk_ins = {k: "occupied" for k in st.free_slots() if (st, k) not in keep}
        if walk_ins:
            st.set_slots(walk_ins, "walk-in drivers plugged in, no reservation")
    demo.wait_gateway_sees_stations()
    # what is on each slot already: (who, start, end)
    sessions: dict[tuple[str, int], list[tuple[str, float, float]]] = {}
    charging = demo.cast.get("model3-1")
    if charging is not None:
        sessions[(charging["station"], charging["slot"])] = [("model3-1", time.time(), demo.cast["model3-1 done"])]
    demo.tl.note("free now: " + "; ".join(
        f"{st.sid} slot {k} ({st.label}, {st.meta.slots[k - 1].power_kw:g} kW)" for st, k in keep)
        + (f"; {charging['station']} slot {charging['slot']} frees up at about "
           f"{hm(demo.cast['model3-1 done'])} (model3-1 is charging there)" if charging else "")
        + f"; everything else is taken for an hour or out of service. A car may queue for a slot "
          f"that frees within max_wait_s ({demo.max_wait_s / 60:g} min).")
    racers = [demo.cars[c] for c in RACERS]
    asks = []
    for car in racers:
        rid = car.next_rid()
        car.say_reserve(rid)
        asks.append((car, rid, car.reserve_payload(rid)))
    demo.tl.note(f"the {len(asks)} requests are published at the same instant (threads behind a barrier)")
    barrier = threading.Barrier(len(asks))
    marks: dict[str, int] = {}

    def fire(car: Car, payload: bytes) -> None:
        barrier.wait()
        marks[car.cid] = car.send(payload)

    threads = [threading.Thread(target=fire, args=(car, payload)) for car, _, payload in asks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    replies = {car.cid: car.answer(rid, marks[car.cid]) for car, rid, _ in asks}
    won = {cid: rep["reservation"] for cid, rep in replies.items() if rep["ok"]}
    lost = {cid: rep["error"]["code"] for cid, rep in replies.items() if not rep["ok"]}

    at_once = sorted((r["station"], r["slot"]) for r in won.values() if r["wait_min"] == 0)
    demo.check(at_once == sorted((st.sid, k) for st, k in keep),
               f"each of the {len(keep)} free slots went to exactly one car at once")
    for cid, r in won.items():
        start = r["eta"] + r["wait_min"] * 60
        sessions.setdefault((r["station"], r["slot"]), []).append((cid, start, start + r["charge_min"] * 60))
    overlap = False
    for (sid, k), booked in sorted(sessions.items()):
        booked.sort(key=lambda b: b[1])
        # the reply rounds wait and charge to 0.1 min: allow 10 s
        overlap |= any(b[1] < a[2] - 10 for a, b in pairwise(booked))
        demo.tl.note(f"{sid} slot {k}: " + ", then ".join(
            f"{who} {hm(a)}–{hm(b)}" for who, a, b in booked))
    demo.check(not overlap, "no slot carries two overlapping reservations: the later cars queue "
                            "behind the earlier ones (wait > 0)")
    demo.check(bool(lost) and all(code == W.NO_CAPACITY for code in lost.values()),
               "the cars left over were told no_capacity: " + (", ".join(lost) or "nobody"))
    for cid, r in won.items():
        demo.pause()
        ok(demo, demo.cars[cid], demo.cars[cid].confirm(r["id"]), "confirm")


def wrap_up(demo: Demo) -> None:
    demo.tl.scene("8 · The car from scene 5 finishes charging")
    offer = demo.cast.get("model3-1")
    if offer is not None:
        unplug(demo, demo.cars["model3-1"], offer)

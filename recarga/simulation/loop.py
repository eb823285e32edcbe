"""The discrete-event loop: simulated clock, an event heap, no sleeping.

It drives the real `recarga.gateway.engine.Engine` with the protocol's JSON messages, exactly as the
MQTT adapter would: car requests through `car_message`, station boards through
`station_online`/`station_status`, the clock through `tick`. The engine's replies, car
events and station commands are routed back to the simulated cars and stations.

Two ways a car uses its app (docs/simulation.md):

- `least_completion` (Recarga): ask, confirm the held reservation, drive to the slot, plug in
  when the slot is free and the reservation is next on it, charge, unplug. A no-show
  confirms and never comes; the engine expires it.
- the baselines (`nearest`, `most_free`, `shortest_queue`): an advisory app. The same engine
  runs the baseline policy on the same live station state and names a station; the app
  holds nothing (the car cancels the offer at once, so no reservation ever blocks a slot),
  and the driver queues at the station first come, first served for any slot the car can use.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from recarga.core.evmodels import charge_seconds
from recarga.core.model import StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.core.selection import haversine_km
from recarga.gateway.engine import Engine, EngineConfig, Result
from recarga.simulation.demand import CarPlan
from recarga.simulation.sites import Site

RESERVING = "least_completion"

# Car states. Final: finished, stranded, no_show. The rest are "in progress".
PENDING, DRIVING, ASKING, HEADING, WAITING, CHARGING = "pending", "driving", "asking", "heading", "waiting", "charging"
FINISHED, STRANDED, NO_SHOW, GAVE_UP = "finished", "stranded", "no_show", "gave_up"
FINAL = frozenset((FINISHED, STRANDED, NO_SHOW, GAVE_UP))

_APPEAR, _ASK, _ARRIVE, _UNPLUG, _DEADLINE, _CHECK, _HOUSEKEEP, _PATIENCE = range(8)
_LEAVE = 8  # a car that stayed plugged in after charging (dwell) frees its slot


@dataclass(frozen=True, slots=True)
class SimConfig:
    policy: str
    engine: EngineConfig
    drain_s: float = 36 * 3600.0  # after the last arrival, run at most this long
    # a car told no_capacity asks again when the earliest slot comes within the horizon, but
    # no sooner than retry_min_s, doubling with each refusal in a row up to retry_max_s (the
    # firmware backs off too; without it every parked car asks whenever any slot frees)
    retry_min_s: float = 60.0
    retry_max_s: float = 600.0
    housekeeping_s: float = 3600.0  # periodic engine tick (request memory)
    day_s: float | None = None  # the day cars appear in (utilisation's window); None: to the last
    # a driver who has waited this long (parked after refusals or queueing on site, driving
    # not counted) leaves without charging and counts as gave up; math.inf: nobody gives up
    patience_s: float = 1800.0


def engine_config(policy: str, base: EngineConfig | None = None) -> EngineConfig:
    """The gateway's defaults for Recarga. Advisory baselines always name a station (no
    max_wait horizon: "the car queues if all are busy"), as their designs describe."""
    cfg = replace(base or EngineConfig(region="sim"), policy=policy)
    if policy != RESERVING:
        cfg = replace(cfg, max_wait_s=math.inf)
    return cfg


@dataclass(slots=True)
class CarRun:
    """One car's life and bookkeeping (the metrics read these)."""

    plan: CarPlan
    state: str = PENDING
    lat: float = 0.0
    lon: float = 0.0
    soc: float = 0.0
    ask_s: float | None = None  # first request
    arrive_s: float | None = None
    plug_s: float | None = None
    leave_s: float | None = None  # unplugged, or gave up
    charge_end_s: float | None = None  # the battery reached its target
    drive_s: float = 0.0  # driving after the first request
    drive_km: float = 0.0  # road km, all legs
    energy_driven_kwh: float = 0.0
    energy_charged_kwh: float = 0.0
    soc_plug: float | None = None
    station: str | None = None
    slot: int | None = None  # 1-based
    reservation: str | None = None
    requests: int = 0  # reserve requests sent
    refused: int = 0  # no_capacity answers in a row
    est_charge_s: float | None = None  # the charge time the gateway's answer predicted
    expired: int = 0  # times its reservation expired while it was on its way or waiting


@dataclass(slots=True)
class Session:
    station: str
    slot: int
    car: int
    start: float
    end: float
    power_kw: float
    energy_kwh: float


@dataclass(slots=True)
class SimResult:
    policy: str
    cars: list[CarRun]
    sessions: list[Session]
    stations: list[StationMeta]
    day_s: float
    end_s: float
    decisions: int = 0
    decision_s: float = 0.0  # wall time inside the engine for reserve requests
    wall_s: float = 0.0
    anomalies: list[str] = field(default_factory=list)


class _SiteAwareEngine(Engine):
    """The real engine; the only difference is what `queue_len` (read by the
    shortest_queue baseline alone) counts: besides occupied slots and reservations, the
    cars physically waiting on site, as a station-side queue counter would report. An
    advisory app holds no reservations, so without this it would be blind to its queues."""

    def __init__(self, config: EngineConfig, stations: list[StationMeta],
                 waiting_at: Callable[[str], int]) -> None:
        super().__init__(config, stations)
        self.waiting_at = waiting_at
        self._free: dict[str, int] = {}  # free_slots with no reservation anywhere

    def queue_len(self, station_id: str) -> int:
        return super().queue_len(station_id) + self.waiting_at(station_id)

    def free_slots(self, station_id: str) -> int:
        # Speed only, the same value as Engine.free_slots (a test checks it): most_free asks
        # it for every station in reach on every decision. With no reservation anywhere (an
        # advisory app between decisions) it is the count of free/reserved slots in the
        # station's last status, kept up to date as statuses arrive.
        if self.by_slot:
            return super().free_slots(station_id)
        return self._free.get(station_id, 0)

    def _count_free(self, sid: str) -> None:
        live = self.live.get(sid)
        ok = live is not None and live.online and live.slots is not None
        self._free[sid] = sum(1 for s in live.slots if s in ("free", "reserved")) if ok else 0

    def station_status(self, sid: str, payload: bytes, now: float) -> Result:
        res = super().station_status(sid, payload, now)
        self._count_free(sid)
        return res

    def station_online(self, sid: str, payload: bytes, now: float) -> Result:
        res = super().station_online(sid, payload, now)
        self._count_free(sid)
        return res

    def station_meta(self, sid: str, payload: bytes, now: float) -> Result:
        res = super().station_meta(sid, payload, now)
        self._count_free(sid)
        return res


class Simulation:
    def __init__(self, cfg: SimConfig, stations: list[StationMeta], plans: list[CarPlan],
                 progress: Callable[[float], None] | None = None) -> None:
        self.cfg = cfg
        self.reserving = cfg.policy == RESERVING
        self.params = cfg.engine.selection
        self.region = cfg.engine.region
        self.sites = {s.id: Site(s) for s in stations}
        self.engine = _SiteAwareEngine(cfg.engine, stations, lambda sid: len(self.sites[sid].fcfs))
        self.cars = [CarRun(plan=p) for p in plans]
        self.index = {p.car: i for i, p in enumerate(plans)}
        self.sessions: list[Session] = []
        self.heap: list[tuple] = []
        self.seq = 0
        self.now = 0.0
        self.day_s = cfg.day_s if cfg.day_s is not None else max((p.appear_s for p in plans), default=0.0)
        self.decisions = 0
        self.decision_s = 0.0
        self.anomalies: list[str] = []
        self._progress = progress
        self._rid = 0

    # ------------------------------------------------------------------ plumbing

    def _push(self, t: float, kind: int, a: object = None, b: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    def _apply(self, res: Result) -> None:
        """Route the engine's outbound messages: events to cars, commands to station boards
        (a request's reply is Result.reply, taken by _request)."""
        for out in res.messages:
            ref = D.parse_topic(self.region, out.topic)
            if ref is None:
                self.anomalies.append(f"unroutable topic {out.topic}")
            elif ref.kind == "station":
                self.sites[ref.id].command(out.payload)
            elif "event" in out.payload:
                self._car_event(self.index[ref.id], out.payload)
        if self.reserving:
            for r in res.changed:  # a queue may have moved: its next car may be waiting on site
                self._push(self.now, _CHECK, r.station, r.slot - 1)

    def _request(self, i: int, msg: dict, decision: bool = False) -> dict:
        car = self.cars[i].plan.car
        payload = W.encode(msg)
        t0 = time.perf_counter()
        res = self.engine.car_message(car, payload, self.now)
        if decision:
            self.decision_s += time.perf_counter() - t0
            self.decisions += 1
        self._apply(res)
        assert res.reply is not None  # the engine answers every car request
        return res.reply

    def _status(self, site: Site) -> None:
        self._apply(self.engine.station_status(site.meta.id, site.status(), self.now))

    def _next_rid(self) -> str:
        self._rid += 1
        return f"q{self._rid}"

    # ------------------------------------------------------------------ run

    def run(self) -> SimResult:
        wall = time.perf_counter()
        for sid, site in self.sites.items():  # every board comes online and reports
            self._apply(self.engine.station_online(sid, W.online_message(True), 0.0))
            self._status(site)
        for i, c in enumerate(self.cars):
            self._push(c.plan.appear_s, _APPEAR, i)
        self._push(self.cfg.housekeeping_s, _HOUSEKEEP)
        stop = self.day_s + self.cfg.drain_s
        handlers = {_APPEAR: self._appear, _ASK: self._ask, _ARRIVE: self._arrive,
                    _UNPLUG: self._unplug, _DEADLINE: self._deadline, _CHECK: self._check,
                    _HOUSEKEEP: self._housekeep, _PATIENCE: self._patience, _LEAVE: self._leave}
        open_cars = len(self.cars)
        last_report = -math.inf
        while self.heap:
            t, _, kind, a, b = heapq.heappop(self.heap)
            if t > stop:
                break
            self.now = t
            handlers[kind](a, b)
            if self._progress is not None and t - last_report >= 900.0:
                self._progress(t)
                last_report = t
            if kind == _HOUSEKEEP:
                open_cars = sum(1 for c in self.cars if c.state not in FINAL)
                if open_cars == 0 and t >= self.day_s:
                    break
        end = self.now
        if self._progress is not None:
            self._progress(stop)
        return SimResult(self.cfg.policy, self.cars, self.sessions, [s.meta for s in self.sites.values()],
                         self.day_s, end, self.decisions, self.decision_s,
                         time.perf_counter() - wall, self.anomalies)

    # ------------------------------------------------------------------ car life

    def _appear(self, i: int, _: object) -> None:
        c = self.cars[i]
        p = c.plan
        c.state, c.soc = DRIVING, p.soc_start
        c.lat, c.lon = p.origin
        self._push(self.now + p.leg_km / self.params.speed_kmh * 3600.0, _ASK, i, "first")

    def _drive(self, c: CarRun, km_road: float) -> None:
        e = km_road * c.plan.model.consumption_kwh_100km / 100.0
        c.energy_driven_kwh += e
        c.drive_km += km_road
        c.soc -= e / c.plan.model.battery_kwh

    def _ask(self, i: int, why: object) -> None:
        c = self.cars[i]
        if c.state in FINAL:
            return
        if why == "first":
            self._drive(c, c.plan.leg_km)
            c.lat, c.lon = c.plan.ask_at
            c.ask_s = self.now
            if math.isfinite(self.cfg.patience_s):
                self._push(self.now + self.cfg.patience_s, _PATIENCE, i)
        if not c.plan.app:
            self._go_without_app(i)
            return
        m = c.plan.model
        c.state = ASKING
        if isinstance(why, dict):  # a faulted event's offer: the app takes it as its answer
            reply = {"ok": True, "reservation": why}
        else:
            c.requests += 1
            reply = self._request(i, D.reserve_request(
                self._next_rid(), c.plan.car, lat=c.lat, lon=c.lon, soc=c.soc,
                battery_kwh=m.battery_kwh, consumption_kwh_100km=m.consumption_kwh_100km,
                max_ac_kw=m.max_ac_kw, max_dc_kw=m.max_dc_kw, target_soc=c.plan.target_soc), decision=True)
        if not reply["ok"]:
            err = reply["error"]
            if err["code"] != W.NO_CAPACITY:
                self.anomalies.append(f"{c.plan.car}: {err}")
                c.state = STRANDED
            elif err.get("earliest_free") is None:
                c.state = STRANDED  # nothing usable within reach
            else:
                # parked where it is, asks again when something should be within the horizon
                c.state = WAITING
                backoff = min(self.cfg.retry_min_s * 2.0 ** c.refused, self.cfg.retry_max_s)
                c.refused += 1
                again = max(self.now + backoff, err["earliest_free"] - self.cfg.engine.max_wait_s + 1.0)
                self._push(again, _ASK, i, "retry")
            return
        c.refused = 0
        r = reply["reservation"]
        rid = r["id"]
        c.est_charge_s = r["charge_min"] * 60.0
        if self.reserving:
            conf = self._request(i, D.reservation_request("confirm", self._next_rid(), c.plan.car, rid))
            if not conf["ok"]:
                self.anomalies.append(f"{c.plan.car}: confirm refused {conf['error']}")
            # the engine expires a confirmed reservation at its deadline unless checked in
            self._push(conf["reservation"]["hold_until"] + 1.0, _DEADLINE, i, rid)
            c.reservation = rid
        else:
            # advisory app: the answer is advice only, nothing is held for the car
            canc = self._request(i, D.reservation_request("cancel", self._next_rid(), c.plan.car, rid))
            if not canc["ok"]:
                self.anomalies.append(f"{c.plan.car}: cancel refused {canc['error']}")
        if c.plan.no_show:
            c.state = NO_SHOW
            return
        site = self.sites[r["station"]]
        d_road = haversine_km(c.lat, c.lon, site.meta.lat, site.meta.lon) * self.params.road_factor
        drive = d_road / self.params.speed_kmh * 3600.0
        c.state, c.station, c.slot = HEADING, r["station"], r["slot"]
        c.drive_s += drive
        self._drive(c, d_road)
        c.lat, c.lon = site.meta.lat, site.meta.lon
        self._push(self.now + drive, _ARRIVE, i)

    def _arrive(self, i: int, _: object) -> None:
        c = self.cars[i]
        if c.state != HEADING:
            return  # re-routed meanwhile
        c.state = WAITING
        if c.arrive_s is None:
            c.arrive_s = self.now
        site = self.sites[c.station]
        if self.reserving and c.plan.app:
            site.present.setdefault(c.slot - 1, []).append(i)
            self._check(site, c.slot - 1)
            return
        # first come, first served: the fastest free slot the car can use, else the queue
        best = None
        for k, slot in enumerate(site.meta.slots):
            if site.occupant[k] is None and self._usable(c, k, site):
                t = self._charge_time(c, site, k)
                if best is None or t < best[0]:
                    best = (t, k)
        if best is None:
            site.fcfs.append(i)
        else:
            self._plug(i, site, best[1])

    @staticmethod
    def _usable(c: CarRun, k: int, site: Site) -> bool:
        m = c.plan.model
        return (m.max_dc_kw if site.meta.slots[k].dc else m.max_ac_kw) > 0

    @staticmethod
    def _charge_time(c: CarRun, site: Site, k: int) -> float:
        slot = site.meta.slots[k]
        m = c.plan.model
        curve = m.power_curve(slot.power_kw, slot.dc)
        return charge_seconds(curve, m.battery_kwh, c.soc, max(c.soc, c.plan.target_soc))

    def _check(self, site: Site, k: object) -> None:
        """A reserving car waiting at slot k plugs in once the slot is free and its
        reservation is the next one on it (what the slot's reserved indication shows)."""
        if not isinstance(site, Site):
            site = self.sites[site]
        k = int(k)
        if site.occupant[k] is not None:
            return
        waiting = site.present.get(k)
        if not waiting:
            return
        head = self._head(site.meta.id, k + 1)
        for i in waiting:
            if self.cars[i].reservation == head:
                waiting.remove(i)
                self._plug(i, site, k)
                return

    def _head(self, sid: str, slot: int) -> str | None:
        """The reservation next on a slot, read from the engine without changing it."""
        eng = self.engine
        for rid in eng.by_slot.get((sid, slot), ()):
            if eng.reservations[rid].state != "checked_in":
                return rid
        return None

    def _plug(self, i: int, site: Site, k: int) -> None:
        c = self.cars[i]
        c.state, c.plug_s, c.slot, c.soc_plug = CHARGING, self.now, k + 1, c.soc
        dur = self._charge_time(c, site, k)
        site.occupant[k] = i
        before = len(self.anomalies)
        self._status(site)
        if self.reserving and c.reservation is not None and len(self.anomalies) == before:
            # the engine must have checked in exactly this car's reservation
            r = self.engine.reservations.get(c.reservation)
            if r is None or r.state != "checked_in":
                self.anomalies.append(f"{c.plan.car}: plugged in but reservation not checked in")
        self._push(self.now + dur, _UNPLUG, i)

    def _unplug(self, i: int, _: object) -> None:
        c = self.cars[i]
        site = self.sites[c.station]
        k = c.slot - 1
        m = c.plan.model
        target = max(c.soc_plug, c.plan.target_soc)
        energy = (target - c.soc_plug) * m.battery_kwh
        slot = site.meta.slots[k]
        self.sessions.append(Session(c.station, c.slot, i, c.plug_s, self.now,
                                     slot.power_kw, energy))
        c.energy_charged_kwh += energy
        c.soc = target
        c.state, c.leave_s, c.charge_end_s = FINISHED, self.now, self.now
        c.reservation = None
        if c.plan.dwell_s > 0:  # stays plugged in: the slot stays occupied, the board says so
            c.leave_s = self.now + c.plan.dwell_s
            self._push(c.leave_s, _LEAVE, i)
            return
        self._free(site, k)

    def _leave(self, i: int, _: object) -> None:
        c = self.cars[i]
        self._free(self.sites[c.station], c.slot - 1)

    def _free(self, site: Site, k: int) -> None:
        """Slot k is unplugged: the board reports it free; the next car waiting takes it (a
        reserving car whose reservation is next, else the first on-site queuer who can use it:
        a car without the app, or any car under an advisory app)."""
        site.occupant[k] = None
        self._status(site)
        if self.reserving:
            self._check(site, k)
            if site.occupant[k] is not None:
                return
        for n, j in enumerate(site.fcfs):  # first in the queue that can use this slot
            if self._usable(self.cars[j], k, site):
                del site.fcfs[n]
                self._plug(j, site, k)
                return

    def _go_without_app(self, i: int) -> None:
        """A driver without the app asks nobody: drives to the nearest station with a slot the
        car can use within its range and takes a free slot there (reservations unseen), else
        queues on site. The gateway learns of it only from the station's status."""
        c = self.cars[i]
        m = c.plan.model
        reach_km = (c.soc - self.params.safety_margin_soc) * m.battery_kwh * 100.0 / m.consumption_kwh_100km
        best = None
        for sid, site in self.sites.items():
            if not any((m.max_dc_kw if sl.dc else m.max_ac_kw) > 0 for sl in site.meta.slots):
                continue
            d_road = haversine_km(c.lat, c.lon, site.meta.lat, site.meta.lon) * self.params.road_factor
            if d_road <= reach_km and (best is None or d_road < best[0]):
                best = (d_road, sid)
        if best is None:
            c.state = STRANDED
            return
        d_road, sid = best
        site = self.sites[sid]
        drive = d_road / self.params.speed_kmh * 3600.0
        c.state, c.station = HEADING, sid
        c.drive_s += drive
        self._drive(c, d_road)
        c.lat, c.lon = site.meta.lat, site.meta.lon
        self._push(self.now + drive, _ARRIVE, i)

    def _deadline(self, i: int, rid: object) -> None:
        c = self.cars[i]
        if c.reservation == rid and c.state in (HEADING, WAITING, NO_SHOW):
            self._tick()
            r = self.engine.reservations.get(rid)
            if c.reservation == rid and r is not None and r.deadline + 1.0 > self.now:
                self._push(r.deadline + 1.0, _DEADLINE, i, rid)  # an engine that moved it

    def _patience(self, i: int, _: object) -> None:
        """The driver's patience runs out after patience_s of waiting (driving excluded): one
        still waiting leaves, cancelling any reservation it holds."""
        c = self.cars[i]
        if c.state in FINAL or c.state == CHARGING or c.ask_s is None:
            return
        due = c.ask_s + c.drive_s + self.cfg.patience_s  # driving since the check moves it on
        if c.state != WAITING or due > self.now:
            self._push(max(due, self.now + 1.0), _PATIENCE, i)
            return
        if c.station is not None:
            site = self.sites[c.station]
            if i in site.fcfs:
                site.fcfs.remove(i)
            lst = site.present.get(c.slot - 1, []) if c.slot is not None else []
            if i in lst:
                lst.remove(i)
        rid, c.reservation = c.reservation, None
        c.state, c.leave_s = GAVE_UP, self.now
        if rid is not None:
            canc = self._request(i, D.reservation_request("cancel", self._next_rid(), c.plan.car, rid))
            if not canc["ok"]:
                self.anomalies.append(f"{c.plan.car}: cancel on giving up refused {canc['error']}")

    def _housekeep(self, _a: object, _b: object) -> None:
        self._tick()
        self._push(self.now + self.cfg.housekeeping_s, _HOUSEKEEP)

    def _tick(self) -> None:
        self._apply(self.engine.tick(self.now))

    def _car_event(self, i: int, msg: dict) -> None:
        c = self.cars[i]
        ev = msg["event"]
        rid = msg["reservation"]["id"]
        if ev == "expired" and c.reservation == rid:
            c.reservation = None
            if c.state in (HEADING, WAITING):
                # still on its way or waiting on site (the slot was busy past its deadline):
                # the car's app asks again from where it is
                c.expired += 1
                if c.state == WAITING and c.station is not None:
                    lst = self.sites[c.station].present.get(c.slot - 1, [])
                    if i in lst:
                        lst.remove(i)
                if c.state == HEADING:
                    self.anomalies.append(f"{c.plan.car}: expired while heading")
                c.state = WAITING
                self._push(self.now, _ASK, i, "expired")
        elif ev == "completed" and c.reservation == rid and c.state in (HEADING, WAITING):
            # a driver without the app plugged into the slot and the gateway took it for this
            # car (it cannot tell them apart), then saw it leave: the app asks again
            c.reservation = None
            if c.state == WAITING and c.station is not None:
                lst = self.sites[c.station].present.get(c.slot - 1, [])
                if i in lst:
                    lst.remove(i)
            c.state = WAITING
            self._push(self.now, _ASK, i, "taken")
        elif ev == "faulted" and c.reservation == rid and c.state in (HEADING, WAITING):
            # its slot cannot serve it (in time): the app takes the offered slot, or asks again
            c.reservation = None
            if c.state == WAITING and c.station is not None:
                lst = self.sites[c.station].present.get(c.slot - 1, [])
                if i in lst:
                    lst.remove(i)
            c.state = WAITING
            self._push(self.now, _ASK, i, msg.get("offer") or "faulted")


def simulate(cfg: SimConfig, stations: list[StationMeta], plans: list[CarPlan],
             progress: Callable[[float], None] | None = None) -> SimResult:
    return Simulation(cfg, stations, plans, progress).run()

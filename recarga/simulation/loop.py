"""The discrete-event loop: simulated clock, an event heap, no sleeping.

It drives the real `recarga.gateway.engine.Engine` with the protocol's JSON messages, exactly as the
MQTT adapter would: car requests through `car_message`, station boards through
`station_online`/`station_status`, the clock through `tick`. The engine's replies, car
events and station commands are routed back to the simulated cars and stations.

Two ways a car uses its app (docs/simulation.md):

- `least_completion` (Recarga): ask (naming the car's model), confirm the held reservation,
  drive to the slot, plug in when the slot is free and the reservation is next on it, charge,
  unplug; refused, ask again after the reply's retry_after. A no-show confirms and never
  comes; the engine expires it.
- the baselines (`nearest`, `most_free`, `shortest_queue`): an advisory app. The same engine
  runs the baseline policy on the same live station state and names a station; the app
  holds nothing (the car cancels the offer at once, so no reservation ever blocks a slot),
  and the driver takes any free unit of the station's site the car can use, else queues for
  the site first come, first served.
"""
from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from recarga.core.evmodels import CarModel, charge_seconds
from recarga.core.geo import haversine_km
from recarga.core.model import StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.core.selection import reach_km
from recarga.gateway.engine import Engine, EngineConfig, Result
from recarga.simulation.demand import CarPlan
from recarga.simulation.physical import Device, build

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
    # a car that gave up still needs its charge: how long it takes at the fastest unit it
    # could use at the site it waited for (anywhere, if it waited parked); metrics add it
    charge_left_s: float = 0.0


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
    """The real engine; the only difference is what the baselines' two views of a station
    (`free_slots` for most_free, `queue_len` for shortest_queue) count. An advisory app shows
    a driver sites, where the driver takes whichever unit is free: a station's figures are
    its site's (sums over the site's stations), and its queue includes the cars physically
    waiting at the site, as a site's queue counter would report (an app without reservations
    would otherwise be blind to its own queues). Recarga's policy reads neither."""

    def __init__(self, config: EngineConfig, stations: list[StationMeta],
                 waiting_at: Callable[[str], int], models: Mapping[str, CarModel] | None = None) -> None:
        """waiting_at: a station id -> the cars queueing on site at its site."""
        super().__init__(config, stations, models)
        self.waiting_at = waiting_at
        self._site = {s.id: s.site or s.id for s in stations}
        self._members: dict[str, list[str]] = {}
        for s in stations:
            self._members.setdefault(self._site[s.id], []).append(s.id)
        self._free: dict[str, int] = {}  # per station: free slots with no reservation anywhere
        self._site_free: dict[str, int] = {}  # the same, summed per site

    def queue_len(self, station_id: str) -> int:
        members = self._members.get(self._site.get(station_id, ""), (station_id,))
        return sum(Engine.queue_len(self, m) for m in members) + self.waiting_at(station_id)

    def free_slots(self, station_id: str) -> int:
        site = self._site.get(station_id)
        if site is None:
            return super().free_slots(station_id)
        # Speed only, the same value as the sum of Engine.free_slots over the site (a test
        # checks it): most_free asks it for every station in reach on every decision. With no
        # reservation anywhere (an advisory app between decisions) it is the count of
        # free/reserved slots in the site's last statuses, kept up to date as statuses arrive.
        if self.by_slot:
            return sum(Engine.free_slots(self, m) for m in self._members[site])
        return self._site_free.get(site, 0)

    def _count_free(self, sid: str) -> None:
        live = self.live.get(sid)
        ok = live is not None and live.online and live.slots is not None
        n = sum(1 for s in live.slots if s in ("free", "reserved")) if ok else 0
        site = self._site.get(sid)
        if site is not None:
            self._site_free[site] = self._site_free.get(site, 0) + n - self._free.get(sid, 0)
        self._free[sid] = n

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
        self.devices = build(stations)
        # the gateway knows the car models the cars drive (the same models data), by id
        models = {p.model.model_id: p.model for p in plans if p.model.model_id}
        self.engine = _SiteAwareEngine(cfg.engine, stations, lambda sid: len(self.devices[sid].site.fcfs),
                                       models)
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
        self._kind_devices: list[Device] | None = None

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
                self.devices[ref.id].command(out.payload)
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

    def _status(self, dev: Device) -> None:
        self._apply(self.engine.station_status(dev.meta.id, dev.status(), self.now))

    def _next_rid(self) -> str:
        self._rid += 1
        return f"q{self._rid}"

    # ------------------------------------------------------------------ run

    def run(self) -> SimResult:
        wall = time.perf_counter()
        for sid, dev in self.devices.items():  # every board comes online and reports
            self._apply(self.engine.station_online(sid, W.online_message(True), 0.0))
            self._status(dev)
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
        return SimResult(self.cfg.policy, self.cars, self.sessions, [d.meta for d in self.devices.values()],
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
                max_ac_kw=m.max_ac_kw, max_dc_kw=m.max_dc_kw, target_soc=c.plan.target_soc,
                model=m.model_id if W.RID_RE.match(m.model_id) else None), decision=True)
        if not reply["ok"]:
            err = reply["error"]
            if err["code"] != W.NO_CAPACITY:
                self.anomalies.append(f"{c.plan.car}: {err}")
                c.state = STRANDED
            elif err.get("earliest_free") is None:
                c.state = STRANDED  # nothing usable within reach
            else:
                # parked where it is, asks again when the gateway says to (as the firmware does)
                c.state = WAITING
                c.refused += 1
                self._push(self.now + err["retry_after"], _ASK, i, "retry")
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
        dev = self.devices[r["station"]]
        d_road = haversine_km(c.lat, c.lon, dev.meta.lat, dev.meta.lon) * self.params.road_factor
        drive = d_road / self.params.speed_kmh * 3600.0
        c.state, c.station, c.slot = HEADING, r["station"], r["slot"]
        c.drive_s += drive
        self._drive(c, d_road)
        c.lat, c.lon = dev.meta.lat, dev.meta.lon
        self._push(self.now + drive, _ARRIVE, i)

    def _arrive(self, i: int, _: object) -> None:
        c = self.cars[i]
        if c.state != HEADING:
            return  # re-routed meanwhile
        c.state = WAITING
        if c.arrive_s is None:
            c.arrive_s = self.now
        dev = self.devices[c.station]
        if self.reserving and c.plan.app:
            # the engine's decision stands: the car waits at its reserved slot (not at any free
            # unit of the site, which may be held for another car); a late slot is re-planned
            dev.present.setdefault(c.slot - 1, []).append(i)
            self._check(dev, c.slot - 1)
            return
        # a driver at a site takes the fastest free unit the car can use, at any of the
        # site's stations; else queues for the site, first come, first served
        best = None
        for d in dev.site.devices:
            for k in range(len(d.meta.slots)):
                if d.occupant[k] is None and self._usable(c, k, d):
                    t = self._charge_time(c, d, k)
                    if best is None or t < best[0]:
                        best = (t, d, k)
        if best is None:
            dev.site.fcfs.append(i)
        else:
            self._plug(i, best[1], best[2])

    @staticmethod
    def _usable(c: CarRun, k: int, dev: Device) -> bool:
        m = c.plan.model
        return (m.max_dc_kw if dev.meta.slots[k].dc else m.max_ac_kw) > 0

    @staticmethod
    def _charge_time(c: CarRun, dev: Device, k: int) -> float:
        slot = dev.meta.slots[k]
        m = c.plan.model
        curve = m.power_curve(slot.power_kw, slot.dc)
        return charge_seconds(curve, m.battery_kwh, c.soc, max(c.soc, c.plan.target_soc))

    def _check(self, dev: Device | str, k: object) -> None:
        """A reserving car waiting at slot k plugs in once the slot is free and its
        reservation is the next one on it (what the slot's reserved indication shows)."""
        if not isinstance(dev, Device):
            dev = self.devices[dev]
        k = int(k)
        if dev.occupant[k] is not None:
            return
        waiting = dev.present.get(k)
        if not waiting:
            return
        head = self._head(dev.meta.id, k + 1)
        for i in waiting:
            if self.cars[i].reservation == head:
                waiting.remove(i)
                self._plug(i, dev, k)
                return

    def _head(self, sid: str, slot: int) -> str | None:
        """The reservation next on a slot, read from the engine without changing it."""
        eng = self.engine
        for rid in eng.by_slot.get((sid, slot), ()):
            if eng.reservations[rid].state != "checked_in":
                return rid
        return None

    def _plug(self, i: int, dev: Device, k: int) -> None:
        c = self.cars[i]
        c.state, c.plug_s, c.station, c.slot, c.soc_plug = CHARGING, self.now, dev.meta.id, k + 1, c.soc
        dur = self._charge_time(c, dev, k)
        dev.occupant[k] = i
        before = len(self.anomalies)
        self._status(dev)
        if self.reserving and c.reservation is not None and len(self.anomalies) == before:
            # the engine must have checked in exactly this car's reservation
            r = self.engine.reservations.get(c.reservation)
            if r is None or r.state != "checked_in":
                self.anomalies.append(f"{c.plan.car}: plugged in but reservation not checked in")
        self._push(self.now + dur, _UNPLUG, i)

    def _unplug(self, i: int, _: object) -> None:
        c = self.cars[i]
        dev = self.devices[c.station]
        k = c.slot - 1
        m = c.plan.model
        target = max(c.soc_plug, c.plan.target_soc)
        energy = (target - c.soc_plug) * m.battery_kwh
        slot = dev.meta.slots[k]
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
        self._free(dev, k)

    def _leave(self, i: int, _: object) -> None:
        c = self.cars[i]
        self._free(self.devices[c.station], c.slot - 1)

    def _free(self, dev: Device, k: int) -> None:
        """Slot k is unplugged: the board reports it free; the next car waiting takes it (a
        reserving car whose reservation is next, else the first in the site's queue who can
        use it: a car without the app, or any car under an advisory app)."""
        dev.occupant[k] = None
        self._status(dev)
        if self.reserving:
            self._check(dev, k)
            if dev.occupant[k] is not None:
                return
        queue = dev.site.fcfs
        for n, j in enumerate(queue):  # first in the site's queue that can use this slot
            if self._usable(self.cars[j], k, dev):
                del queue[n]
                self._plug(j, dev, k)
                return

    def _go_without_app(self, i: int) -> None:
        """A driver without the app asks nobody: drives to the nearest station with a slot the
        car can use within its range and takes a free slot there (reservations unseen), else
        queues on site. The gateway learns of it only from the station's status."""
        c = self.cars[i]
        m = c.plan.model
        reach = reach_km(c.soc, m.battery_kwh, m.consumption_kwh_100km, self.params)  # as the app's
        best = None
        for sid, dev in self.devices.items():
            if not any((m.max_dc_kw if sl.dc else m.max_ac_kw) > 0 for sl in dev.meta.slots):
                continue
            d = haversine_km(c.lat, c.lon, dev.meta.lat, dev.meta.lon)
            if d <= reach and (best is None or d < best[0]):
                best = (d, sid)
        if best is None:
            c.state = STRANDED
            return
        d, sid = best
        d_road = d * self.params.road_factor
        dev = self.devices[sid]
        drive = d_road / self.params.speed_kmh * 3600.0
        c.state, c.station = HEADING, sid
        c.drive_s += drive
        self._drive(c, d_road)
        c.lat, c.lon = dev.meta.lat, dev.meta.lon
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
        self._step_out(i)
        rid, c.reservation = c.reservation, None
        c.state, c.leave_s = GAVE_UP, self.now
        c.charge_left_s = self._charge_left(c)
        if rid is not None:
            canc = self._request(i, D.reservation_request("cancel", self._next_rid(), c.plan.car, rid))
            if not canc["ok"]:
                self.anomalies.append(f"{c.plan.car}: cancel on giving up refused {canc['error']}")

    def _charge_left(self, c: CarRun) -> float:
        """The charge a car that gives up still needs, at the power it wanted: the fastest unit
        it can use at the site it was heading to or waiting at; one that waited parked (refused
        everywhere) at the fastest kind of slot it can use anywhere. No penalty beyond that."""
        if c.station is not None:
            devices = self.devices[c.station].site.devices
        else:
            devices = self._kinds()
        times = [self._charge_time(c, d, k) for d in devices
                 for k in range(len(d.meta.slots)) if self._usable(c, k, d)]
        return min(times, default=0.0)

    def _kinds(self) -> list[Device]:
        """One device per distinct slot (power, DC) of the stations: the slot kinds a car can meet."""
        if self._kind_devices is None:
            seen: dict[tuple[float, bool], Device] = {}
            for d in self.devices.values():
                for sl in d.meta.slots:
                    seen.setdefault((sl.power_kw, sl.dc), d)
            self._kind_devices = list(seen.values())
        return self._kind_devices

    def _step_out(self, i: int) -> None:
        """A car waiting on site leaves its place there: the site's queue or its slot's."""
        c = self.cars[i]
        if c.station is None:
            return
        dev = self.devices[c.station]
        if i in dev.site.fcfs:
            dev.site.fcfs.remove(i)
        lst = dev.present.get(c.slot - 1, []) if c.slot is not None else []
        if i in lst:
            lst.remove(i)

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
                if c.state == WAITING:
                    self._step_out(i)
                if c.state == HEADING:
                    self.anomalies.append(f"{c.plan.car}: expired while heading")
                c.state = WAITING
                self._push(self.now, _ASK, i, "expired")
        elif ev == "completed" and c.reservation == rid and c.state in (HEADING, WAITING):
            # a driver without the app plugged into the slot and the gateway took it for this
            # car (it cannot tell them apart), then saw it leave: the app asks again
            c.reservation = None
            if c.state == WAITING:
                self._step_out(i)
            c.state = WAITING
            self._push(self.now, _ASK, i, "taken")
        elif ev == "faulted" and c.reservation == rid and c.state in (HEADING, WAITING):
            # its slot cannot serve it (in time): the app takes the offered slot, or asks again
            c.reservation = None
            if c.state == WAITING:
                self._step_out(i)
            c.state = WAITING
            self._push(self.now, _ASK, i, msg.get("offer") or "faulted")


def simulate(cfg: SimConfig, stations: list[StationMeta], plans: list[CarPlan],
             progress: Callable[[float], None] | None = None) -> SimResult:
    return Simulation(cfg, stations, plans, progress).run()

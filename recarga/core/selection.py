"""Selection policies: which slot at which station a car should go to.

Pure functions over a snapshot: static station facts (StationMeta, indexed once) and the
live side through a SlotView. No I/O, no clock, no threads.

Distances are great-circle (haversine) kilometres (recarga.core.geo). The spatial index is
a k-d tree over 3-D points on the Earth's sphere: the chord between two points grows
monotonically with their great-circle distance, so nearest-by-chord is nearest-by-haversine
exactly and the index needs no local projection that would distort a large region.

Charge model (shared by all policies, so their offers compare):
  road km   = straight km x road_factor; the car must arrive with soc >= safety margin
  drive_s   = road km / speed;  eta = now + drive_s;  wait_s = max(0, busy_until - eta)
  energy    = (target_soc - soc on arrival) x battery, >= 0;  price = energy x station price
  power     = min(slot power, car's AC or DC limit);  charge_s = energy / power
  with the car's model known (CarNeed.model): charge_s follows its curve on the slot (DC
  taper, AC phases) within the same limits, never shorter; power is then the mean power
"""
from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass
from typing import Callable, Collection, Iterator, Sequence

import numpy as np
from scipy.spatial import cKDTree

from recarga.core.evmodels import charge_seconds
from recarga.core.geo import (
    EARTH_RADIUS_KM,
    arc_to_chord,
    chord_to_arc,
    chord_to_arc_np,
    sphere_xyz,
)
from recarga.core.model import CarNeed, Choice, SelectionParams, SlotView, StationMeta

POLICIES: tuple[str, ...] = ("least_completion", "nearest", "most_free", "shortest_queue")
DEFAULT_POLICY = "least_completion"

# Power classes for the index: a tree per (AC/DC, power bucket) gives each class a tight
# upper bound on the power a car can draw there, hence a tight lower bound on charge time.
_AC_EDGES = (4.0, 11.0, 22.0, math.inf)
_DC_EDGES = (50.0, 100.0, 150.0, 250.0, math.inf)

# Lower bounds and actual costs come from slightly different float paths (chord vs
# haversine); this slack (seconds) keeps the pruning from dropping an exact tie.
_PRUNE_SLACK_S = 1e-6

_FIRST_CHUNK = 8  # neighbours fetched by the first k-d query of a stream; grows x4
_SCAN_MAX_SLOTS = 1500  # up to this many slots least_completion scans them all, vectorised
_SCAN_FIRST = 16  # the scan evaluates this many lowest bounds before looking at the rest
_SEED_K = 8  # least_completion's first ball holds about this many stations around a station
# least_completion ranks a slot by drive + WAIT_WEIGHT x wait + charge: a car queues for a
# busy slot only when that saves WAIT_WEIGHT times the wait in driving and charging. A car
# queued behind a busy slot does not make it serve more cars (it is busy either way): under
# load, planned queues at fast chargers only add waiting for everyone booking after them, and
# the longer a planned wait, the more sessions ahead can overrun it (docs/simulation.md,
# "Policies": measured, 12 keeps the centre's queues short at 8x and changes little at light load).
WAIT_WEIGHT = 12.0
_DRAW_CACHE = 64  # the scan's power arrays kept, one per (AC, DC) limit of the cars asking


def reach_km(soc: float, battery_kwh: float, consumption_kwh_per_100km: float,
             p: SelectionParams) -> float:
    """Straight-line km a car can go and still arrive with p.safety_margin_soc (its road is
    p.road_factor times longer): -1 when below the margin already, inf if it uses nothing."""
    spare = (soc - p.safety_margin_soc) * battery_kwh
    if spare < 0:
        return -1.0
    kwh_per_km = p.road_factor * consumption_kwh_per_100km / 100.0
    return math.inf if kwh_per_km == 0 else spare / kwh_per_km


@functools.lru_cache(maxsize=4096)
def _point(lat: float, lon: float) -> np.ndarray:
    """sphere_xyz of one position (read-only; cached: a car asks again from where it is)."""
    p = sphere_xyz(np.array([lat]), np.array([lon]))[0]
    p.flags.writeable = False
    return p


def _by_bound(lb: np.ndarray, bound: Callable[[], float]) -> Iterator[tuple[int, float]]:
    """(index, lb) by increasing lb: the _SCAN_FIRST lowest one at a time (with learnt floors
    the answer is nearly always among the first few, and an argmin costs far less than a
    partition of the array), then, if the caller did not stop there, the others below its
    current bound(), without sorting the whole array. Overwrites lb."""
    n = len(lb)
    if n <= _SCAN_FIRST:
        order = np.argsort(lb)
        yield from zip(order.tolist(), lb[order].tolist())
        return
    argmin, item = lb.argmin, lb.item
    for _ in range(_SCAN_FIRST):
        j = argmin()
        lbj = item(j)
        if lbj == math.inf:
            break  # none bounded left: the rest below takes them if bound() allows
        lb[j] = math.inf
        yield int(j), lbj
    rest = np.flatnonzero(lb <= bound())
    rest = rest[np.argsort(lb[rest])]
    yield from zip(rest.tolist(), lb[rest].tolist())


def _stream(tree: cKDTree, q: np.ndarray, bound: float) -> Iterator[tuple[float, int]]:
    """(chord, index) of the tree's points by increasing distance, up to bound, each once.

    Fetched in growing chunks so a search that stops early pays for few neighbours. Each
    chunk is a fresh query from the nearest on: among points at the same distance the k-d
    tree's order can differ between queries with different k, so a chunk that started at
    the previous one's end could repeat one tied point and never return another.
    """
    n = tree.n
    given: set[int] = set()
    want = _FIRST_CHUNK
    while True:
        upto = min(n, want)
        d, ix = tree.query(q, k=upto, distance_upper_bound=bound)
        if upto == 1:
            d, ix = [float(d)], [int(ix)]
        else:
            d, ix = d.tolist(), ix.tolist()
        for dd, ii in zip(d, ix):
            if ii >= n:  # past the bound: nothing further either
                return
            if ii not in given:
                given.add(ii)
                yield dd, ii
        if upto == n:
            return
        want = upto * 4


@dataclass(frozen=True, slots=True)
class _PowerClass:
    dc: bool
    max_kw: float  # highest slot power in the class
    tree: cKDTree
    members: tuple[int, ...]  # station index per tree point
    slots: tuple[tuple[tuple[int, float], ...], ...]  # per tree point: (slot no, kW)


class _Trip:
    """Per-decision constants of one car under the charge model."""

    __slots__ = ("car", "now", "lat", "lon", "cos_lat", "q", "reach_km", "chord_bound",
                 "rf", "s_per_km", "kwh_per_km", "margin")

    def __init__(self, car: CarNeed, now: float, p: SelectionParams) -> None:
        if not car.battery_kwh > 0:
            raise ValueError(f"battery_kwh must be > 0, got {car.battery_kwh}")
        if not car.consumption_kwh_per_100km >= 0:
            raise ValueError(f"consumption must be >= 0, got {car.consumption_kwh_per_100km}")
        if not (p.speed_kmh > 0 and p.road_factor > 0):
            raise ValueError("speed_kmh and road_factor must be > 0")
        self.car, self.now, self.margin = car, now, p.safety_margin_soc
        self.lat, self.lon = math.radians(car.lat), math.radians(car.lon)
        self.cos_lat = math.cos(self.lat)
        self.q = _point(car.lat, car.lon)
        self.rf = p.road_factor
        self.s_per_km = p.road_factor / p.speed_kmh * 3600.0  # drive seconds per straight km
        # kWh used per straight-line km (the road is road_factor times longer).
        self.kwh_per_km = p.road_factor * car.consumption_kwh_per_100km / 100.0
        self.reach_km = reach_km(car.soc, car.battery_kwh, car.consumption_kwh_per_100km, p)
        # Slack so the index never misses a point the exact check below accepts.
        self.chord_bound = (arc_to_chord(self.reach_km) * (1 + 1e-9) + 1e-9
                            if self.reach_km >= 0 else 0.0)

    # dist_km is always the straight-line distance.
    def soc_on_arrival(self, dist_km: float) -> float:
        car = self.car
        return car.soc - dist_km * self.kwh_per_km / car.battery_kwh

    def energy_kwh(self, dist_km: float) -> float:
        car = self.car
        return max(0.0, (car.target_soc - self.soc_on_arrival(dist_km)) * car.battery_kwh)

    def max_power(self, dc: bool) -> float:
        return self.car.max_dc_kw if dc else self.car.max_ac_kw

    def charge_s(self, soc_arr: float, slot_kw: float, dc: bool, energy_s: float, draw: float) -> float:
        """Seconds to charge from soc_arr to the target on this slot: along the car model's
        curve if it has one for the slot's kind, else energy_s (kWs) / draw (kW). The curve
        is capped by draw's limits, so it is never shorter (the lower bounds hold)."""
        car = self.car
        m = car.model
        if m is None or (dc and not m.dc_curve):
            return energy_s / draw
        curve = m.power_curve(slot_kw, dc, self.max_power(dc))
        return max(charge_seconds(curve, car.battery_kwh, soc_arr, car.target_soc), energy_s / draw)


class Selector:
    """Chooses a slot for a car under a named policy; the spatial index is built once."""

    def __init__(self, stations: Sequence[StationMeta],
                 params: SelectionParams = SelectionParams(),
                 scan_max_slots: int = _SCAN_MAX_SLOTS, learn: bool = False) -> None:
        """scan_max_slots: up to this many slots least_completion scans them all (the
        same answers as the spatial search; tests set it to check both).

        learn: least_completion remembers each busy_until it asks as that slot's floor and
        bounds the slot's completion with it in later decisions, so a busy region costs a
        few busy_until calls instead of one per slot that could win without its wait. Only
        for a view whose busy_until never decreases without forget() being called for the
        slot first (as time passes it can only grow): the engine is one."""
        self.params = params
        self.stations: tuple[StationMeta, ...] = tuple(stations)
        self._index: dict[str, int] = {}
        for i, s in enumerate(self.stations):
            if s.id in self._index:
                raise ValueError(f"station {s.id!r}: duplicate id")
            if not (-90 <= s.lat <= 90 and -180 <= s.lon <= 180):
                raise ValueError(f"station {s.id!r}: coordinates out of range")
            for k, slot in enumerate(s.slots, start=1):
                if not (slot.power_kw > 0 and math.isfinite(slot.power_kw)):
                    raise ValueError(f"station {s.id!r} slot {k}: power_kw must be > 0")
            self._index[s.id] = i
        self._ids = [s.id for s in self.stations]
        self._lat = [math.radians(s.lat) for s in self.stations]
        self._lon = [math.radians(s.lon) for s in self.stations]
        self._cos = [math.cos(x) for x in self._lat]
        self._slots = [tuple((k, sl.power_kw, sl.dc) for k, sl in enumerate(s.slots, start=1))
                       for s in self.stations]
        lat = np.array([s.lat for s in self.stations], dtype=float)
        lon = np.array([s.lon for s in self.stations], dtype=float)
        xyz = sphere_xyz(lat, lon) if self.stations else np.zeros((0, 3))
        self._xyz = xyz
        self._tree = cKDTree(xyz)
        # Position of each station in id order, for vectorised tie-breaking by id.
        self._id_rank = np.empty(len(self._ids), dtype=np.int64)
        self._id_rank[np.argsort(np.array(self._ids, dtype=object), kind="stable")] = \
            np.arange(len(self._ids))
        self._classes = self._build_classes(xyz)
        self._seed_chord = self._seed_radius(xyz)
        # Per slot, for least_completion's scan of a small region: station, slot no, kW
        # (as AC and as DC, 0 for the other kind) and position.
        flat = [(i, k, kw, dc) for i, slots in enumerate(self._slots) for k, kw, dc in slots]
        # station i's slot k is flat slot _base[i] + k - 1
        self._base = np.cumsum([0] + [len(sl) for sl in self._slots])[:-1].tolist()
        # learned busy_until floors per flat slot (epoch s; -inf: nothing known)
        self._floor: np.ndarray | None = np.full(len(flat), -np.inf) if learn else None
        self._floor_now = -math.inf
        self._scan = len(flat) <= scan_max_slots
        if self._scan:
            self._slot_station = [f[0] for f in flat]
            self._slot_no = [f[1] for f in flat]
            self._slot_kw = [f[2] for f in flat]
            self._slot_dc = [f[3] for f in flat]
            kw = np.array(self._slot_kw, dtype=float)
            dc = np.array(self._slot_dc, dtype=bool)
            self._slot_kw_ac = np.where(dc, 0.0, kw)
            self._slot_kw_dc = np.where(dc, kw, 0.0)
            self._draw: dict[tuple[float, float], np.ndarray] = {}  # see _scan_draw
            # coordinates by axis (3 x slots): the distance is three contiguous passes
            self._slot_xyz_t = np.ascontiguousarray((xyz[self._slot_station] if flat
                                                     else np.zeros((0, 3))).T)

    def _seed_radius(self, xyz: np.ndarray) -> float:
        """Chord radius of least_completion's first ball: the median distance from a
        station to its _SEED_K-th nearest neighbour (a sample of up to 256 stations), so the
        ball holds a few stations where the stations are. Only speed depends on it."""
        n = len(xyz)
        if n < 2:
            return 1.0
        k = min(_SEED_K + 1, n)
        d, _ = self._tree.query(xyz[:: max(1, n // 256)], k=k)
        r = float(np.median(d[:, -1]))
        return r if r > 1e-3 else 1e-3

    def _build_classes(self, xyz: np.ndarray) -> tuple[_PowerClass, ...]:
        groups: dict[tuple[bool, int], dict[int, list[tuple[int, float]]]] = {}
        for i, slots in enumerate(self._slots):
            for k, kw, dc in slots:
                edges = _DC_EDGES if dc else _AC_EDGES
                b = next(j for j, e in enumerate(edges) if kw <= e)
                groups.setdefault((dc, b), {}).setdefault(i, []).append((k, kw))
        classes = []
        for (dc, _), members in sorted(groups.items()):
            idx = sorted(members)
            classes.append(_PowerClass(
                dc=dc, max_kw=max(kw for i in idx for _, kw in members[i]),
                tree=cKDTree(xyz[idx]), members=tuple(idx),
                slots=tuple(tuple(members[i]) for i in idx)))
        return tuple(classes)

    # ------------------------------------------------------------------ public API

    def station(self, station_id: str) -> StationMeta:
        return self.stations[self._index[station_id]]

    def forget(self, station_id: str, slot: int | None = None) -> None:
        """The view's busy_until for this slot (every slot of the station if None) may have
        decreased: drop what least_completion learnt about it (see learn)."""
        i = self._index.get(station_id)
        if self._floor is None or i is None:
            return
        b, n = self._base[i], len(self._slots[i])
        if slot is None:
            self._floor[b:b + n] = -np.inf
        elif 1 <= slot <= n:
            self._floor[b + slot - 1] = -np.inf

    def _floors(self, now: float) -> np.ndarray | None:
        """The learnt floors, forgotten all at once if the clock went back (busy_until of a
        free slot is `now`)."""
        floor = self._floor
        if floor is not None:
            if now < self._floor_now:
                floor.fill(-np.inf)
            self._floor_now = now
        return floor

    def _asker(self, view: SlotView) -> Callable[[str, int], float | None]:
        """view.busy_until; when learning, each answer becomes the slot's floor."""
        floor = self._floor
        if floor is None:
            return view.busy_until
        busy_until, index, base = view.busy_until, self._index, self._base

        def ask(station_id: str, slot: int) -> float | None:
            bu = busy_until(station_id, slot)
            if bu is not None:
                floor[base[index[station_id]] + slot - 1] = bu
            return bu
        return ask

    def reachable_km(self, car: CarNeed) -> float:
        """Straight-line radius the car can reach and still arrive with the safety margin."""
        return max(0.0, _Trip(car, 0.0, self.params).reach_km)

    def choose(self, policy: str, car: CarNeed, now: float, view: SlotView,
               exclude: Collection[tuple[str, int]] = ()) -> Choice | None:
        """The policy's offer for the car, or None if no usable compatible slot is reachable."""
        fn = self._POLICY_FNS.get(policy)
        if fn is None:
            raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}")
        trip = _Trip(car, now, self.params)
        if trip.reach_km < 0 or not self.stations:
            return None
        excl = exclude if isinstance(exclude, (set, frozenset, dict)) else frozenset(exclude)
        return fn(self, trip, view, excl)

    def choose_at(self, station_id: str, car: CarNeed, now: float, view: SlotView,
                  exclude: Collection[tuple[str, int]] = ()) -> Choice | None:
        """The car asked for this station: its slot with least completion's least cost, or None
        if the station is unknown, out of reach, or has no usable compatible slot."""
        i = self._index.get(station_id)
        if i is None:
            return None
        trip = _Trip(car, now, self.params)
        d = self._reach(trip, i) if trip.reach_km >= 0 else None
        if d is None:
            return None
        excl = exclude if isinstance(exclude, (set, frozenset, dict)) else frozenset(exclude)
        offers = [self._choice(trip, i, k, d, bu) for k, bu in self._usable_slots(trip, i, view, excl)]
        return min(offers, key=lambda c: (c.drive_s + WAIT_WEIGHT * c.wait_s + c.charge_s, c.slot),
                   default=None)

    def earliest_free(self, car: CarNeed, now: float, view: SlotView, only: str | None = None) -> float | None:
        """Earliest busy_until over reachable compatible usable slots (when capacity
        returns), or None if no such slot is reachable at all; with `only`, over that
        station's slots alone."""
        trip = _Trip(car, now, self.params)
        if trip.reach_km < 0 or not self.stations:
            return None
        # A scan of every reachable slot: there is no spatial bound on busy_until.
        ac_ok, dc_ok = car.max_ac_kw > 0, car.max_dc_kw > 0
        busy_until, ids, slots_of = view.busy_until, self._ids, self._slots
        best = math.inf
        found = False
        idx, arc = self._within_reach(trip)
        sure = trip.reach_km * (1 - 1e-9)  # clearly inside: skip the exact check
        for i, d in zip(idx.tolist(), arc.tolist()):
            if d > sure and self._reach(trip, i) is None:
                continue
            sid = ids[i]
            if only is not None and sid != only:
                continue
            for k, _, dc in slots_of[i]:
                if dc_ok if dc else ac_ok:
                    bu = busy_until(sid, k)
                    if bu is not None:
                        found = True
                        if bu < best:
                            best = bu
        return best if found else None

    # ------------------------------------------------------------------ helpers

    def _dist(self, trip: _Trip, i: int) -> float:
        """Straight-line (haversine) km from the car to station i: geo.haversine_km over the
        radians and cosines kept per station and per trip (this runs per candidate)."""
        lat = self._lat[i]
        a = (math.sin((lat - trip.lat) / 2.0) ** 2
             + trip.cos_lat * self._cos[i] * math.sin((self._lon[i] - trip.lon) / 2.0) ** 2)
        return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))

    def _reach(self, trip: _Trip, i: int) -> float | None:
        """Straight-line km to station i if the car arrives with the margin, else None."""
        d = self._dist(trip, i)
        return d if trip.soc_on_arrival(d) >= trip.margin else None

    def _usable_slots(self, trip: _Trip, i: int, view: SlotView,
                      excl: Collection[tuple[str, int]]) -> list[tuple[int, float]]:
        """(slot no, busy_until) of station i's slots the car may use."""
        sid = self._ids[i]
        car = trip.car
        out = []
        for k, _, dc in self._slots[i]:
            if (car.max_dc_kw if dc else car.max_ac_kw) <= 0:
                continue
            if excl and (sid, k) in excl:
                continue
            bu = view.busy_until(sid, k)
            if bu is not None:
                out.append((k, bu))
        return out

    def _choice(self, trip: _Trip, i: int, slot: int, dist: float, busy_until: float) -> Choice:
        station = self.stations[i]
        meta = station.slots[slot - 1]
        power = min(meta.power_kw, trip.max_power(meta.dc))
        energy = trip.energy_kwh(dist)
        charge_s = trip.charge_s(trip.soc_on_arrival(dist), meta.power_kw, meta.dc, energy * 3600.0, power)
        if charge_s > 0:
            power = energy * 3600.0 / charge_s  # the mean along a curve (or the constant power)
        drive_s = dist * trip.s_per_km
        eta = trip.now + drive_s
        return Choice(
            station_id=station.id, slot=slot, distance_km=dist * trip.rf, drive_s=drive_s,
            wait_s=max(0.0, busy_until - eta), charge_s=charge_s,
            energy_kwh=energy, price_eur=energy * station.price_per_kwh, power_kw=power)

    def _within_reach(self, trip: _Trip) -> tuple[np.ndarray, np.ndarray]:
        """(indices, straight km) of all stations within reach, a vectorised scan.

        Policies that must look at every reachable station use this; a small slack keeps
        boundary stations in, the exact scalar check (_reach) decides for each.
        """
        chord = np.sqrt(((self._xyz - trip.q) ** 2).sum(axis=1))
        arc = chord_to_arc_np(chord)
        idx = np.flatnonzero(arc <= trip.reach_km * (1 + 1e-9) + 1e-9)
        return idx, arc[idx]

    def _by_distance(self, trip: _Trip) -> Iterator[tuple[float, int]]:
        """Reachable stations as (straight km, index), nearest first, ties by id."""
        group: list[tuple[float, str, int]] = []
        last = -1.0
        for chord, i in _stream(self._tree, trip.q, trip.chord_bound):
            if group and chord != last:
                group.sort()
                for d, _, j in group:
                    yield d, j
                group = []
            last = chord
            d = self._reach(trip, i)
            if d is not None:
                group.append((d, self._ids[i], i))
        group.sort()
        for d, _, j in group:
            yield d, j

    @staticmethod
    def _frees_first(slots: list[tuple[int, float]], now: float) -> tuple[int, float]:
        # All slots free now are equal; then the lower slot number.
        return min(slots, key=lambda s: (max(s[1], now), s[0]))

    # ------------------------------------------------------------------ policies

    def _least_completion(self, trip: _Trip, view: SlotView,
                          excl: Collection[tuple[str, int]]) -> Choice | None:
        """Exact minimum of drive + WAIT_WEIGHT x wait + charge over all reachable usable
        slots (the cost; its lower bounds below leave the wait unweighted or out: still bounds).

        Small regions (up to scan_max_slots slots) are scanned whole: see
        _least_completion_scan. Otherwise two phases over the spatial index:

        1. Seed: every station in a small ball around the car (a radius that holds a few
           stations where stations are, grown x4 while nothing usable is found) is
           evaluated exactly: the best completion B.
        2. Best-first over the power classes: beyond the radius a class has covered, its
           slots cannot finish before drive(d) + charge(d, class top power), which grows
           linearly with d. The class with the smallest such bound covers its next ring
           (twice the radius, at most the radius where the bound reaches B) with one ball
           query; the search ends when no class's bound is below B.

        Candidates are evaluated in order of their own lower bound, drive + charge at the
        slot's power (the completion time if the slot is free on arrival; with `learn` plus
        the wait until its learnt floor; computed in the same floating-point steps as the
        completion itself, so it never exceeds it): the
        first bound above B ends the batch, and busy_until is asked only for slots that
        could still win. Ties go to the smallest (completion, station id, slot).
        """
        if self._scan:
            return self._least_completion_scan(trip, view, excl)
        car = trip.car
        ids = self._ids
        self._floors(trip.now)
        busy_until = self._asker(view)
        q = trip.q
        reach_chord = trip.chord_bound
        ac_cap, dc_cap = car.max_ac_kw, car.max_dc_kw

        best_key: tuple[float, str, int] | None = None
        best: tuple[int, int, float, float] | None = None  # station, slot, dist, busy_until
        bound = math.inf

        by_curve = car.model is not None
        slots_of = self.stations

        def evaluate(cands: list[tuple[float, int, int, float, float, float, float, float]]) -> None:
            nonlocal best_key, best, bound
            cands.sort()
            for lb, i, k, d, drive_s, eta, energy_s, draw in cands:
                if lb > bound:
                    return
                sid = ids[i]
                bu = busy_until(sid, k)
                if bu is None:
                    continue
                wait_s = bu - eta if bu > eta else 0.0
                total = drive_s + WAIT_WEIGHT * wait_s
                if by_curve:
                    sl = slots_of[i].slots[k - 1]
                    total += trip.charge_s(trip.soc_on_arrival(d), sl.power_kw, sl.dc, energy_s, draw)
                else:
                    total += energy_s / draw
                if total <= bound:
                    key = (total, sid, k)
                    if best_key is None or key < best_key:
                        best_key, best = key, (i, k, d, bu)
                        bound = total + _PRUNE_SLACK_S

        # Phase 1: the seed ball, over all stations.
        seen: set[int] = set()
        r = min(self._seed_chord, reach_chord)
        while True:
            cands: list[tuple[float, int, int, float, float, float, float, float]] = []
            for i in self._tree.query_ball_point(q, r):
                if i in seen:
                    continue
                seen.add(i)
                self._candidates(trip, i, self._slots[i], ac_cap, dc_cap, excl, cands)
            evaluate(cands)
            if best is not None or r >= reach_chord:
                break
            r = min(r * 4.0, reach_chord)
        if best is None:
            return None  # every reachable station was evaluated

        # Phase 2: best-first over the power classes. A class's stations beyond the radius
        # it has covered (arc a) finish no earlier than lb(a) = drive(a) + charge(a, its top
        # power the car draws), linear in a: the class with the smallest lb covers the
        # next ring (twice the radius, at most where lb reaches B) with one ball query.
        s_per_km, kwh_per_km = trip.s_per_km, trip.kwh_per_km
        e0 = (car.target_soc - car.soc) * car.battery_kwh  # energy at distance 0
        covered = chord_to_arc(r * (1.0 - 1e-9))  # the seed ball surely held all within
        heap: list[tuple[float, int, float, float, float]] = []
        for lb0, ci, draw in self._class_order(e0, ac_cap, dc_cap):
            if lb0 > bound:
                break
            if e0 >= 0:  # lb(a) = a * slope + lb0
                slope = s_per_km + kwh_per_km * 3600.0 / draw
            else:  # the charge term is >= 0: drive alone bounds it
                slope, lb0 = s_per_km, 0.0
            heap.append((covered * slope + lb0, ci, covered, slope, lb0))
        heapq.heapify(heap)
        done_pos: dict[int, set[int]] = {}
        while heap:
            lb, ci, a, slope, lb0 = heapq.heappop(heap)
            if lb > bound:
                break
            a_max = (bound - lb0) / slope  # beyond this the class cannot beat B
            nxt = a * 2.0 if a > 0 else 1e-3
            final = nxt >= a_max
            if final:
                nxt = a_max
            rc = arc_to_chord(nxt * (1 + 1e-9) + 1e-9) * (1 + 1e-9) + 1e-9
            if rc >= reach_chord:
                rc, final = reach_chord, True
            cls = self._classes[ci]
            members, slots = cls.members, cls.slots
            done = done_pos.setdefault(ci, set())
            cands = []
            for pos in cls.tree.query_ball_point(q, rc):
                if pos in done:
                    continue
                done.add(pos)
                i = members[pos]
                if i not in seen:
                    self._candidates(trip, i, slots[pos], ac_cap, dc_cap, excl, cands, cls.dc)
            evaluate(cands)
            if not final:
                heapq.heappush(heap, (nxt * slope + lb0, ci, nxt, slope, lb0))

        i, k, d, bu = best
        return self._choice(trip, i, k, d, bu)

    def _scan_bounds(self, trip: _Trip) -> np.ndarray:
        """Per flat slot, a lower bound of the car's completion time there (the scan's):
        the straight chord (<= arc) driven and charged at the slot's power for the car,
        waiting until at least the slot's learnt floor. Computed in place on few arrays:
        at a region's size numpy's cost is per call, not per element."""
        car = trip.car
        sq = self._slot_xyz_t - trip.q.reshape(3, 1)  # per axis, squared next
        sq *= sq
        chord = sq[0]
        chord += sq[1]
        chord += sq[2]
        np.sqrt(chord, out=chord)
        # The margins for the float paths ride on the per-car factors, not passes of their
        # own: drive and charge times 1 - 1e-9 (chord vs arc, the order of operations), and
        # a wait from a learnt floor 1 us short (epoch seconds round to about 0.24 us).
        m = 1.0 - 1e-9
        charge = chord * (trip.kwh_per_km * 3600.0 * m)
        e0 = (car.target_soc - car.soc) * car.battery_kwh * 3600.0 * m  # kWs at distance 0
        charge += e0
        if e0 < 0:
            np.maximum(charge, 0.0, out=charge)
        charge /= self._scan_draw(car.max_ac_kw, car.max_dc_kw)
        lb = chord * (trip.s_per_km * m)
        floor = self._floors(trip.now)
        if floor is not None:  # it waits until at least the slot's learnt floor
            np.maximum(lb, floor - (trip.now + 1e-6), out=lb)
        lb += charge
        return lb

    def _scan_draw(self, ac_cap: float, dc_cap: float) -> np.ndarray:
        """Per flat slot, the power the car draws there, at least 1e-300 (a slot the car
        cannot use gets a huge bound instead of a division by 0). Cached per car limits:
        cars come with a few standard ones."""
        key = (ac_cap, dc_cap)
        draw = self._draw.get(key)
        if draw is None:
            if len(self._draw) >= _DRAW_CACHE:
                self._draw.clear()
            draw = np.minimum(self._slot_kw_ac, ac_cap) + np.minimum(self._slot_kw_dc, dc_cap)
            draw = self._draw[key] = np.maximum(draw, 1e-300)
        return draw

    def _least_completion_scan(self, trip: _Trip, view: SlotView,
                               excl: Collection[tuple[str, int]]) -> Choice | None:
        """least_completion for a small region (up to _SCAN_MAX_SLOTS slots): a lower bound
        of every slot's completion at once (numpy: straight chord <= arc, the slot's power
        for the car, no wait), then the exact evaluation by increasing bound until the
        bound passes the best found. Fewer steps than a spatial search when a busy region
        makes the search reach most stations anyway."""
        car = trip.car
        ac_cap, dc_cap = car.max_ac_kw, car.max_dc_kw
        lb = self._scan_bounds(trip)

        ids, busy_until, floor = self._ids, view.busy_until, self._floor
        st_of, no_of, kw_of, dc_of = self._slot_station, self._slot_no, self._slot_kw, self._slot_dc
        soc, b_kwh, target = car.soc, car.battery_kwh, car.target_soc
        kwh_per_km, s_per_km, margin, now = trip.kwh_per_km, trip.s_per_km, trip.margin, trip.now
        lat_of, lon_of, cos_of = self._lat, self._lon, self._cos
        t_lat, t_lon, t_cos = trip.lat, trip.lon, trip.cos_lat
        sin, asin, sqrt = math.sin, math.asin, math.sqrt
        per_station: dict[int, tuple[float, float, float, float] | None] = {}
        by_curve = car.model is not None
        best_key: tuple[float, str, int] | None = None
        best: tuple[int, int, float, float] | None = None  # station, slot, dist, busy_until
        bound = math.inf
        for j, lbj in _by_bound(lb, lambda: bound):
            if lbj > bound:
                break
            cap = dc_cap if dc_of[j] else ac_cap
            if cap <= 0:
                continue
            i, k = st_of[j], no_of[j]
            sid = ids[i]
            if excl and (sid, k) in excl:
                continue
            st = per_station.get(i, False)
            if st is False:
                lat = lat_of[i]  # d: as _dist
                h = (sin((lat - t_lat) / 2.0) ** 2
                     + t_cos * cos_of[i] * sin((lon_of[i] - t_lon) / 2.0) ** 2)
                d = 2.0 * EARTH_RADIUS_KM * asin(sqrt(min(1.0, h)))
                soc_arr = soc - d * kwh_per_km / b_kwh  # as _Trip.soc_on_arrival
                if soc_arr >= margin:
                    drive_s = d * s_per_km
                    st = (d, drive_s, now + drive_s,
                          max(0.0, (target - soc_arr) * b_kwh) * 3600.0)
                else:
                    st = None
                per_station[i] = st
            if st is None:
                continue
            d, drive_s, eta, energy_s = st
            kw = kw_of[j]
            draw_j = kw if kw < cap else cap
            if drive_s + energy_s / draw_j > bound:
                continue  # its exact bound: cannot win
            bu = busy_until(sid, k)
            if bu is None:
                continue
            if floor is not None:
                floor[j] = bu  # learnt, as _asker does (flat slot j is station i's slot k)
            wait_s = bu - eta if bu > eta else 0.0
            total = drive_s + WAIT_WEIGHT * wait_s
            if by_curve:
                total += trip.charge_s(trip.soc_on_arrival(d), kw, bool(dc_of[j]), energy_s, draw_j)
            else:
                total += energy_s / draw_j
            if total <= bound:
                key = (total, sid, k)
                if best_key is None or key < best_key:
                    best_key, best = key, (i, k, d, bu)
                    bound = total + _PRUNE_SLACK_S
        if best is None:
            return None
        i, k, d, bu = best
        return self._choice(trip, i, k, d, bu)

    def _class_order(self, e0: float, ac_cap: float, dc_cap: float) -> list[tuple[float, int, float]]:
        """(charge-time bound at distance 0, class, top power the car draws there) of the
        classes the car can use, smallest bound first."""
        out = []
        e0s = max(0.0, e0) * 3600.0
        for ci, cls in enumerate(self._classes):
            cap = dc_cap if cls.dc else ac_cap
            if cap > 0:
                draw = cls.max_kw if cls.max_kw < cap else cap
                out.append((e0s / draw, ci, draw))
        out.sort()
        return out

    def _candidates(self, trip: _Trip, i: int, slots: Sequence[tuple], ac_cap: float, dc_cap: float,
                    excl: Collection[tuple[str, int]],
                    out: list[tuple[float, int, int, float, float, float, float, float]],
                    dc: bool | None = None) -> None:
        """Append station i's usable-looking slots among `slots` ((slot no, kW, dc) or, for
        one class, (slot no, kW) with `dc` given) with their lower bound, if reachable."""
        car = trip.car
        d = self._dist(trip, i)
        soc_arr = car.soc - d * trip.kwh_per_km / car.battery_kwh  # as _Trip.soc_on_arrival
        if soc_arr < trip.margin:
            return
        energy_s = max(0.0, (car.target_soc - soc_arr) * car.battery_kwh) * 3600.0
        drive_s = d * trip.s_per_km
        eta = trip.now + drive_s
        sid = self._ids[i]
        floor, b = self._floor, self._base[i] - 1
        for sl in slots:
            k, kw = sl[0], sl[1]
            cap = (dc_cap if (sl[2] if dc is None else dc) else ac_cap)
            if cap <= 0:
                continue
            if excl and (sid, k) in excl:
                continue
            draw = kw if kw < cap else cap
            # the wait from a learnt floor, in the completion's own float steps (floor <= busy_until)
            f = -math.inf if floor is None else float(floor[b + k])
            out.append((drive_s + (f - eta if f > eta else 0.0) + energy_s / draw,
                        i, k, d, drive_s, eta, energy_s, draw))

    def _nearest(self, trip: _Trip, view: SlotView,
                 excl: Collection[tuple[str, int]]) -> Choice | None:
        for d, i in self._by_distance(trip):
            slots = self._usable_slots(trip, i, view, excl)
            if slots:
                k, bu = self._frees_first(slots, trip.now)
                return self._choice(trip, i, k, d, bu)
        return None

    def _shortest_queue(self, trip: _Trip, view: SlotView,
                        excl: Collection[tuple[str, int]]) -> Choice | None:
        best = None
        found = 0
        for d, i in self._by_distance(trip):
            slots = self._usable_slots(trip, i, view, excl)
            if not slots:
                continue
            key = (view.queue_len(self._ids[i]), d, self._ids[i])
            if best is None or key < best[0]:
                best = (key, i, d, slots)
            found += 1
            if found >= self.params.nearest_k:
                break
        if best is None:
            return None
        _, i, d, slots = best
        k, bu = self._frees_first(slots, trip.now)
        return self._choice(trip, i, k, d, bu)

    def _most_free(self, trip: _Trip, view: SlotView,
                   excl: Collection[tuple[str, int]]) -> Choice | None:
        idx, arc = self._within_reach(trip)
        ids = self._ids
        free = np.fromiter((view.free_slots(ids[i]) for i in idx.tolist()),
                           dtype=np.int64, count=len(idx))
        # Most free first, then nearest, then by id.
        for j in np.lexsort((self._id_rank[idx], arc, -free)).tolist():
            i = int(idx[j])
            d = self._reach(trip, i)
            if d is None:
                continue
            slots = self._usable_slots(trip, i, view, excl)
            if slots:
                k, bu = self._frees_first(slots, trip.now)
                return self._choice(trip, i, k, d, bu)
        return None

    _POLICY_FNS: dict[str, Callable[..., Choice | None]] = {
        "least_completion": _least_completion,
        "nearest": _nearest,
        "most_free": _most_free,
        "shortest_queue": _shortest_queue,
    }

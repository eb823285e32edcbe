"""Selection policies: which slot at which station a car should go to.

Pure functions over a snapshot: static station facts (StationMeta, indexed once) and the
live side through a SlotView. No I/O, no clock, no threads.

Distances are great-circle (haversine) kilometres. The spatial index is a k-d tree over
3-D points on the Earth's sphere: the chord between two points grows monotonically with
their great-circle distance, so nearest-by-chord is nearest-by-haversine exactly and the
index needs no local projection that would distort a large region.

Charge model (shared by all policies, so their offers compare):
  road km   = straight km x road_factor; the car must arrive with soc >= safety margin
  drive_s   = road km / speed;  eta = now + drive_s;  wait_s = max(0, busy_until - eta)
  energy    = (target_soc - soc on arrival) x battery, >= 0;  price = energy x station price
  power     = min(slot power, car's AC or DC limit);  charge_s = energy / power
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable, Collection, Iterator, Sequence

import numpy as np
from scipy.spatial import cKDTree

from gateway.model import CarNeed, Choice, SelectionParams, SlotView, StationMeta

POLICIES: tuple[str, ...] = ("least_completion", "nearest", "most_free", "shortest_queue")
DEFAULT_POLICY = "least_completion"

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)

# Power classes for the index: a tree per (AC/DC, power bucket) gives each class a tight
# upper bound on the power a car can draw there, hence a tight lower bound on charge time.
_AC_EDGES = (4.0, 11.0, 22.0, math.inf)
_DC_EDGES = (50.0, 100.0, 150.0, 250.0, math.inf)

# Lower bounds and actual costs come from slightly different float paths (chord vs
# haversine); this slack (seconds) keeps the pruning from dropping an exact tie.
_PRUNE_SLACK_S = 1e-6

_FIRST_CHUNK = 8  # neighbours fetched by the first k-d query of a stream; grows x4


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2.0) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2.0) ** 2)
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def _xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    c = np.cos(la)
    return EARTH_RADIUS_KM * np.column_stack((c * np.cos(lo), c * np.sin(lo), np.sin(la)))


def _chord_to_arc(chord: float) -> float:
    return 2.0 * EARTH_RADIUS_KM * math.asin(min(1.0, chord / (2.0 * EARTH_RADIUS_KM)))


def _arc_to_chord(arc: float) -> float:
    if arc >= math.pi * EARTH_RADIUS_KM:
        return math.inf
    return 2.0 * EARTH_RADIUS_KM * math.sin(arc / (2.0 * EARTH_RADIUS_KM))


def _stream(tree: cKDTree, q: np.ndarray, bound: float) -> Iterator[tuple[float, int]]:
    """(chord, index) of the tree's points by increasing distance, up to bound.

    Fetched in growing chunks so a search that stops early pays for few neighbours.
    """
    n = tree.n
    done = 0
    want = _FIRST_CHUNK
    while done < n:
        upto = min(n, want)
        d, ix = tree.query(q, k=list(range(done + 1, upto + 1)), distance_upper_bound=bound)
        for dd, ii in zip(d.tolist(), ix.tolist()):
            if ii >= n:  # past the bound: nothing further either
                return
            yield dd, ii
        done = upto
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
        self.q = _xyz(np.array([car.lat]), np.array([car.lon]))[0]
        self.rf = p.road_factor
        self.s_per_km = p.road_factor / p.speed_kmh * 3600.0  # drive seconds per straight km
        # kWh used per straight-line km (the road is road_factor times longer).
        self.kwh_per_km = p.road_factor * car.consumption_kwh_per_100km / 100.0
        spare = (car.soc - p.safety_margin_soc) * car.battery_kwh
        if spare < 0:
            self.reach_km = -1.0  # below the margin already: nothing is reachable
        elif self.kwh_per_km == 0:
            self.reach_km = math.inf
        else:
            self.reach_km = spare / self.kwh_per_km
        # Slack so the index never misses a point the exact check below accepts.
        self.chord_bound = (_arc_to_chord(self.reach_km) * (1 + 1e-9) + 1e-9
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


class Selector:
    """Chooses a slot for a car under a named policy; the spatial index is built once."""

    def __init__(self, stations: Sequence[StationMeta],
                 params: SelectionParams = SelectionParams()) -> None:
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
        xyz = _xyz(lat, lon) if self.stations else np.zeros((0, 3))
        self._xyz = xyz
        self._tree = cKDTree(xyz)
        # Position of each station in id order, for vectorised tie-breaking by id.
        self._id_rank = np.empty(len(self._ids), dtype=np.int64)
        self._id_rank[np.argsort(np.array(self._ids, dtype=object), kind="stable")] = \
            np.arange(len(self._ids))
        self._classes = self._build_classes(xyz)

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
        """The car asked for this station: its slot with the least completion time, or None
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
        return min(offers, key=lambda c: (c.completion_s, c.slot), default=None)

    def earliest_free(self, car: CarNeed, now: float, view: SlotView) -> float | None:
        """Earliest busy_until over reachable compatible usable slots (when capacity
        returns), or None if no such slot is reachable at all."""
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
        """Straight-line (haversine) km from the car to station i."""
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
        drive_s = dist * trip.s_per_km
        eta = trip.now + drive_s
        return Choice(
            station_id=station.id, slot=slot, distance_km=dist * trip.rf, drive_s=drive_s,
            wait_s=max(0.0, busy_until - eta), charge_s=energy / power * 3600.0,
            energy_kwh=energy, price_eur=energy * station.price_per_kwh, power_kw=power)

    def _within_reach(self, trip: _Trip) -> tuple[np.ndarray, np.ndarray]:
        """(indices, straight km) of all stations within reach, a vectorised scan.

        Policies that must look at every reachable station use this; a small slack keeps
        boundary stations in, the exact scalar check (_reach) decides for each.
        """
        chord = np.sqrt(((self._xyz - trip.q) ** 2).sum(axis=1))
        arc = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, chord / (2.0 * EARTH_RADIUS_KM)))
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
        """Exact minimum of drive + wait + charge over all reachable usable slots.

        Best-first branch and bound over the power classes: each class streams its
        stations by distance; its lower bound drive(d) + charge(d, class max power) never
        decreases along the stream, so the class with the smallest bound is expanded next
        and the search ends when no bound can beat the best found.
        """
        car, now = trip.car, trip.now
        s_per_km, kwh_per_km = trip.s_per_km, trip.kwh_per_km
        b_kwh, target, soc = car.battery_kwh, car.target_soc, car.soc
        margin = trip.margin
        ids = self._ids
        busy_until = view.busy_until

        heap: list[tuple[float, int]] = []
        streams: list[Iterator[tuple[float, int]] | None] = []
        pending: list[tuple[float, int] | None] = []
        draws: list[float] = []
        for ci, cls in enumerate(self._classes):
            draw = min(cls.max_kw, car.max_dc_kw if cls.dc else car.max_ac_kw)
            streams.append(None)
            pending.append(None)
            draws.append(draw)
            if draw > 0:
                e0 = max(0.0, (target - soc) * b_kwh)
                heap.append((e0 / draw * 3600.0, ci))  # bound at distance 0
        heapq.heapify(heap)

        best_key: tuple[float, str, int] | None = None
        best: tuple[int, int, float, float] | None = None  # station, slot, dist, busy_until
        bound = math.inf
        while heap:
            lb, ci = heapq.heappop(heap)
            if lb > bound:
                break
            cls = self._classes[ci]
            item = pending[ci]
            if item is None:  # first visit: open the class's stream
                streams[ci] = _stream(cls.tree, trip.q, trip.chord_bound)
            else:
                pos = item[1]
                i = cls.members[pos]
                d = self._dist(trip, i)
                soc_arr = soc - d * kwh_per_km / b_kwh  # as _Trip.soc_on_arrival
                if soc_arr >= margin:
                    energy_s = max(0.0, (target - soc_arr) * b_kwh) * 3600.0
                    drive_s = d * s_per_km
                    eta = now + drive_s
                    sid = ids[i]
                    cap = car.max_dc_kw if cls.dc else car.max_ac_kw
                    for k, kw in cls.slots[pos]:
                        if excl and (sid, k) in excl:
                            continue
                        bu = busy_until(sid, k)
                        if bu is None:
                            continue
                        wait_s = bu - eta if bu > eta else 0.0
                        total = drive_s + wait_s + energy_s / (kw if kw < cap else cap)
                        if total <= bound:
                            key = (total, sid, k)
                            if best_key is None or key < best_key:
                                best_key, best = key, (i, k, d, bu)
                                bound = total + _PRUNE_SLACK_S
            nxt = next(streams[ci], None)  # type: ignore[arg-type]
            if nxt is None:
                continue
            pending[ci] = nxt
            d_lb = _chord_to_arc(nxt[0])
            e_lb = max(0.0, (target - (soc - d_lb * kwh_per_km / b_kwh)) * b_kwh)
            heapq.heappush(heap, (d_lb * s_per_km + e_lb / draws[ci] * 3600.0, ci))

        if best is None:
            return None
        i, k, d, bu = best
        return self._choice(trip, i, k, d, bu)

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

"""Central's network-wide view of capacity, from the regions' summaries; pure, no I/O.

The best slot for a car across regions is chosen by the gateways' own selection code
(recarga.core.selection.Selector, the same charge model and policies) over the summarised
stations: a station's slot group of power P with `usable` slots of which `free` are free
becomes `usable` slots of power P, the first `free` free now, the others free at the group's
`next_free`. Station ids are "<region>/<station>" inside the view, so two regions may use
the same station id.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from recarga.core.model import CarNeed, Choice, SelectionParams, SlotMeta, StationMeta
from recarga.core.protocol import central as PC
from recarga.core.selection import Selector


@dataclass(frozen=True, slots=True)
class Candidate:
    region: str
    station: str
    choice: Choice


@dataclass(slots=True)
class _Region:
    shards: dict[int, PC.Summary]
    of: int
    at: float  # the newest shard's time
    version: int  # bumped when a station's position, price or slots change


class NetworkView:
    def __init__(self, params: SelectionParams = SelectionParams(), policy: str = "least_completion",
                 max_age_s: float = 300.0, max_wait_s: float = 1800.0):
        self.params = params
        self.policy = policy
        self.max_age_s = max_age_s
        self.max_wait_s = max_wait_s
        self._regions: dict[str, _Region] = {}
        self._selectors: dict[tuple[tuple[str, int], ...], Selector] = {}
        # live slot state for the SlotView, by view station id: [(free now?, next_free)] per slot
        self._slots: dict[str, list[tuple[bool, float | None]]] = {}
        self._now = 0.0

    # ------------------------------------------------------------ updates

    def apply(self, region: str, shard: int, summary: PC.Summary | None) -> None:
        """A shard as it arrived (None: its retained message was cleared)."""
        r = self._regions.setdefault(region, _Region({}, 1, 0.0, 0))
        old = r.shards.get(shard)
        if summary is None:
            if old is not None:
                del r.shards[shard]
                self._drop(region, old)
                r.version += 1
            return
        if summary.at < r.at - self.max_age_s:
            return  # a stale retained shard of an older layout
        if summary.of != r.of:
            # the region re-sharded: shards beyond the new count are gone
            for k in [k for k in r.shards if k >= summary.of]:
                self._drop(region, r.shards.pop(k))
            r.of = summary.of
            r.version += 1
        r.shards[shard] = summary
        r.at = max(r.at, summary.at)
        if old is not None:
            self._drop(region, old)
        for s in summary.stations:
            self._slots[_key(region, s.id)] = [(i < g.free, g.next_free) for g in s.groups for i in range(g.usable)]
        if old is None or _static(old) != _static(summary):
            r.version += 1

    def _drop(self, region: str, summary: PC.Summary) -> None:
        for s in summary.stations:
            self._slots.pop(_key(region, s.id), None)

    # ------------------------------------------------------------ queries

    def fresh_regions(self, now: float) -> dict[str, float]:
        """Regions whose newest summary is recent enough, with its time."""
        return {name: r.at for name, r in self._regions.items() if now - r.at <= self.max_age_s}

    def stations(self, region: str) -> list[PC.SummaryStation]:
        r = self._regions.get(region)
        return [] if r is None else [s for k in sorted(r.shards) for s in r.shards[k].stations]

    def best(self, need: CarNeed, now: float, regions: Collection[str], beat_s: float | None = None,
             exclude: Collection[tuple[str, str]] = ()) -> Candidate | None:
        """The best slot for the car in `regions` (those with a fresh summary), under the
        policy; None if nothing reachable and usable, or nothing finishes before beat_s.
        exclude: (region, station) pairs not to offer."""
        fresh = self.fresh_regions(now)
        names = tuple(sorted(r for r in regions if r in fresh))
        if not names:
            return None
        selector = self._selector(names)
        self._now = now
        skip = {(_key(r, s), k) for r, s in exclude for k in range(1, 33)}
        choice = selector.choose(self.policy, need, now, self, skip)
        if choice is None or (beat_s is not None and choice.completion_s >= beat_s):
            return None
        region, station = choice.station_id.split("/", 1)
        return Candidate(region, station, choice)

    def _selector(self, names: tuple[str, ...]) -> Selector:
        key = tuple((n, self._regions[n].version) for n in names)
        sel = self._selectors.get(key)
        if sel is None:
            metas = [_meta(n, s) for n in names for s in self.stations(n)]
            sel = Selector(metas, self.params)
            # keep the selectors of the current versions only
            self._selectors = {k: v for k, v in self._selectors.items()
                               if all(self._regions[n].version == ver for n, ver in k)}
            self._selectors[key] = sel
        return sel

    # ------------------------------------------------------------ SlotView

    def busy_until(self, station_id: str, slot: int) -> float | None:
        slots = self._slots.get(station_id)
        if slots is None or slot > len(slots):
            return None
        free, nxt = slots[slot - 1]
        if free:
            return self._now
        if nxt is None or nxt > self._now + self.max_wait_s:
            return None
        return max(nxt, self._now)

    def free_slots(self, station_id: str) -> int:
        return sum(free for free, _ in self._slots.get(station_id, ()))

    def queue_len(self, station_id: str) -> int:
        return sum(not free for free, _ in self._slots.get(station_id, ()))


def _key(region: str, station: str) -> str:
    return f"{region}/{station}"


def _meta(region: str, s: PC.SummaryStation) -> StationMeta:
    slots = tuple(SlotMeta(g.power_kw, g.dc) for g in s.groups for _ in range(g.usable))
    return StationMeta(_key(region, s.id), s.lat, s.lon, slots, price_per_kwh=s.price_per_kwh)


def _static(summary: PC.Summary) -> list[tuple]:
    return [(s.id, s.lat, s.lon, s.price_per_kwh, tuple((g.power_kw, g.dc, g.usable) for g in s.groups))
            for s in summary.stations]

"""Decision time of the selection policies over Berlin's stations and synthetic regions.

Prints figures, asserts nothing. Run from the repo root:

    .venv/bin/python bench/selection_scale.py [--quick]

The live state is a realistic snapshot: ~60 % of the slots busy for up to three hours,
2 % out of service, the rest free. Cars are spread uniformly over the region with
battery, consumption, charge limits and state of charge drawn from typical ranges.
Each decision is timed on its own; the figure is the median over all decisions of a
repeat, then the median over the repeats.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recarga.core.geo import offset_deg  # noqa: E402
from recarga.core.model import CarNeed, StationMeta  # noqa: E402
from recarga.core.selection import DEFAULT_POLICY, POLICIES, Selector  # noqa: E402
from recarga.core.stations import (  # noqa: E402
    load_bnetza_csv,
    synthetic_radius_km,
    synthetic_stations,
)

BERLIN_CSV = ROOT / "data" / "berlin_charging_stations_bnetza.csv"
NOW = 1_800_000_000.0


class SnapshotView:
    """Dict-backed SlotView with per-station counts precomputed, like the engine's."""

    def __init__(self, stations: Sequence[StationMeta], rng: random.Random) -> None:
        self.busy: dict[tuple[str, int], float | None] = {}
        self.free: dict[str, int] = {}
        self.queue: dict[str, int] = {}
        for s in stations:
            free = queue = 0
            for k in range(1, len(s.slots) + 1):
                r = rng.random()
                if r < 0.02:
                    self.busy[(s.id, k)] = None  # out of service
                elif r < 0.62:
                    self.busy[(s.id, k)] = NOW + rng.uniform(60.0, 3 * 3600.0)
                    queue += 1
                else:
                    self.busy[(s.id, k)] = NOW - rng.uniform(0.0, 3600.0)
                    free += 1
            self.free[s.id] = free
            self.queue[s.id] = queue

    def busy_until(self, station_id: str, slot: int) -> float | None:
        return self.busy.get((station_id, slot))

    def free_slots(self, station_id: str) -> int:
        return self.free.get(station_id, 0)

    def queue_len(self, station_id: str) -> int:
        return self.queue.get(station_id, 0)


def random_cars(n: int, rng: random.Random, center: tuple[float, float],
                radius_km: float) -> list[CarNeed]:
    cars = []
    for _ in range(n):
        r = radius_km * math.sqrt(rng.random())
        t = rng.random() * 2 * math.pi
        soc = rng.uniform(0.08, 0.35)
        lat, lon = offset_deg(*center, r * math.sin(t), r * math.cos(t))
        cars.append(CarNeed(
            lat=lat, lon=lon,
            soc=soc, battery_kwh=rng.uniform(35.0, 100.0),
            consumption_kwh_per_100km=rng.uniform(14.0, 24.0),
            max_ac_kw=rng.choices([7.4, 11.0, 22.0], [0.15, 0.7, 0.15])[0],
            max_dc_kw=rng.choices([0.0, 50.0, 100.0, 150.0, 250.0], [0.1, 0.15, 0.3, 0.3, 0.15])[0],
            target_soc=rng.uniform(0.7, 0.9)))
    return cars


def time_policy(sel: Selector, policy: str, cars: Sequence[CarNeed], view: SnapshotView,
                repeats: int) -> tuple[float, float, int]:
    """(median ms, p95 ms, decisions without an offer), medians over repeats."""
    medians, p95s = [], []
    misses = 0
    for _ in range(repeats):
        times = []
        misses = 0
        for car in cars:
            t0 = time.perf_counter_ns()
            choice = sel.choose(policy, car, NOW, view)
            times.append(time.perf_counter_ns() - t0)
            misses += choice is None
        times.sort()
        medians.append(statistics.median(times) / 1e6)
        p95s.append(times[int(0.95 * (len(times) - 1))] / 1e6)
    return statistics.median(medians), statistics.median(p95s), misses


def run_region(label: str, stations: list[StationMeta], center: tuple[float, float],
               radius_km: float, decisions: int, repeats: int, seed: int) -> float:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    sel = Selector(stations)
    build_s = time.perf_counter() - t0
    view = SnapshotView(stations, rng)
    cars = random_cars(decisions, rng, center, radius_km)
    points = sum(len(s.slots) for s in stations)
    print(f"{label}: {len(stations)} stations, {points} points, radius {radius_km:.1f} km, "
          f"index built in {build_s * 1e3:.0f} ms")
    result = math.nan
    for policy in POLICIES:
        n, reps = len(cars), repeats
        if policy == "most_free":
            # Ranks every reachable station: linear in the region, so fewer decisions.
            n, reps = max(20, min(n, 200_000 // max(1, len(stations)))), 1
        med, p95, misses = time_policy(sel, policy, cars[:n], view, reps)
        mark = " (default)" if policy == DEFAULT_POLICY else ""
        print(f"  {policy:17s} median {med:7.3f} ms  p95 {p95:7.3f} ms  "
              f"[{n} decisions x {reps}, {misses} without offer]{mark}")
        if policy == DEFAULT_POLICY:
            result = med
    # The "no capacity" reply's hint: also a scan of every reachable slot.
    n = max(20, min(len(cars), 200_000 // max(1, len(stations))))
    times = []
    for car in cars[:n]:
        t0 = time.perf_counter_ns()
        sel.earliest_free(car, NOW, view)
        times.append(time.perf_counter_ns() - t0)
    print(f"  {'earliest_free':17s} median {statistics.median(times) / 1e6:7.3f} ms  "
          f"[{n} calls]")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer decisions and repeats")
    args = ap.parse_args(argv)
    decisions, repeats = (500, 2) if args.quick else (2000, 5)

    t0 = time.perf_counter()
    berlin = load_bnetza_csv(BERLIN_CSV)
    lats = [s.lat for s in berlin]
    lons = [s.lon for s in berlin]
    b_center = ((min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2)
    b_radius = synthetic_radius_km(len(berlin))  # Berlin's area as a disc (~16.8 km)
    a = run_region("Berlin (BNetzA register)", berlin, b_center, b_radius, decisions, repeats, 1)

    figures = [a]
    for n in (10_000, 100_000):
        stations = synthetic_stations(n, seed=n)
        figures.append(run_region(f"synthetic {n}", stations, (52.52, 13.405),
                                  synthetic_radius_km(n), decisions, repeats, n + 1))
    print(f"(total {time.perf_counter() - t0:.0f} s)")
    print(f"selection median: {figures[0]:.3f} ms at Berlin, {figures[1]:.3f} ms at 10000, "
          f"{figures[2]:.3f} ms at 100000 stations")


if __name__ == "__main__":
    main()

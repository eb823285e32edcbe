"""Who asks for a charge, where and when: a day of cars, identical for every policy.

Everything here is an assumption, not data (the register has no demand); docs/simulation.md
lists them, and every parameter can be set (CLI or a scenario file, scenario.py). A car
appears, drives a leg towards somewhere, runs low at the end of it and asks. Positions mix two
sources: near a charging station (stations were built where people park) and around the city
centre (commuters and visitors), so demand is uneven over the stations the way a real city's
is. The centre and its spread come from the stations themselves unless given, so any city
works. A replayed session log (replay.py) makes CarPlans too, from real sessions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from recarga.core.evmodels import CarModel
from recarga.core.geo import KM_PER_DEG_LAT, km_per_deg_lon, local_km
from recarga.core.model import StationMeta

# Relative arrival rate per hour of the day (0-23): quiet night, morning rise, busy
# afternoon and an evening peak, the usual shape of public-charging session starts.
DAILY_PROFILE: tuple[float, ...] = (
    0.30, 0.20, 0.15, 0.15, 0.20, 0.40, 0.80, 1.20, 1.40, 1.40, 1.40, 1.40,
    1.40, 1.40, 1.40, 1.50, 1.70, 1.80, 1.60, 1.30, 1.00, 0.80, 0.60, 0.40,
)

# The centre's spread, unless given: this share of the stations' median distance from their
# centre (Berlin: 3.9 km), never below MIN_SIGMA_KM (a single site has no spread).
CENTRE_SIGMA_SHARE = 0.5
MIN_SIGMA_KM = 0.3
# A replayed or energy-given car asks with at least this state of charge.
MIN_ASK_SOC = 0.10


@dataclass(frozen=True, slots=True)
class DemandParams:
    cars_per_day: float
    hours: float = 24.0  # cars appear over this many hours from t = 0
    profile: tuple[float, ...] = DAILY_PROFILE
    centre: tuple[float, float] | None = None  # None: the stations' median position
    centre_share: float = 0.5  # share of cars placed around the centre, the rest near a station
    centre_sigma_km: float | None = None  # None: from the stations' dispersion
    station_sigma_km: float = 1.0
    leg_km: tuple[float, float] = (2.0, 15.0)  # road km driven before running low, uniform
    ask_soc: tuple[float, float] = (0.10, 0.35)  # state of charge when the car asks, uniform
    # energy the car wants, kWh, uniform; when given it replaces ask_soc: the car asks at
    # target_soc - energy / battery (at least MIN_ASK_SOC)
    energy_kwh: tuple[float, float] | None = None
    target_soc: float = 0.80
    # (model name or Open EV Data id, weight); empty: uniform over the battery-electric models
    car_mix: tuple[tuple[str, float], ...] = ()
    no_show: float = 0.05  # share of cars that get an answer and never come
    dwell_min: tuple[float, float] = (0.0, 0.0)  # minutes plugged in after charging, uniform
    no_app: float = 0.0  # share of drivers without the app: they take a free slot on arrival
    # sensitivity: drivers of DC-capable cars look for fast chargers only (they tell the app
    # max_ac_kw 0), which makes the power-blind baselines power-aware
    fast_only: bool = False


@dataclass(frozen=True, slots=True)
class CarPlan:
    car: str
    appear_s: float  # seconds from the start of the day
    origin: tuple[float, float]
    ask_at: tuple[float, float]  # where it runs low and asks
    leg_km: float  # road km from origin to ask_at
    model: CarModel
    soc_start: float
    soc_ask: float
    target_soc: float
    no_show: bool
    dwell_s: float = 0.0  # stays plugged in this long after charging
    app: bool = True  # False: does not ask the gateway, takes a free slot where it arrives


@dataclass(frozen=True, slots=True)
class Area:
    """Where demand lives: a centre, its spread and the box cars stay in (the stations'
    bounding box widened by the station spread)."""

    centre: tuple[float, float]
    sigma_km: float
    box: tuple[float, float, float, float]  # lat0, lat1, lon0, lon1
    km_per_deg_lon: float  # east-west km per degree at the centre's latitude


def stations_centre(stations: list[StationMeta]) -> tuple[float, float]:
    """The stations' median position: a city's centre of gravity, robust to outliers."""
    if not stations:
        raise ValueError("no stations: the centre of demand cannot be derived")
    return (float(np.median([s.lat for s in stations])), float(np.median([s.lon for s in stations])))


def area(stations: list[StationMeta], p: DemandParams) -> Area:
    centre = p.centre or stations_centre(stations)
    lats = np.array([s.lat for s in stations])
    lons = np.array([s.lon for s in stations])
    per_deg_lon = km_per_deg_lon(centre[0])
    sigma = p.centre_sigma_km
    if sigma is None:
        x, y = local_km(lats, lons, centre)
        sigma = max(MIN_SIGMA_KM, CENTRE_SIGMA_SHARE * float(np.median(np.hypot(x, y))))
    dlat = p.station_sigma_km / KM_PER_DEG_LAT
    dlon = p.station_sigma_km / per_deg_lon
    box = (float(lats.min()) - dlat, float(lats.max()) + dlat,
           float(lons.min()) - dlon, float(lons.max()) + dlon)
    return Area(centre, sigma, box, per_deg_lon)


def arrival_times(rng: np.random.Generator, p: DemandParams) -> np.ndarray:
    """Inhomogeneous Poisson arrivals: a Poisson count per hour at the profile's rate,
    uniform within the hour."""
    prof = np.array(p.profile, dtype=float)
    whole = int(math.ceil(p.hours))
    rates = np.array([prof[h % len(prof)] for h in range(whole)])
    frac = np.minimum(1.0, p.hours - np.arange(whole))  # last hour may be partial
    rates = rates * frac
    day = np.array([prof[h % len(prof)] for h in range(24)]).sum()
    per_hour = p.cars_per_day * rates / day
    counts = rng.poisson(per_hour)
    times = np.concatenate([h + rng.random(c) * frac[h] for h, c in enumerate(counts)]) * 3600.0
    return np.sort(times)


def _sample_points(rng: np.random.Generator, n: int, stations: list[StationMeta],
                   p: DemandParams, a: Area, rounds: int = 20) -> np.ndarray:
    """n (lat, lon) points from the mixture, inside the area's box: a point outside is drawn
    again around its own anchor (the centre or its station); one still outside after
    `rounds` is drawn uniformly in the box, so nothing piles up on an edge, corner or anchor."""
    lat0, lat1, lon0, lon1 = a.box
    s_lat = np.array([s.lat for s in stations])
    s_lon = np.array([s.lon for s in stations])
    centre = rng.random(n) < p.centre_share
    pick = rng.integers(0, len(stations), n)
    anchor_lat = np.where(centre, a.centre[0], s_lat[pick])
    anchor_lon = np.where(centre, a.centre[1], s_lon[pick])
    sigma = np.where(centre, a.sigma_km, p.station_sigma_km)
    lat = np.empty(n)
    lon = np.empty(n)
    todo = np.arange(n)
    for _ in range(rounds):
        if not len(todo):
            break
        noise = rng.standard_normal((len(todo), 2))
        lat[todo] = anchor_lat[todo] + noise[:, 0] * sigma[todo] / KM_PER_DEG_LAT
        lon[todo] = anchor_lon[todo] + noise[:, 1] * sigma[todo] / a.km_per_deg_lon
        out = (lat[todo] < lat0) | (lat[todo] > lat1) | (lon[todo] < lon0) | (lon[todo] > lon1)
        todo = todo[out]
    lat[todo] = rng.uniform(lat0, lat1, len(todo))
    lon[todo] = rng.uniform(lon0, lon1, len(todo))
    return np.column_stack([lat, lon])


def mix(models: list[CarModel], car_mix: tuple[tuple[str, float], ...]) -> tuple[list[CarModel], np.ndarray]:
    """The models a day draws from and their probabilities. A name matches a model's name or
    Open EV Data id exactly; empty: uniform over the battery-electric models."""
    if not car_mix:
        bev = [m for m in models if not m.phev]
        if not bev:
            raise ValueError("no battery-electric car models loaded: give a car mix")
        return bev, np.full(len(bev), 1.0 / len(bev))
    by_key = {}
    for m in models:
        by_key.setdefault(m.name, m)
        if m.model_id:
            by_key.setdefault(m.model_id, m)
    chosen, weights = [], []
    for name, w in car_mix:
        if name not in by_key:
            raise ValueError(f"car mix: unknown car model {name!r} (not in the models file by name or id)")
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"car mix: weight of {name!r} must be above 0, not {w}")
        chosen.append(by_key[name])
        weights.append(w)
    wa = np.array(weights)
    return chosen, wa / wa.sum()


def generate(seed: int, p: DemandParams, stations: list[StationMeta],
             models: list[CarModel], road_factor: float) -> list[CarPlan]:
    """The day's cars, by appearance time; a function of (seed, p, stations, models) only."""
    rng = np.random.default_rng(seed)
    fleet, probs = mix(models, p.car_mix)
    times = arrival_times(rng, p)
    n = len(times)
    a = area(stations, p)
    origins = _sample_points(rng, n, stations, p, a)
    towards = _sample_points(rng, n, stations, p, a)
    legs = rng.uniform(*p.leg_km, n)
    socs = rng.uniform(*p.ask_soc, n)
    which = rng.choice(len(fleet), n, p=probs)
    no_show = rng.random(n) < p.no_show
    energy = rng.uniform(*p.energy_kwh, n) if p.energy_kwh is not None else None
    dwell = rng.uniform(*p.dwell_min, n) * 60.0
    no_app = rng.random(n) < p.no_app
    width = len(str(max(n - 1, 0)))
    plans = []
    for i in range(n):
        (la, lo), (lb, lob) = origins[i], towards[i]
        dy = (lb - la) * KM_PER_DEG_LAT
        dx = (lob - lo) * a.km_per_deg_lon
        dist = math.hypot(dx, dy)
        straight = min(legs[i] / road_factor, dist)  # stop at the destination if it is nearer
        f = straight / dist if dist > 0 else 0.0
        ask = (float(la + (lb - la) * f), float(lo + (lob - lo) * f))
        leg_road = straight * road_factor
        m = fleet[int(which[i])]
        if p.fast_only and m.max_dc_kw > 0:
            m = replace(m, max_ac_kw=0.0, ac_per_point=())
        target = p.target_soc
        if energy is None:
            soc_ask = float(socs[i])
        else:
            soc_ask, target = soc_for_energy(float(energy[i]), m.battery_kwh, target)
        soc_start = soc_ask + leg_road * m.consumption_kwh_100km / 100.0 / m.battery_kwh
        if soc_start > 1.0:  # a small battery cannot have driven that far: shorten the leg
            soc_start = 1.0
            leg_road = (1.0 - soc_ask) * m.battery_kwh * 100.0 / m.consumption_kwh_100km
            f = (leg_road / road_factor) / dist if dist > 0 else 0.0
            ask = (float(la + (lb - la) * f), float(lo + (lob - lo) * f))
        plans.append(CarPlan(
            car=f"c{i:0{width}d}", appear_s=float(times[i]), origin=(float(la), float(lo)),
            ask_at=ask, leg_km=leg_road, model=m, soc_start=soc_start, soc_ask=soc_ask,
            target_soc=target, no_show=bool(no_show[i]), dwell_s=float(dwell[i]), app=not bool(no_app[i])))
    return plans


def soc_for_energy(energy_kwh: float, battery_kwh: float, target_soc: float) -> tuple[float, float]:
    """(state of charge when asking, target) for a car that wants energy_kwh: it asks at
    target - energy / battery; a battery too small for that asks at MIN_ASK_SOC and charges
    what it can take (up to full)."""
    need = energy_kwh / battery_kwh
    soc_ask = target_soc - need
    if soc_ask >= MIN_ASK_SOC:
        return soc_ask, target_soc
    return MIN_ASK_SOC, min(1.0, MIN_ASK_SOC + need)

"""Who asks for a charge, where and when: a day of cars, identical for every policy.

Everything here is an assumption, not data (the register has no demand); docs/simulation.md
lists them. A car appears, drives a leg towards somewhere, runs low at the end of it and
asks. Positions mix two sources: near a charging station (stations were built where people
park) and around the city centre (commuters and visitors), so demand is uneven over the
stations the way a real city's is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from recarga.core.evmodels import CarModel
from recarga.core.model import StationMeta

# Relative arrival rate per hour of the day (0-23): quiet night, morning rise, busy
# afternoon and an evening peak, the usual shape of public-charging session starts.
DAILY_PROFILE: tuple[float, ...] = (
    0.30, 0.20, 0.15, 0.15, 0.20, 0.40, 0.80, 1.20, 1.40, 1.40, 1.40, 1.40,
    1.40, 1.40, 1.40, 1.50, 1.70, 1.80, 1.60, 1.30, 1.00, 0.80, 0.60, 0.40,
)

CENTRE = (52.5200, 13.4050)  # Berlin Mitte
_KM_PER_DEG_LAT = 111.195


@dataclass(frozen=True, slots=True)
class DemandParams:
    cars_per_day: float
    hours: float = 24.0  # cars appear over this many hours from t = 0
    profile: tuple[float, ...] = DAILY_PROFILE
    centre_share: float = 0.5  # share of cars placed around the centre, the rest near a station
    centre_sigma_km: float = 4.0
    station_sigma_km: float = 1.0
    leg_km: tuple[float, float] = (2.0, 15.0)  # road km driven before running low, uniform
    ask_soc: tuple[float, float] = (0.10, 0.35)  # state of charge when the car asks, uniform
    target_soc: float = 0.80
    no_show: float = 0.05  # share of cars that get an answer and never come
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
                   p: DemandParams, box: tuple[float, float, float, float]) -> np.ndarray:
    """n (lat, lon) points from the mixture, kept inside the stations' bounding box."""
    lat0, lat1, lon0, lon1 = box
    cos0 = math.cos(math.radians(CENTRE[0]))
    s_lat = np.array([s.lat for s in stations])
    s_lon = np.array([s.lon for s in stations])
    out = np.empty((n, 2))
    centre = rng.random(n) < p.centre_share
    pick = rng.integers(0, len(stations), n)
    noise = rng.standard_normal((n, 2))
    for i in range(n):
        if centre[i]:
            lat_c, lon_c, sigma = CENTRE[0], CENTRE[1], p.centre_sigma_km
        else:
            lat_c, lon_c, sigma = s_lat[pick[i]], s_lon[pick[i]], p.station_sigma_km
        lat = lat_c + noise[i, 0] * sigma / _KM_PER_DEG_LAT
        lon = lon_c + noise[i, 1] * sigma / (_KM_PER_DEG_LAT * cos0)
        out[i] = (min(max(lat, lat0), lat1), min(max(lon, lon0), lon1))
    return out


def generate(seed: int, p: DemandParams, stations: list[StationMeta],
             models: list[CarModel], road_factor: float) -> list[CarPlan]:
    """The day's cars, by appearance time; a function of (seed, p, stations, models) only."""
    rng = np.random.default_rng(seed)
    times = arrival_times(rng, p)
    n = len(times)
    lats = [s.lat for s in stations]
    lons = [s.lon for s in stations]
    box = (min(lats), max(lats), min(lons), max(lons))
    origins = _sample_points(rng, n, stations, p, box)
    towards = _sample_points(rng, n, stations, p, box)
    legs = rng.uniform(*p.leg_km, n)
    socs = rng.uniform(*p.ask_soc, n)
    which = rng.integers(0, len(models), n)
    no_show = rng.random(n) < p.no_show
    cos0 = math.cos(math.radians(CENTRE[0]))
    width = len(str(max(n - 1, 0)))
    plans = []
    for i in range(n):
        (la, lo), (lb, lob) = origins[i], towards[i]
        dy = (lb - la) * _KM_PER_DEG_LAT
        dx = (lob - lo) * _KM_PER_DEG_LAT * cos0
        dist = math.hypot(dx, dy)
        straight = min(legs[i] / road_factor, dist)  # stop at the destination if it is nearer
        f = straight / dist if dist > 0 else 0.0
        ask = (float(la + (lb - la) * f), float(lo + (lob - lo) * f))
        leg_road = straight * road_factor
        m = models[int(which[i])]
        if p.fast_only and m.max_dc_kw > 0:
            m = replace(m, max_ac_kw=0.0, ac_per_point=())
        soc_ask = float(socs[i])
        soc_start = soc_ask + leg_road * m.consumption_kwh_100km / 100.0 / m.battery_kwh
        if soc_start > 1.0:  # a small battery cannot have driven that far: shorten the leg
            soc_start = 1.0
            leg_road = (1.0 - soc_ask) * m.battery_kwh * 100.0 / m.consumption_kwh_100km
            f = (leg_road / road_factor) / dist if dist > 0 else 0.0
            ask = (float(la + (lb - la) * f), float(lo + (lob - lo) * f))
        plans.append(CarPlan(
            car=f"c{i:0{width}d}", appear_s=float(times[i]), origin=(float(la), float(lo)),
            ask_at=ask, leg_km=leg_road, model=m, soc_start=soc_start, soc_ask=soc_ask,
            target_soc=p.target_soc, no_show=bool(no_show[i])))
    return plans

"""A synthetic small city with charging hubs: the shape of many towns' public charging, not a
copy of any one.

A few DC hubs, each one operator's multi-unit site (4-6 units of 50-150 kW a few metres
apart, where a driver takes whichever unit is free), and many 7-22 kW AC posts of a handful
of operators spread over the town; about 60 charge points in all. Its demand: about 200
sessions a day of about 10 kWh, a fleet dominated by one 40 kWh model. The stations are a
function of the parameters and the seed; write them with recarga.core.stations'
dump_stations_json to simulate them like any station file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from recarga.core.geo import offset_deg
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.stations import default_price

NAME = "small city with hubs (synthetic)"
ATTRIBUTION = "synthetic, recarga.simulation.city"
SESSIONS_PER_DAY = 200.0  # demand at 1x: cars asking per day over the whole town

# ~10 kWh per session; the fleet: Nissan Leaf 40 kWh at 60 %, four common models at 10 % each
# (names as in the Open EV Data models file).
DEMAND: dict[str, Any] = {
    "energy_kwh": (6.0, 14.0),
    "car_mix": (("Nissan Leaf 40 kWh", 0.6), ("Renault Zoe R110 ZE40", 0.1),
                ("Peugeot e-208 7,2 kW-AC", 0.1), ("Volkswagen ID.3 58 kWh", 0.1),
                ("Tesla Model 3 SR+", 0.1)),
}


@dataclass(frozen=True, slots=True)
class CityParams:
    centre: tuple[float, float] = (50.0, 8.0)  # arbitrary; nothing depends on the place
    radius_km: float = 3.0  # stations lie in a disc this wide around the centre
    charge_points: int = 60  # in all: the hubs' units, the rest on AC posts
    hubs: int = 3
    units_per_hub: tuple[int, int] = (4, 6)  # low, high, inclusive; one DC point per unit
    hub_unit_kw: tuple[float, ...] = (50.0, 50.0, 150.0)  # one drawn per hub, all its units alike
    hub_spread_m: float = 10.0  # units within this of their hub's point
    ac_kw: tuple[tuple[float, float], ...] = ((7.4, 0.3), (11.0, 0.4), (22.0, 0.3))  # (kW, weight)
    ac_operators: int = 4
    points_per_post: int = 2


def _check(p: CityParams) -> None:
    lo, hi = p.units_per_hub
    if p.hubs < 0 or not 1 <= lo <= hi:
        raise ValueError(f"hubs must be >= 0 and units_per_hub 1 <= low <= high, got {p.hubs}, {p.units_per_hub}")
    if p.hubs * hi > p.charge_points:
        raise ValueError(f"{p.hubs} hubs of up to {hi} units do not fit in {p.charge_points} charge points")
    if not (p.radius_km > 0 and p.hub_spread_m >= 0 and p.hub_unit_kw and p.ac_kw
            and p.ac_operators >= 1 and p.points_per_post >= 1):
        raise ValueError(f"radius, spread, powers, operators and points per post must be set: {p}")


def _in_disc(rng: np.random.Generator, radius_km: float) -> tuple[float, float]:
    """(north, east) km uniform over a disc (sqrt: uniform by area, not bunched in the middle)."""
    r = radius_km * math.sqrt(rng.random())
    theta = rng.random() * 2.0 * math.pi
    return r * math.sin(theta), r * math.cos(theta)


def _at(p: CityParams, north_km: float, east_km: float) -> tuple[float, float]:
    lat, lon = offset_deg(p.centre[0], p.centre[1], north_km, east_km)
    return round(float(lat), 6), round(float(lon), 6)


def stations(seed: int = 1, p: CityParams = CityParams()) -> list[StationMeta]:
    """The town's charging devices: hub units (ids hub<h>u<k>, operator "Hub <h>") and AC
    posts (ids ac<i>, operators "AC <j>"), without sites: grouping by operator and distance
    (recarga.core.sites) makes each hub one site and leaves the posts alone."""
    _check(p)
    rng = np.random.default_rng(seed)
    out: list[StationMeta] = []
    used = 0
    for h in range(p.hubs):
        # hubs in the inner part of the town, where through traffic passes
        north, east = _in_disc(rng, 0.6 * p.radius_km)
        kw = float(rng.choice(p.hub_unit_kw))
        units = int(rng.integers(p.units_per_hub[0], p.units_per_hub[1] + 1))
        for k in range(units):
            dn, de = _in_disc(rng, p.hub_spread_m / 1000.0)
            lat, lon = _at(p, north + dn, east + de)
            slots = (SlotMeta(power_kw=kw, dc=True),)
            out.append(StationMeta(id=f"hub{h}u{k}", lat=lat, lon=lon, slots=slots,
                                   operator=f"Hub {h}", price_per_kwh=default_price(slots),
                                   name=f"Hub {h} unit {k + 1}"))
        used += units
    powers = np.array([kw for kw, _ in p.ac_kw])
    weights = np.array([w for _, w in p.ac_kw], dtype=float)
    i = 0
    while used < p.charge_points:
        n = min(p.points_per_post, p.charge_points - used)
        kw = float(rng.choice(powers, p=weights / weights.sum()))
        lat, lon = _at(p, *_in_disc(rng, p.radius_km))
        slots = tuple(SlotMeta(power_kw=kw, dc=False) for _ in range(n))
        out.append(StationMeta(id=f"ac{i:03d}", lat=lat, lon=lon, slots=slots,
                               operator=f"AC {i % p.ac_operators}", price_per_kwh=default_price(slots),
                               name=f"AC post {i + 1}"))
        used += n
        i += 1
    return out


def load_per_slot(slots: int, sessions_per_day: float = SESSIONS_PER_DAY) -> float:
    """The load level (cars asking per slot per day) that gives sessions_per_day."""
    if slots <= 0:
        raise ValueError("the town has no charge points")
    return sessions_per_day / slots

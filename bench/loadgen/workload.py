"""What the fleet asks for: which of Berlin's stations are online and where the cars stand."""
from __future__ import annotations

import math
import random

from harness import ROOT
from recarga.core.geo import offset_deg
from recarga.core.model import StationMeta
from recarga.core.stations import load_stations

BERLIN_CSV = ROOT / "data" / "berlin_charging_stations_bnetza.csv"


def choose_stations(n: int, rng: random.Random) -> tuple[list[StationMeta], list[StationMeta]]:
    """(the whole register, `n` of its stations drawn to be online)."""
    everything = load_stations(BERLIN_CSV)
    online = rng.sample(everything, min(n, len(everything)))
    return everything, online


def car_fields(rng: random.Random, online: list[StationMeta]) -> dict:
    """A reserve request's fields: within 1.5 km of an online station, state of charge 0.1-0.3,
    40-80 kWh, 15-20 kWh/100 km, AC 7.4-22 kW, DC 0-150 kW, target 0.8."""
    s = rng.choice(online)
    r = 1.5 * math.sqrt(rng.random())
    t = rng.random() * 2 * math.pi
    lat, lon = offset_deg(s.lat, s.lon, r * math.sin(t), r * math.cos(t))
    return {
        "lat": round(lat, 6),
        "lon": round(lon, 6),
        "soc": round(rng.uniform(0.1, 0.3), 3),
        "battery_kwh": round(rng.uniform(40.0, 80.0), 1),
        "consumption_kwh_100km": round(rng.uniform(15.0, 20.0), 1),
        "max_ac_kw": rng.choice([7.4, 11.0, 11.0, 22.0]),
        "max_dc_kw": rng.choice([0.0, 50.0, 100.0, 150.0]),
        "target_soc": 0.8,
    }

"""Car models from Open EV Data (data/ev_models_open_ev_data.json, MIT; see data/SOURCES.md)
and their charging: AC power per charging point, DC charge curve, time and energy."""
from __future__ import annotations

import bisect
import json
import math
import os
from dataclasses import dataclass

from recarga.core import resources

DEFAULT_PATH = resources.EV_MODELS  # shipped with the package

# The protocol's accepted ranges (recarga/core/protocol/wire.py): a model outside them cannot ask.
_CONSUMPTION_RANGE = (5.0, 80.0)


@dataclass(frozen=True, slots=True)
class CarModel:
    name: str
    battery_kwh: float
    consumption_kwh_100km: float
    max_ac_kw: float
    max_dc_kw: float  # 0: no DC inlet
    # AC: (charging point rating kW, power the car draws there kW), by rating; empty: max_ac_kw
    ac_per_point: tuple[tuple[float, float], ...]
    # DC: (state of charge 0..1, kW) by state of charge; empty when max_dc_kw is 0
    dc_curve: tuple[tuple[float, float], ...]
    model_id: str = ""  # Open EV Data's id
    phev: bool = False  # plug-in hybrid: AC only, small battery

    def ac_power(self, slot_kw: float) -> float:
        """What the car draws on an AC point of this rating: on-board charger and phases
        limit it (a single-phase 7.4 kW car gets 3.7 kW from an 11 kW three-phase point)."""
        limit = self.max_ac_kw
        if self.ac_per_point:
            ratings = [r for r, _ in self.ac_per_point]
            j = bisect.bisect_right(ratings, slot_kw + 1e-9) - 1
            limit = self.ac_per_point[max(j, 0)][1]
        return min(slot_kw, limit)

    def power_curve(self, slot_kw: float, dc: bool,
                    limit_kw: float = math.inf) -> tuple[tuple[float, float], ...]:
        """Piecewise-linear (soc, kW) the car draws on this slot, capped by the slot and by
        `limit_kw` (the limit a car's request states)."""
        if not dc:
            p = min(self.ac_power(slot_kw), limit_kw)
            return ((0.0, p), (1.0, p))
        return _cap(self.dc_curve, min(slot_kw, limit_kw))


def _cap(curve: tuple[tuple[float, float], ...], cap: float) -> tuple[tuple[float, float], ...]:
    """min(curve, cap) as a piecewise-linear curve (crossings become breakpoints)."""
    out: list[tuple[float, float]] = []
    for (s0, p0), (s1, p1) in zip(curve, curve[1:]):
        if not out:
            out.append((s0, min(p0, cap)))
        if (p0 - cap) * (p1 - cap) < 0:  # crosses the cap inside the segment
            sx = s0 + (cap - p0) / (p1 - p0) * (s1 - s0)
            out.append((sx, cap))
        out.append((s1, min(p1, cap)))
    return tuple(out)


def _segments(curve: tuple[tuple[float, float], ...], a: float, b: float):
    """(s0, s1, p0, p1) pieces of a piecewise-linear curve restricted to a..b."""
    for (s0, p0), (s1, p1) in zip(curve, curve[1:]):
        lo, hi = max(s0, a), min(s1, b)
        if hi <= lo:
            continue
        k = (p1 - p0) / (s1 - s0) if s1 > s0 else 0.0
        yield lo, hi, p0 + k * (lo - s0), p0 + k * (hi - s0)


def charge_seconds(curve: tuple[tuple[float, float], ...], battery_kwh: float,
                   soc_from: float, soc_to: float) -> float:
    """Exact time to charge soc_from -> soc_to along a piecewise-linear power curve:
    the integral of battery / P(soc) d soc, in closed form per linear piece."""
    if soc_to <= soc_from:
        return 0.0
    t = 0.0
    for lo, hi, pa, pb in _segments(curve, soc_from, soc_to):
        pa, pb = max(pa, 0.05), max(pb, 0.05)  # a curve ending at 0 kW: trickle, not forever
        if abs(pb - pa) < 1e-9:
            t += (hi - lo) / pa
        else:
            t += (hi - lo) * math.log(pb / pa) / (pb - pa)
    return t * battery_kwh * 3600.0


def soc_after(curve: tuple[tuple[float, float], ...], battery_kwh: float,
              soc_from: float, seconds: float) -> float:
    """State of charge after charging `seconds` from soc_from (the inverse of
    charge_seconds, by bisection; used to check the bookkeeping, not in the loop)."""
    lo, hi = soc_from, 1.0
    if charge_seconds(curve, battery_kwh, soc_from, hi) <= seconds:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if charge_seconds(curve, battery_kwh, soc_from, mid) < seconds:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _consumption(raw: float) -> float:
    # Some entries are in Wh/km (Audi Q4 e-tron 188, CUPRA Born 166): ten times kWh/100 km.
    return raw / 10.0 if raw > _CONSUMPTION_RANGE[1] else raw


def load_models(path: str | os.PathLike[str] = DEFAULT_PATH) -> list[CarModel]:
    """Cars (not motorbikes), battery-electric and plug-in hybrid, whose figures the protocol
    accepts, in file order. A plug-in hybrid charges on AC only (its DC figures, if any, are
    ignored: few have an inlet and none that public fast chargers serve)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)["data"]
    models = []
    for x in data:
        if x.get("vehicle_type") != "car" or x.get("type") not in ("bev", "phev"):
            continue
        phev = x["type"] == "phev"
        cons = _consumption(float(x["energy_consumption"]["average_consumption"]))
        battery = float(x["usable_battery_size"])
        if not (_CONSUMPTION_RANGE[0] <= cons <= _CONSUMPTION_RANGE[1] and 1.0 <= battery <= 300.0):
            continue
        ac = x.get("ac_charger") or {}
        max_ac = float(ac.get("max_power") or 0.0)
        per_point = tuple(sorted((float(k), float(v)) for k, v in
                                 (ac.get("power_per_charging_point") or {}).items()))
        dc = {} if phev else x.get("dc_charger") or {}
        max_dc = float(dc.get("max_power") or 0.0)
        curve: tuple[tuple[float, float], ...] = ()
        if max_dc > 0:
            pts = sorted((float(p["percentage"]) / 100.0, float(p["power"])) for p in dc.get("charging_curve") or [])
            if not pts:
                pts = [(0.0, max_dc), (1.0, max_dc)]
            if pts[0][0] > 0:
                pts.insert(0, (0.0, pts[0][1]))
            if pts[-1][0] < 1:
                pts.append((1.0, pts[-1][1]))
            curve = tuple(pts)
        if max_ac <= 0 and max_dc <= 0 or max_ac > 50.0 or max_dc > 500.0:
            continue
        name = " ".join(p for p in (x.get("brand", ""), x.get("model", ""), x.get("variant", "")) if p)
        models.append(CarModel(name, battery, cons, max_ac, max_dc, per_point, curve,
                               str(x.get("id", "")), phev))
    return models


def by_id(models: list[CarModel]) -> dict[str, CarModel]:
    """Models by their Open EV Data id (what a car's reserve request names as `model`)."""
    return {m.model_id: m for m in models if m.model_id}


def describe(models: list[CarModel]) -> str:
    """What a models file gave, e.g. "196 battery-electric, 61 plug-in hybrid"."""
    phev = sum(m.phev for m in models)
    return f"{len(models) - phev} battery-electric, {phev} plug-in hybrid"

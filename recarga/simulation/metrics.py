"""What a run measured: waits, times, stranding, how much and how evenly slots were used."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from recarga.simulation.loop import FINISHED, NO_SHOW, STRANDED, SimResult


@dataclass(frozen=True, slots=True)
class Metrics:
    policy: str
    cars_per_day: float
    cars: int
    finished: int
    stranded: int
    no_show: int
    unfinished: int  # still driving, waiting or charging when the run stopped
    mean_wait_min: float
    p95_wait_min: float
    max_wait_min: float
    mean_drive_min: float
    mean_charge_min: float
    mean_total_min: float  # drive + wait + charge, from the first request to unplugging
    utilisation: float  # slot-time charging in the day / (slots x day)
    slots_used: float  # share of slots that served at least one car
    gini: float  # of the stations' utilisation (0: all equal, 1: all on one station)
    expired_waiting: int  # reservations that expired while their car waited on site
    charge_vs_estimate: float  # actual charge time / the answer's estimate, over finished cars
    decisions_per_s: float
    wall_s: float

    def row(self) -> dict:
        return asdict(self)


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 when all are equal or all are zero)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if n == 0 or v.sum() <= 0:
        return 0.0
    cum = np.cumsum(v)
    return float((n + 1 - 2 * (cum / cum[-1]).sum()) / n)


def waits_s(r: SimResult) -> np.ndarray:
    """Waiting per car that asked and was not a no-show or stranded: time from the first
    request to plugging in, less driving (parked after no_capacity, queueing on site, a
    reservation re-asked). A car still waiting at the end counts with its wait so far."""
    out = []
    for c in r.cars:
        if c.ask_s is None or c.state in (NO_SHOW, STRANDED):
            continue
        until = c.plug_s if c.plug_s is not None else r.end_s
        out.append(max(0.0, until - c.ask_s - c.drive_s))
    return np.array(out)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def station_utilisation(r: SimResult) -> np.ndarray:
    """Per station (in r.stations order): its slots' charging time in the day / (slots x day)."""
    window = r.day_s if r.day_s > 0 else 1.0
    busy: dict[str, float] = {}
    for s in r.sessions:
        busy[s.station] = busy.get(s.station, 0.0) + max(0.0, min(s.end, window) - max(s.start, 0.0))
    return np.array([busy.get(s.id, 0.0) / (len(s.slots) * window) for s in r.stations])


def measure(r: SimResult, cars_per_day: float) -> Metrics:
    cars = r.cars
    fin = [c for c in cars if c.state == FINISHED]
    w = waits_s(r)
    window = r.day_s if r.day_s > 0 else 1.0
    slots_total = sum(len(s.slots) for s in r.stations)
    used = {(s.station, s.slot) for s in r.sessions}
    busy = sum(max(0.0, min(s.end, window) - max(s.start, 0.0)) for s in r.sessions)
    per_station = station_utilisation(r)

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else 0.0

    return Metrics(
        policy=r.policy, cars_per_day=cars_per_day, cars=len(cars), finished=len(fin),
        stranded=sum(c.state == STRANDED for c in cars), no_show=sum(c.state == NO_SHOW for c in cars),
        unfinished=sum(c.state not in (FINISHED, STRANDED, NO_SHOW) for c in cars),
        mean_wait_min=float(w.mean() / 60) if len(w) else 0.0,
        p95_wait_min=float(np.percentile(w, 95) / 60) if len(w) else 0.0,
        max_wait_min=float(w.max() / 60) if len(w) else 0.0,
        mean_drive_min=mean([c.drive_s / 60 for c in fin]),
        mean_charge_min=mean([(c.leave_s - c.plug_s) / 60 for c in fin]),
        mean_total_min=mean([(c.leave_s - c.ask_s) / 60 for c in fin]),
        utilisation=float(busy / (slots_total * window)) if slots_total else 0.0,
        slots_used=len(used) / slots_total if slots_total else 0.0,
        gini=gini(per_station),
        expired_waiting=sum(c.expired for c in cars),
        charge_vs_estimate=_ratio(sum(c.leave_s - c.plug_s for c in fin),
                                  sum(c.est_charge_s or 0.0 for c in fin)),
        decisions_per_s=r.decisions / r.decision_s if r.decision_s > 0 else 0.0,
        wall_s=r.wall_s,
    )

"""What a run measured, as drivers judge it: the time a charge costs them (driving to the
station, waiting, charging), who was stranded or gave up, and how much and how evenly the
stations were used (docs/simulation.md, "Metrics")."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from recarga.core.model import StationMeta
from recarga.simulation.loop import (
    FINISHED,
    GAVE_UP,
    NO_SHOW,
    STRANDED,
    CarRun,
    SimResult,
)


@dataclass(frozen=True, slots=True)
class Metrics:
    policy: str
    cars_per_day: float
    cars: int
    finished: int
    stranded: int  # ran out: no station in reach could serve the car
    gave_up: int  # waited past the driver's patience and left without charging
    no_show: int
    unfinished: int  # still driving, waiting or charging when the run stopped
    came: int  # asked and came (finished, gave up or unfinished): the cars below are over
    mean_lost_min: float  # time lost per charge: drive + wait + charge, gave up: + the charge still needed
    p95_lost_min: float
    mean_wait_min: float
    p95_wait_min: float
    max_wait_min: float
    mean_drive_min: float  # from where the car asked to the station(s), same cars as lost
    mean_charge_min: float  # plugged in until the battery reached its target, finished cars
    energy_kwh: float  # delivered to the batteries of the cars that finished
    utilisation: float  # slot-time charging in the day / (slots x day)
    slots_used: float  # share of slots that served at least one car
    gini: float  # of the sites' utilisation (stations' when not grouped): 0 even, 1 all on one
    sites: int  # how many sites the Gini is over
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


def _counted(c: CarRun) -> bool:
    """A car that asked and came: its wait and time lost count (no-shows never came, stranded
    cars are counted apart)."""
    return c.ask_s is not None and c.state not in (NO_SHOW, STRANDED)


def waits_s(r: SimResult) -> np.ndarray:
    """Waiting per car that asked and came: time from the first request to plugging in (or
    giving up), less driving (parked after no_capacity, queueing on site, a reservation
    re-asked). A car still waiting at the end counts with its wait so far."""
    out = []
    for c in r.cars:
        if not _counted(c):
            continue
        until = c.plug_s if c.plug_s is not None else c.leave_s if c.state == GAVE_UP else r.end_s
        out.append(max(0.0, until - c.ask_s - c.drive_s))
    return np.array(out)


def lost_s(r: SimResult) -> np.ndarray:
    """Time lost per charge, per car that asked and came: from the first request (where the
    car ran low, on its way somewhere) until its battery reached the target, i.e. the drive
    to the station + waiting + charging. A car that gave up lost the time until it left plus
    the charge it still needs at the power it wanted (CarRun.charge_left_s), as if it had
    plugged in the moment it left: giving up never costs less than charging then, so a
    policy cannot look cheaper by driving its drivers away. One still on its way, waiting or
    charging at the end counts with its time so far. Time plugged in after charging is the
    driver's choice and not lost."""
    out = []
    for c in r.cars:
        if not _counted(c):
            continue
        if c.charge_end_s is not None:
            until = c.charge_end_s
        elif c.state == GAVE_UP:
            until = c.leave_s + c.charge_left_s
        else:
            until = r.end_s
        out.append(max(0.0, until - c.ask_s))
    return np.array(out)


def _busy_s(r: SimResult) -> dict[str, float]:
    """Per station id: its slots' charging time within the day."""
    window = r.day_s if r.day_s > 0 else 1.0
    busy: dict[str, float] = {}
    for s in r.sessions:
        busy[s.station] = busy.get(s.station, 0.0) + max(0.0, min(s.end, window) - max(s.start, 0.0))
    return busy


def station_utilisation(r: SimResult) -> np.ndarray:
    """Per station (in r.stations order): its slots' charging time in the day / (slots x day)."""
    window = r.day_s if r.day_s > 0 else 1.0
    busy = _busy_s(r)
    return np.array([busy.get(s.id, 0.0) / (len(s.slots) * window) for s in r.stations])


def site_of(s: StationMeta) -> str:
    """The site a station belongs to; an ungrouped station is a site of its own."""
    return s.site or s.id


def site_utilisation(r: SimResult) -> np.ndarray:
    """Per site (in order of first appearance in r.stations): the charging time of all its
    slots in the day / (its slots x day). Drivers judge a hub as one place."""
    window = r.day_s if r.day_s > 0 else 1.0
    busy = _busy_s(r)
    per: dict[str, list[float]] = {}
    for s in r.stations:
        acc = per.setdefault(site_of(s), [0.0, 0.0])
        acc[0] += busy.get(s.id, 0.0)
        acc[1] += len(s.slots)
    return np.array([b / (n * window) for b, n in per.values()])


def _min(values: np.ndarray, fn) -> float:
    return float(fn(values) / 60) if len(values) else 0.0


def measure(r: SimResult, cars_per_day: float) -> Metrics:
    cars = r.cars
    fin = [c for c in cars if c.state == FINISHED]
    counted = [c for c in cars if _counted(c)]
    w = waits_s(r)
    lost = lost_s(r)
    window = r.day_s if r.day_s > 0 else 1.0
    slots_total = sum(len(s.slots) for s in r.stations)
    used = {(s.station, s.slot) for s in r.sessions}
    busy = sum(_busy_s(r).values())
    per_site = site_utilisation(r)
    charge_s = [c.charge_end_s - c.plug_s for c in fin]

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else 0.0

    return Metrics(
        policy=r.policy, cars_per_day=cars_per_day, cars=len(cars), finished=len(fin),
        stranded=sum(c.state == STRANDED for c in cars), gave_up=sum(c.state == GAVE_UP for c in cars),
        no_show=sum(c.state == NO_SHOW for c in cars),
        unfinished=sum(c.state not in (FINISHED, STRANDED, NO_SHOW, GAVE_UP) for c in cars),
        came=len(counted),
        mean_lost_min=_min(lost, np.mean),
        p95_lost_min=_min(lost, lambda v: np.percentile(v, 95)),
        mean_wait_min=_min(w, np.mean),
        p95_wait_min=_min(w, lambda v: np.percentile(v, 95)),
        max_wait_min=_min(w, np.max),
        mean_drive_min=mean([c.drive_s / 60 for c in counted]),
        mean_charge_min=mean([s / 60 for s in charge_s]),
        energy_kwh=float(sum(s.energy_kwh for s in r.sessions)),
        utilisation=float(busy / (slots_total * window)) if slots_total else 0.0,
        slots_used=len(used) / slots_total if slots_total else 0.0,
        gini=gini(per_site),
        sites=len(per_site),
        expired_waiting=sum(c.expired for c in cars),
        charge_vs_estimate=_ratio(sum(charge_s), sum(c.est_charge_s or 0.0 for c in fin)),
        decisions_per_s=r.decisions / r.decision_s if r.decision_s > 0 else 0.0,
        wall_s=r.wall_s,
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0

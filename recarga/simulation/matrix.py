"""The scenario matrix: every policy on several cities and station groupings, each at 1x, 2x,
4x and 8x its load and several seeds, judged row by row by the goals (report.check).

A row is one scenario at one load multiple. Its figures pool the seeds: means weighted by the
cars counted in each seed, counts summed, the p95 wait averaged over the seeds (percentiles of
different runs do not pool exactly). The row's verdict is report.check on the pooled figures;
how many seeds meet the goals on their own is shown beside it.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from recarga.core.model import StationMeta
from recarga.core.selection import POLICIES
from recarga.core.sites import DEFAULT_SITE_DISTANCE_M, by_site
from recarga.core.stations import load_stations
from recarga.simulation import city, cli, demand, report
from recarga.simulation.labels import Labels
from recarga.simulation.loop import RESERVING
from recarga.simulation.metrics import Metrics

MULTIPLES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
SEEDS: tuple[int, ...] = (1, 2, 3)
CENTRE_RADIUS_KM = 3.0  # Berlin's centre: stations this close to the stations' median position
# Berlin city-wide runs simulate the busiest hours only (15:00-19:00 of the daily profile, at
# the day's rates): a whole day at 8x is ~56,000 cars per policy and seed, minutes per run.
BUSY_START_HOUR = 15
BUSY_HOURS = 4.0


@dataclass(frozen=True)
class Case:
    """One scenario of the matrix: a station set, how its devices are grouped and its demand."""

    key: str  # names it on the command line
    name: str  # names it in the table
    stations: str  # station file (any format load_stations reads)
    labels: Labels
    load_1x: float  # cars asking per slot per day at 1x
    site_distance_m: float = DEFAULT_SITE_DISTANCE_M  # 0: every device is a site of its own
    radius_km: float | None = None  # only stations this close to the stations' centre
    hours: float = 24.0  # cars appear over this many hours...
    start_hour: int = 0  # ...starting at this hour of the daily profile
    demand: dict[str, Any] = field(default_factory=dict)  # DemandParams fields (scenario keys)

    def demand_fields(self) -> dict[str, Any]:
        """The demand, with the daily profile turned so the run starts at start_hour."""
        prof = tuple(self.demand.get("profile", demand.DAILY_PROFILE))
        k = self.start_hour % len(prof)
        return {**self.demand, "profile": prof[k:] + prof[:k]} if k else dict(self.demand)

    def window(self) -> str:
        """What the run simulates, in words."""
        start = f"from {self.start_hour:02d}:00"
        return f"{self.hours:g} h {start}" + (" (the busiest hours)" if self.start_hour else "")


def berlin_cases(stations: str, labels: Labels) -> list[Case]:
    """Berlin by device, by site, and its centre by site, at 1 car per slot per day at 1x."""
    return [
        Case("berlin_device", "Berlin by device", stations, labels, 1.0, site_distance_m=0.0,
             hours=BUSY_HOURS, start_hour=BUSY_START_HOUR),
        Case("berlin_site", "Berlin by site", stations, labels, 1.0,
             hours=BUSY_HOURS, start_hour=BUSY_START_HOUR),
        Case("berlin_centre", f"Berlin's centre by site ({CENTRE_RADIUS_KM:g} km)", stations, labels, 1.0,
             radius_km=CENTRE_RADIUS_KM),
    ]


def small_city_case(stations_path: str, slots: int, labels: Labels) -> Case:
    """The synthetic small city (recarga.simulation.city) by site, city.SESSIONS_PER_DAY at 1x."""
    return Case("small_city", city.NAME, stations_path, labels, city.load_per_slot(slots),
                demand=dict(city.DEMAND))


def load_case_stations(case: Case) -> list[StationMeta]:
    """The stations a case simulates, grouped into sites as its runs group them."""
    return cli.select_stations(load_stations(case.stations, case.site_distance_m), case.radius_km,
                           case.demand.get("centre"))


# ----------------------------------------------------------------------------- running


def jobs(cases: Sequence[Case], multiples: Sequence[float], seeds: Sequence[int], models: str,
         policies: Sequence[str] = POLICIES, patience_s: float = 1800.0) -> list[dict[str, Any]]:
    """The runs of the matrix, as cli.run_point takes them (plus the case key and multiple)."""
    out = []
    for case in cases:
        dem = case.demand_fields()
        for mult in multiples:
            for seed in seeds:
                for policy in policies:
                    out.append({"id": len(out), "case": case.key, "multiple": mult, "policy": policy,
                                "load": case.load_1x * mult, "seed": seed, "radius_km": case.radius_km,
                                "site_distance_m": case.site_distance_m, "stations": case.stations,
                                "models": models, "hours": case.hours, "demand": dem, "replay": None,
                                "fast_only": False, "patience_s": patience_s})
    return out


Sweep = Callable[[list[dict[str, Any]], int, bool], list[report.Point]]


def run(job_list: list[dict[str, Any]], workers: int, show_progress: bool = True,
        sweep: Sweep = cli.sweep) -> list[tuple[dict[str, Any], Metrics]]:
    """Run the jobs through sweep (worker processes when workers > 1), the costliest first so
    the workers finish together; each job with its metrics, in the jobs' order."""
    order = sorted(range(len(job_list)), key=lambda i: -_cost(job_list[i]))
    points = sweep([job_list[i] for i in order], workers, show_progress)
    by_index = dict(zip(order, points))
    return [(j, by_index[i].metrics) for i, j in enumerate(job_list)]


def _cost(job: dict[str, Any]) -> float:
    # cars per run grow with load and window; whole-city files are the large ones
    return job["load"] * job["hours"] * (1.0 if job["radius_km"] else 8.0)


# ----------------------------------------------------------------------------- judging


def pool(ms: Sequence[Metrics]) -> Metrics:
    """One policy's figures over several seeds: counts summed, means weighted by the cars they
    are over, the p95 wait and lost and the utilisation and Gini averaged over the seeds."""
    if not ms:
        raise ValueError("nothing to pool")
    came = sum(m.came for m in ms)
    fin = sum(m.finished for m in ms)
    n = len(ms)

    def over(attr: str, weight: str) -> float:
        total = sum(getattr(m, weight) for m in ms)
        return sum(getattr(m, attr) * getattr(m, weight) for m in ms) / total if total else 0.0

    def avg(attr: str) -> float:
        return sum(getattr(m, attr) for m in ms) / n

    return replace(
        ms[0], cars_per_day=avg("cars_per_day"), cars=sum(m.cars for m in ms), finished=fin,
        stranded=sum(m.stranded for m in ms), gave_up=sum(m.gave_up for m in ms),
        no_show=sum(m.no_show for m in ms), unfinished=sum(m.unfinished for m in ms), came=came,
        mean_lost_min=over("mean_lost_min", "came"), p95_lost_min=avg("p95_lost_min"),
        mean_wait_min=over("mean_wait_min", "came"), p95_wait_min=avg("p95_wait_min"),
        max_wait_min=max(m.max_wait_min for m in ms), mean_drive_min=over("mean_drive_min", "came"),
        mean_charge_min=over("mean_charge_min", "finished"), energy_kwh=sum(m.energy_kwh for m in ms),
        utilisation=avg("utilisation"), slots_used=avg("slots_used"), gini=avg("gini"),
        expired_waiting=sum(m.expired_waiting for m in ms),
        charge_vs_estimate=avg("charge_vs_estimate"), decisions_per_s=avg("decisions_per_s"),
        wall_s=sum(m.wall_s for m in ms))


def status(verdicts: Sequence[report.Verdict]) -> str:
    """A row's verdict: NOT met if any goal is missed, met if none is and one at least was
    judged, else n/a (an empty run, a missing policy)."""
    if any(v.status == "NOT met" for v in verdicts):
        return "NOT met"
    return "met" if any(v.status == "met" for v in verdicts) else "n/a"


@dataclass(frozen=True)
class Row:
    case: Case
    multiple: float
    pooled: dict[str, Metrics]  # policy -> its figures over the seeds
    verdicts: list[report.Verdict]  # report.check on the pooled figures
    seeds_met: int  # seeds meeting the goals on their own
    seeds: int

    @property
    def status(self) -> str:
        return status(self.verdicts)

    def outcome(self) -> str:
        """The goal column: met, NOT met with the goals missed, or n/a with the reason."""
        s = self.status
        if s == "NOT met":
            return "NOT met: " + ", ".join(v.goal for v in self.verdicts if v.status == "NOT met")
        if s == "n/a":
            why = next((v.detail for v in self.verdicts if v.status == "n/a"), "")
            return f"n/a ({why})" if why else "n/a"
        return s


def rows(cases: Sequence[Case], results: Sequence[tuple[dict[str, Any], Metrics]]) -> list[Row]:
    """The matrix's rows, in the cases' order and by multiple."""
    grouped: dict[tuple[str, float], dict[int, list[Metrics]]] = {}
    for job, m in results:
        grouped.setdefault((job["case"], job["multiple"]), {}).setdefault(job["seed"], []).append(m)
    out = []
    for case in cases:
        for (key, mult), by_seed in sorted((k, v) for k, v in grouped.items() if k[0] == case.key):
            per_policy: dict[str, list[Metrics]] = {}
            for ms in by_seed.values():
                for m in ms:
                    per_policy.setdefault(m.policy, []).append(m)
            pooled = {p: pool(ms) for p, ms in per_policy.items()}
            met = sum(status(report.check(ms)) == "met" for ms in by_seed.values())
            out.append(Row(case, mult, pooled, report.check(list(pooled.values())), met, len(by_seed)))
    return out


# ----------------------------------------------------------------------------- output


def _policies(rs: Sequence[Row]) -> list[str]:
    seen = {p for r in rs for p in r.pooled}
    return [p for p in POLICIES if p in seen] + sorted(seen - set(POLICIES))


def _wait_cut(r: Row) -> str:
    ours = r.pooled.get(RESERVING)
    base = [m for p, m in r.pooled.items() if p != RESERVING]
    if ours is None or not base:
        return "n/a"
    best = min(base, key=lambda m: m.mean_wait_min)
    c = report.cut(ours.mean_wait_min, best.mean_wait_min)
    return "n/a (~0)" if c is None else f"{-100.0 * c:+.0f}%"


def cases_table(cases: Sequence[Case], described: dict[str, tuple[int, int, int, int]]) -> str:
    """Markdown: what each scenario simulates. described: case key -> (devices, sites, slots,
    DC slots)."""
    lines = ["| scenario | devices | sites | slots (DC) | 1x: cars/slot/day | 1x: cars/day | cars appear over |",
             "|---|---|---|---|---|---|---|"]
    for c in cases:
        devices, sites, slots, dc = described[c.key]
        per_day = c.load_1x * slots
        lines.append(f"| {c.name} | {devices:,} | {sites:,} | {slots:,} ({dc:,}) | {c.load_1x:.2f} | "
                     f"{per_day:,.0f} | {c.window()} |")
    return "\n".join(lines)


def describe(stations: Sequence[StationMeta]) -> tuple[int, int, int, int]:
    """(devices, sites, slots, DC slots) of a station set."""
    slots = [sl for s in stations for sl in s.slots]
    return len(stations), len(by_site(stations)), len(slots), sum(sl.dc for sl in slots)


def table(rs: Sequence[Row]) -> str:
    """Markdown: one line per row. Per policy: mean time lost / mean wait / p95 wait (minutes)
    / stranded / gave up (summed over the seeds)."""
    pols = _policies(rs)
    head = (["scenario", "load", "cars"] + [("Recarga" if p == RESERVING else p) for p in pols]
            + ["wait vs best baseline", "seeds met", "goal"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rs:
        cars = max((m.cars for m in r.pooled.values()), default=0)
        cells = [r.case.name, f"{r.multiple:g}x", f"{cars:,}"]
        for p in pols:
            m = r.pooled.get(p)
            cells.append("" if m is None else
                         f"{m.mean_lost_min:.1f} / {m.mean_wait_min:.1f} / {m.p95_wait_min:.1f} / "
                         f"{m.stranded} / {m.gave_up}")
        cells += [_wait_cut(r), f"{r.seeds_met}/{r.seeds}", r.outcome()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rs: Sequence[Row]) -> str:
    """The last line: how many rows meet the goals."""
    n = {s: sum(r.status == s for r in rs) for s in ("met", "NOT met", "n/a")}
    return f"goal met in {n['met']} of {len(rs)} rows (NOT met: {n['NOT met']}, n/a: {n['n/a']})"


def write_csv(results: Sequence[tuple[dict[str, Any], Metrics]], cases: Sequence[Case],
              path: str | os.PathLike[str]) -> None:
    """Every run: scenario, multiple, seed and all its metrics."""
    name = {c.key: c.name for c in cases}
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        header = False
        for job, m in results:
            row = m.row()
            if not header:
                w.writerow(["scenario", "multiple", "load_cars_per_slot_day", "seed", *row])
                header = True
            w.writerow([name[job["case"]], job["multiple"], job["load"], job["seed"],
                        *(round(v, 6) if isinstance(v, float) else v for v in row.values())])

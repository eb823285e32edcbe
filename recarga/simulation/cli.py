"""Sweep policies x load levels on identical demand; print the table, write CSV and plots.

Used by `recarga-gateway simulate` and `bench/simulate.py`; the last line printed is the
headline (report.headline).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from recarga.core import evmodels, resources
from recarga.core.model import StationMeta
from recarga.core.selection import POLICIES, haversine_km
from recarga.core.stations import load_stations
from recarga.simulation import demand, loop, metrics, report

DEFAULT_STATIONS = resources.BERLIN_STATIONS  # shipped with the package
DEFAULT_OUT = Path("run") / "simulation"

# Load levels in cars asking per charging slot per day. The full run covers the whole city;
# --quick the stations within QUICK_RADIUS_KM of the centre and the same levels.
FULL_LOADS = (1.0, 2.0, 4.0)
QUICK_LOADS = (1.0, 2.0, 4.0)
QUICK_RADIUS_KM = 3.0


def select_stations(stations: list[StationMeta], radius_km: float | None) -> list[StationMeta]:
    if not radius_km:
        return stations
    lat, lon = demand.CENTRE
    return [s for s in stations if haversine_km(lat, lon, s.lat, s.lon) <= radius_km]


_CACHE: dict[tuple, tuple[list[StationMeta], list[evmodels.CarModel]]] = {}


def _inputs(stations_path: str, models_path: str, radius_km: float | None):
    key = (stations_path, models_path, radius_km)
    if key not in _CACHE:
        _CACHE[key] = (select_stations(load_stations(stations_path), radius_km),
                       evmodels.load_models(models_path))
    return _CACHE[key]


def run_point(job: dict[str, Any], progress: Any = None) -> report.Point:
    """One (policy, load) run; a pure function of the job (and the data files)."""
    logging.getLogger("recarga").setLevel(logging.ERROR)  # refusals are expected here, by the thousand
    stations, models = _inputs(job["stations"], job["models"], job["radius_km"])
    slots = sum(len(s.slots) for s in stations)
    cars_per_day = job["load"] * slots * job["hours"] / 24.0
    ecfg = loop.engine_config(job["policy"])
    dp = demand.DemandParams(cars_per_day=cars_per_day * 24.0 / job["hours"], hours=job["hours"],
                             no_show=job["no_show"], fast_only=job["fast_only"])
    plans = demand.generate(job["seed"], dp, stations, models, ecfg.selection.road_factor)
    cfg = loop.SimConfig(job["policy"], ecfg, day_s=job["hours"] * 3600.0)
    stop = (job["hours"] + cfg.drain_s / 3600.0) * 3600.0

    def tell(t: float) -> None:
        if progress is not None:
            progress.put((job["id"], min(1.0, t / stop) if t < stop else 1.0))

    res = loop.simulate(cfg, stations, plans, tell)
    tell(stop)
    if res.anomalies:
        logging.getLogger("recarga.simulation").warning("%s at %g: %d anomalies, first: %s",
                                                       job["policy"], job["load"], len(res.anomalies), res.anomalies[0])
    return report.Point(job["load"], metrics.measure(res, len(plans) / job["hours"] * 24.0),
                        metrics.station_utilisation(res))


def _worker(args: tuple[dict[str, Any], Any]) -> report.Point:
    return run_point(*args)


def sweep(jobs: list[dict[str, Any]], workers: int, show_progress: bool = True) -> list[report.Point]:
    """Run the jobs (in worker processes when workers > 1) with one progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="run", disable=not show_progress, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} runs [{elapsed}<{remaining}]")
    done: dict[int, float] = {}

    def update(jid: int, frac: float) -> None:
        old = done.get(jid, 0.0)
        if frac > old:
            done[jid] = frac
            bar.update(min(frac - old, bar.total - bar.n))  # float sums may overshoot

    if workers <= 1:
        class _Direct:
            @staticmethod
            def put(item: tuple[int, float]) -> None:
                update(*item)
        points = [run_point(j, _Direct) for j in jobs]
    else:
        ctx = mp.get_context("spawn")  # no inherited state: same results as one process
        with ctx.Manager() as mgr:
            q = mgr.Queue()
            with ctx.Pool(workers) as pool:
                pending = pool.map_async(_worker, [(j, q) for j in jobs], chunksize=1)
                while not pending.ready():
                    pending.wait(0.2)
                    while not q.empty():
                        update(*q.get())
                points = pending.get()
                while not q.empty():
                    update(*q.get())
    bar.close()
    return points


def build_parser(prog: str = "simulate") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_arguments(ap)
    return ap


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true",
                    help=f"stations within {QUICK_RADIUS_KM:g} km of the centre (about a minute)")
    ap.add_argument("--seed", type=int, default=1, help="demand seed; the same seed gives the same results")
    ap.add_argument("--loads", type=_floats, help="load levels, cars asking per slot per day, comma-separated")
    ap.add_argument("--policies", type=_policies, default=list(POLICIES),
                    help="comma-separated, from " + ", ".join(POLICIES))
    ap.add_argument("--radius-km", type=float, help="only stations this close to the centre (0: all)")
    ap.add_argument("--hours", type=float, default=24.0, help="cars appear over this many hours")
    ap.add_argument("--no-show", type=float, default=0.05, help="share of cars that never come")
    ap.add_argument("--fast-only", action="store_true",
                    help="sensitivity: drivers of DC-capable cars ask for fast chargers only")
    ap.add_argument("--stations", default=str(DEFAULT_STATIONS), help="BNetzA CSV or stations JSON")
    ap.add_argument("--models", default=str(evmodels.DEFAULT_PATH), help="Open EV Data JSON")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the CSV and plots")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--no-plots", action="store_true", help="CSV only")
    ap.add_argument("--no-progress", action="store_true")


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError("load levels must be > 0")
    return vals


def _policies(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in POLICIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown policy {bad}; valid: {', '.join(POLICIES)}")
    return names


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.no_show < 1 or args.hours <= 0 or args.jobs < 1:
        print("simulate: --no-show must be in [0, 1), --hours and --jobs above 0", file=sys.stderr)
        return 2
    radius = args.radius_km if args.radius_km is not None else (QUICK_RADIUS_KM if args.quick else None)
    loads = args.loads or list(QUICK_LOADS if args.quick else FULL_LOADS)
    stations, _ = _inputs(args.stations, args.models, radius)
    if not stations:
        print("simulate: no stations selected", file=sys.stderr)
        return 2
    slots = sum(len(s.slots) for s in stations)
    print(f"{len(stations)} stations, {slots} slots"
          f"{f' within {radius:g} km of the centre' if radius else ''}; loads {', '.join(f'{x:g}' for x in loads)} "
          f"cars/slot/day over {args.hours:g} h; seed {args.seed}; policies {', '.join(args.policies)}"
          f"{'; DC-capable cars ask for fast chargers only' if args.fast_only else ''}", flush=True)
    jobs = []
    for load in loads:
        for policy in args.policies:
            jobs.append({"id": len(jobs), "policy": policy, "load": load, "seed": args.seed,
                         "radius_km": radius, "stations": args.stations, "models": args.models,
                         "hours": args.hours, "no_show": args.no_show, "fast_only": args.fast_only})
    # the slow runs first, so two workers finish together
    jobs.sort(key=lambda j: (-j["load"], j["policy"] != "most_free"))
    t0 = time.perf_counter()
    points = sweep(jobs, args.jobs, not args.no_progress)
    wall = time.perf_counter() - t0
    print(report.table(points))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.no_plots:
        report.write_csv(points, out / "simulation.csv")
        written = [out / "simulation.csv"]
    else:
        written = report.write_all(points, stations, out)
    print(f"wrote {', '.join(str(p) for p in written)} in {wall:.0f} s")
    for line in report.goals(points):
        print(line)
    print(report.headline(points))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "simulate") -> int:
    return run(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

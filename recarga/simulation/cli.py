"""Sweep policies x load levels on identical demand; print the table, write CSV and plots.

Used by `recarga-gateway simulate` and `bench/simulate.py`; the last line printed is the
headline (report.headline).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Sequence

from recarga.core import evmodels, resources
from recarga.core.config_file import ConfigError
from recarga.core.geo import haversine_km
from recarga.core.model import StationMeta
from recarga.core.selection import POLICIES
from recarga.core.sites import DEFAULT_SITE_DISTANCE_M
from recarga.core.stations import load_stations
from recarga.simulation import demand, labels, loop, metrics, replay, report, scenario

DEFAULT_STATIONS = resources.BERLIN_STATIONS  # shipped with the package
DEFAULT_OUT = Path("run") / "simulation"

# Load levels in cars asking per charging slot per day. The full run covers the whole city;
# --quick the stations within QUICK_RADIUS_KM of the centre and the same levels.
FULL_LOADS = (1.0, 2.0, 4.0)
QUICK_LOADS = (1.0, 2.0, 4.0)
QUICK_RADIUS_KM = 3.0


def select_stations(stations: list[StationMeta], radius_km: float | None,
                    centre: tuple[float, float] | None = None) -> list[StationMeta]:
    """The stations within radius_km of the centre (given, else the stations' own)."""
    if not radius_km or not stations:
        return stations
    lat, lon = centre or demand.stations_centre(stations)
    return [s for s in stations if haversine_km(lat, lon, s.lat, s.lon) <= radius_km]


_CACHE: dict[tuple, tuple[list[StationMeta], list[evmodels.CarModel]]] = {}
_LOGS: dict[tuple, replay.SessionLog] = {}


def _inputs(stations_path: str, models_path: str, radius_km: float | None,
            centre: tuple[float, float] | None = None,
            site_distance_m: float = DEFAULT_SITE_DISTANCE_M):
    key = (stations_path, models_path, radius_km, centre, site_distance_m)
    if key not in _CACHE:
        stations = _read("stations", stations_path, lambda p: load_stations(p, site_distance_m))
        _CACHE[key] = (select_stations(stations, radius_km, centre),
                       _read("car models", models_path, evmodels.load_models))
    return _CACHE[key]


def _session_log(spec: dict[str, Any], stations: list[StationMeta]) -> replay.SessionLog:
    key = (spec["file"], tuple(sorted(spec["columns"].items())), spec["time_format"], len(stations))
    if key not in _LOGS:
        _LOGS[key] = replay.read_log(spec["file"], stations, spec["columns"], spec["time_format"])
    return _LOGS[key]


class InputError(Exception):
    """An input file the simulator cannot use; the message names the file and what is wrong."""


def _read(what: str, path: str, loader: Callable[[str], Any]) -> Any:
    try:
        return loader(path)
    except OSError as e:
        raise InputError(f"{what} file {path}: {e.strerror or e}") from None
    except KeyError as e:
        raise InputError(f"{what} file {path}: not in the expected format (no key {e})") from None
    except (ValueError, TypeError) as e:
        text = " ".join(str(e).split())  # one line
        raise InputError(f"{what} file {text}" if text.startswith(str(path))
                         else f"{what} file {path}: {text}") from None


@contextlib.contextmanager
def _engine_errors_only() -> Iterator[None]:
    """The engine's log at ERROR while a run lasts (its refusals come by the thousand here),
    then as it was: the caller's logging is not changed for good."""
    engine_log = logging.getLogger("recarga.engine")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        engine_log.setLevel(level)


def run_point(job: dict[str, Any], progress: Any = None) -> report.Point:
    """One (policy, load) run; a pure function of the job (and the data files)."""
    dem = job["demand"]
    # site_distance_m: devices of one operator this close form a site (0: every device alone)
    stations, models = _inputs(job["stations"], job["models"], job["radius_km"], dem.get("centre"),
                               job.get("site_distance_m", DEFAULT_SITE_DISTANCE_M))
    slots = sum(len(s.slots) for s in stations)
    ecfg = loop.engine_config(job["policy"])
    if job["replay"] is not None:  # the log as recorded at load 1, copies of it above
        log = _session_log(job["replay"], stations)
        plans = replay.plans(log, models, dem.get("car_mix", ()), dem.get("target_soc", 0.80),
                             job["seed"], copies=job["load"],
                             **{k: dem[k] for k in ("no_show", "no_app") if k in dem})  # else replay's defaults
        job = {**job, "hours": replay.span_hours(plans)}
    else:
        cars_per_day = job["load"] * slots
        dp = demand.DemandParams(cars_per_day=cars_per_day, hours=job["hours"],
                                 fast_only=job["fast_only"], **dem)
        plans = demand.generate(job["seed"], dp, stations, models, ecfg.selection.road_factor)
    cfg = loop.SimConfig(job["policy"], ecfg, day_s=job["hours"] * 3600.0, patience_s=job["patience_s"])
    stop = (job["hours"] + cfg.drain_s / 3600.0) * 3600.0

    def tell(t: float) -> None:
        if progress is not None:
            progress.put((job["id"], min(1.0, t / stop) if t < stop else 1.0))

    with _engine_errors_only():
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
    ap.add_argument("--no-show", type=float, help="share of cars that never come (default 0.05; 0 for a replay)")
    ap.add_argument("--fast-only", action="store_true",
                    help="sensitivity: drivers of DC-capable cars ask for fast chargers only")
    ap.add_argument("--stations", help=f"BNetzA CSV or stations JSON (default: {DEFAULT_STATIONS.name})")
    ap.add_argument("--models", help=f"Open EV Data JSON (default: {Path(evmodels.DEFAULT_PATH).name})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the CSV and plots")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--no-plots", action="store_true", help="CSV only")
    add_demand_arguments(ap)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--patience-min", type=float, default=30.0,
                    help="a driver who has waited this long leaves without charging (gave up); 0: never")
    ap.add_argument("--city", help="the area's name in the outputs (default: from the station file's name)")
    ap.add_argument("--attribution",
                    help="the station data's attribution in the outputs (default: the register's for a "
                         "BNetzA CSV, else 'source: <file name>')")


# demand options: (flag, DemandParams field, parser of the text, help); the scenario file's
# [demand] keys have the same names and the same checks (scenario.check_demand)
DEMAND_OPTIONS: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    ("--centre", "centre", lambda t: _numbers(t), "LAT,LON of the demand centre and --radius-km (default: the stations' median)"),
    ("--centre-sigma-km", "centre_sigma_km", float, "spread around the centre (default: half the stations' median distance from it)"),
    ("--centre-share", "centre_share", float, "share of cars placed around the centre, the rest near a station (default 0.5)"),
    ("--station-sigma-km", "station_sigma_km", float, "spread around a station (default 1)"),
    ("--profile", "profile", lambda t: _numbers(t), "24 comma-separated arrival weights, hours 0-23"),
    ("--leg-km", "leg_km", lambda t: _numbers(t), "LOW,HIGH road km driven before asking (default 2,15)"),
    ("--ask-soc", "ask_soc", lambda t: _numbers(t), "LOW,HIGH state of charge when asking (default 0.10,0.35)"),
    ("--energy-kwh", "energy_kwh", lambda t: _numbers(t), "LOW,HIGH kWh wanted per session (replaces --ask-soc)"),
    ("--target-soc", "target_soc", float, "state of charge the car charges to (default 0.8)"),
    ("--dwell-min", "dwell_min", lambda t: _numbers(t), "LOW,HIGH minutes plugged in after charging (default 0,0)"),
    ("--no-app", "no_app", float, "share of drivers without the app (default 0)"),
)


def add_demand_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("demand (override the scenario file)")
    g.add_argument("--scenario", type=Path, help="TOML scenario file (docs/simulation.md)")
    for flag, dest, _, help_ in DEMAND_OPTIONS:
        g.add_argument(flag, dest=dest, metavar=flag[2:].upper().replace("-", "_"), help=help_)
    g.add_argument("--car", action="append", dest="car_mix", metavar="MODEL=WEIGHT",
                   help="a car model (name or Open EV Data id) and its weight in the mix; repeat")
    g.add_argument("--replay", type=Path, help="replay a session log CSV instead of generated demand; "
                   "loads are copies of the log (1: as recorded)")
    g.add_argument("--replay-columns", metavar="ROLE=HEADER,...",
                   help=f"which CSV header plays which role ({', '.join(replay.ROLES)}); the rest is detected")
    g.add_argument("--time-format", help="strptime format of the log's times (default: detected)")


def _numbers(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"not a list of numbers: {text!r}") from None


def demand_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None, scenario.Scenario]:
    """DemandParams fields and the replay spec: the scenario file, overridden by the command
    line; a ConfigError names the option or key at fault."""
    scen = scenario.load(args.scenario) if args.scenario else scenario.Scenario()
    fields = dict(scen.demand)
    cli: dict[str, Any] = {}
    for flag, dest, parse, _ in DEMAND_OPTIONS:
        text = getattr(args, dest, None)
        if text is not None:
            try:
                cli[dest] = parse(text)
            except (ValueError, ConfigError):
                raise ConfigError(f"{flag}: not a number or list of numbers: {text!r}") from None
    if args.no_show is not None:
        cli["no_show"] = args.no_show
    if args.car_mix:
        mix = {}
        for item in args.car_mix:
            name, sep, w = item.rpartition("=")
            try:
                mix[name.strip()] = float(w)
            except ValueError:
                name = ""
            if not sep or not name.strip():
                raise ConfigError(f"--car {item!r}: expected MODEL=WEIGHT")
        cli["car_mix"] = mix
    for key, value in cli.items():  # one at a time, so the message names the option
        flag = "--car" if key == "car_mix" else "--" + key.replace("_", "-")
        fields.update(scenario.check_demand({key: value}, flag))
    scenario.check_consistency(fields)
    spec = None
    if args.replay is not None or scen.replay is not None:
        base = scen.replay or scenario.ReplaySpec(args.replay)
        cols = dict(base.columns)
        if args.replay_columns:
            for item in args.replay_columns.split(","):
                role, sep, header = item.partition("=")
                if not sep or not role.strip() or not header.strip():
                    raise ConfigError(f"--replay-columns {item!r}: expected ROLE=HEADER")
                cols[role.strip()] = header.strip()
        spec = {"file": str(args.replay or base.file), "columns": cols,
                "time_format": args.time_format or base.time_format}
    return fields, spec, scen


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
    if args.patience_min < 0:
        print("simulate: --patience-min must be >= 0 (0: drivers never give up)", file=sys.stderr)
        return 2
    if args.hours <= 0 or args.jobs < 1:
        print("simulate: --hours and --jobs must be above 0", file=sys.stderr)
        return 2
    try:
        dem, spec, scen = demand_settings(args)
    except ConfigError as e:
        print(f"simulate: {e}", file=sys.stderr)
        return 2
    args.stations = str(args.stations or scen.stations or DEFAULT_STATIONS)
    args.models = str(args.models or scen.models or evmodels.DEFAULT_PATH)
    radius = args.radius_km if args.radius_km is not None else (QUICK_RADIUS_KM if args.quick else None)
    loads = args.loads or list(QUICK_LOADS if args.quick else FULL_LOADS)
    try:
        stations, models = _inputs(args.stations, args.models, radius, dem.get("centre"))
        if stations:
            demand.mix(models, dem.get("car_mix", ()))  # an unknown model name fails here, not in a worker
        if spec is not None and stations:
            print(_session_log(spec, stations).summary(), flush=True)
    except (InputError, ValueError) as e:
        print(f"simulate: {e}", file=sys.stderr)
        return 2
    names = labels.labels_for(args.stations, args.models, args.city, args.attribution)
    if not stations:
        print("simulate: no stations selected", file=sys.stderr)
        return 2
    slots = sum(len(s.slots) for s in stations)
    print(f"{names.city}: {len(stations)} stations, {slots} slots"
          f"{f' within {radius:g} km of the centre' if radius else ''}; loads {', '.join(f'{x:g}' for x in loads)} "
          f"{'copies of the log' if spec else f'cars/slot/day over {args.hours:g} h'}; seed {args.seed}; policies {', '.join(args.policies)}"
          f"{'; DC-capable cars ask for fast chargers only' if args.fast_only else ''}"
          f"; car models: {evmodels.describe(models)}", flush=True)
    jobs = []
    for load in loads:
        for policy in args.policies:
            jobs.append({"id": len(jobs), "policy": policy, "load": load, "seed": args.seed,
                         "radius_km": radius, "stations": args.stations, "models": args.models,
                         "hours": args.hours, "demand": dem, "replay": spec, "fast_only": args.fast_only,
                         "patience_s": args.patience_min * 60.0 if args.patience_min > 0 else math.inf})
    # the slow runs first, so two workers finish together
    jobs.sort(key=lambda j: (-j["load"], j["policy"] != "most_free"))
    t0 = time.perf_counter()
    points = sweep(jobs, args.jobs, not args.no_progress)
    wall = time.perf_counter() - t0
    print(report.table(points, names))
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        if args.no_plots:
            report.write_csv(points, out / "simulation.csv", names)
            written = [out / "simulation.csv"]
        else:
            written = report.write_all(points, stations, out, names)
    except OSError as e:
        print(f"simulate: cannot write the outputs to {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(p) for p in written)} in {wall:.0f} s")
    for line in report.goals(points):
        print(line)
    print(report.headline_time_lost(points))
    print(report.headline(points))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "simulate") -> int:
    return run(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""How fast a session log replays: writes seeded synthetic stations and a session log CSV (the
format of docs/simulation.md, "Replaying a session log") to a temporary directory, then times
the replay of the Recarga policy through the simulator's own run_point, the median of --runs.
With --all-policies it also times one sweep of every policy on --jobs worker processes. The
last line is the result against the goal (a replay of 20,000 sessions over 100 stations
within 60 s).

    .venv/bin/python bench/replay_speed.py                  # 20,000 sessions, 100 stations, 3 runs
    .venv/bin/python bench/replay_speed.py --all-policies   # and one sweep of the four policies
"""
from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recarga.core import evmodels
from recarga.core.model import StationMeta
from recarga.core.selection import POLICIES
from recarga.core.stations import dump_stations_json, synthetic_stations
from recarga.simulation import cli, replay

COMMAND = "bench/replay_speed.py"
POLICY = "least_completion"  # Recarga's
GOAL_S = 60.0
LOG_START = datetime(2024, 3, 1)
# one log row: when and where the session was, what it charged, how long it was plugged in
HEADER = ("start", "end", "charging_time", "energy_kwh", "station")
ENERGY_KWH = (4.0, 40.0)
DWELL_MIN = (0.0, 45.0)  # plugged in after charging
AC_CAR_KW = 11.0  # a car's onboard charger caps AC power


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=COMMAND, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=_positive_int, default=20_000, help="sessions in the log")
    ap.add_argument("--stations", type=_positive_int, default=100, help="synthetic stations")
    ap.add_argument("--days", type=_positive_int, default=60, help="days the log spans")
    ap.add_argument("--runs", type=_positive_int, default=3, help="timed replays of the Recarga policy")
    ap.add_argument("--seed", type=int, default=1, help="seed of the stations, the log and the replay")
    ap.add_argument("--all-policies", action="store_true", help="also time one sweep of every policy")
    ap.add_argument("--jobs", type=_positive_int, default=2, help="worker processes of the sweep")
    return ap


def _charging_s(station: StationMeta, energy_kwh: float) -> float:
    best = max(station.slots, key=lambda s: s.power_kw)
    kw = best.power_kw if best.dc else min(best.power_kw, AC_CAR_KW)
    return energy_kwh / kw * 3600.0


def write_log(path: Path, stations: Sequence[StationMeta], sessions: int, days: int, seed: int) -> None:
    """A session log of `sessions` rows spread over `days` days (daytime-heavy) and the stations."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(HEADER)
        for _ in range(sessions):
            st = rng.choice(stations)
            hour = min(23.99, max(0.0, rng.gauss(14.0, 4.0)))
            start = LOG_START + timedelta(days=rng.randrange(days), hours=hour)
            energy = rng.uniform(*ENERGY_KWH)
            charging = _charging_s(st, energy)
            end = start + timedelta(seconds=charging + 60.0 * rng.uniform(*DWELL_MIN))
            out.writerow((start.isoformat(timespec="seconds"), end.isoformat(timespec="seconds"),
                          f"{int(charging // 3600)}:{int(charging % 3600 // 60):02d}:{int(charging % 60):02d}",
                          f"{energy:.2f}", st.id))


def job(jid: int, policy: str, stations_path: Path, log_path: Path, seed: int) -> dict[str, Any]:
    """One replay at load 1 as `recarga-gateway simulate --replay` builds it (cli.run)."""
    return {"id": jid, "policy": policy, "load": 1.0, "seed": seed, "radius_km": None,
            "stations": str(stations_path), "models": str(evmodels.DEFAULT_PATH), "hours": 24.0,
            "demand": {}, "fast_only": False, "patience_s": 30 * 60.0,
            "replay": {"file": str(log_path), "columns": {}, "time_format": None}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)  # bad arguments: one line and exit 2
    with tempfile.TemporaryDirectory(prefix="replay_speed_") as tmp:
        stations_path, log_path = Path(tmp) / "stations.json", Path(tmp) / "sessions.csv"
        stations = synthetic_stations(args.stations, args.seed)
        dump_stations_json(stations, stations_path)
        write_log(log_path, stations, args.sessions, args.days, args.seed)
        slots = sum(len(s.slots) for s in stations)
        print(f"{args.sessions:,} sessions over {args.days} days, {args.stations} synthetic stations "
              f"({slots} slots), seed {args.seed}", flush=True)
        print(replay.read_log(log_path, stations).summary(), flush=True)  # every row usable
        times = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            point = cli.run_point(job(i, POLICY, stations_path, log_path, args.seed))
            times.append(time.perf_counter() - t0)
            # the first run also reads the files (run_point keeps them for the next runs)
            print(f"run {i + 1}{' (reads the files)' if i == 0 else ''}: {times[-1]:.1f} s, "
                  f"{point.metrics.cars} cars, mean wait {point.metrics.mean_wait_min:.1f} min", flush=True)
        if args.all_policies:
            jobs = [job(i, p, stations_path, log_path, args.seed) for i, p in enumerate(POLICIES)]
            t0 = time.perf_counter()
            cli.sweep(jobs, args.jobs, show_progress=False)
            wall = time.perf_counter() - t0
            print(f"sweep of the {len(jobs)} policies on {args.jobs} worker process(es): {wall:.1f} s", flush=True)
    median = statistics.median(times)
    print(f"replay of {args.sessions:,} sessions over {args.stations} stations: "
          f"median {median:.1f} s per policy (goal {GOAL_S:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scenario matrix (docs/simulation.md, "Scenario matrix"): Recarga against every baseline
on Berlin by device, Berlin by site, Berlin's centre by site and a synthetic small city with
hubs, each at 1x, 2x, 4x and 8x its load over several seeds. Prints what each scenario
simulates and the matrix in Markdown, each row judged by the goals; the last line counts the
rows meeting them. Writes every run's metrics and the small city's stations to --out.

    .venv/bin/python bench/simulate_matrix.py          # the whole matrix, 192 runs: about 7 min on 2 cores
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recarga.core import evmodels, resources
from recarga.core.selection import POLICIES
from recarga.core.stations import dump_stations_json
from recarga.simulation import city, labels, matrix

DEFAULT_OUT = Path("run") / "simulation" / "matrix"
COMMAND = "bench/simulate_matrix.py"


def _numbers(text: str, kind: type = float) -> list:
    try:
        vals = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of {kind.__name__}s: {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("empty list")
    return vals


def _multiples(text: str) -> list[float]:
    vals = _numbers(text)
    if any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError("load multiples must be > 0")
    return vals


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                    help="comma-separated, from berlin_device, berlin_site, berlin_centre, small_city (default: all)")
    ap.add_argument("--loads", type=_multiples, default=list(matrix.MULTIPLES),
                    help="load multiples of each scenario's 1x, comma-separated (default 1,2,4,8)")
    ap.add_argument("--seeds", type=lambda t: _numbers(t, int), default=list(matrix.SEEDS),
                    help="demand seeds, comma-separated (default 1,2,3)")
    ap.add_argument("--hours", type=float,
                    help="cars appear over this many hours in every scenario (default: each scenario's own)")
    ap.add_argument("--patience-min", type=float, default=30.0,
                    help="a driver who has waited this long gives up; 0: never")
    ap.add_argument("--city-seed", type=int, default=1, help="seed of the synthetic small city's stations")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="directory for the small city's stations and the runs' CSV")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1 or (args.hours is not None and args.hours <= 0) or args.patience_min < 0:
        print(f"{COMMAND}: --jobs and --hours must be above 0, --patience-min at least 0", file=sys.stderr)
        return 2
    models = str(evmodels.DEFAULT_PATH)
    keys = ("berlin_device", "berlin_site", "berlin_centre", "small_city")
    wanted = args.scenarios or list(keys)
    unknown = [k for k in wanted if k not in keys]
    if unknown:
        print(f"{COMMAND}: unknown scenario(s) {unknown}; valid: {', '.join(keys)}", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        town = city.stations(args.city_seed)
        town_path = args.out / "small_city.json"
        dump_stations_json(town, town_path)
    except OSError as e:
        print(f"{COMMAND}: cannot write to {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    berlin = labels.labels_for(resources.BERLIN_STATIONS, models)
    small = labels.labels_for(town_path, models, city.NAME, f"{city.ATTRIBUTION} (seed {args.city_seed})")
    cases = matrix.berlin_cases(str(resources.BERLIN_STATIONS), berlin) + [
        matrix.small_city_case(str(town_path), sum(len(s.slots) for s in town), small)]
    cases = [c for c in cases if c.key in wanted]
    if args.hours is not None:
        cases = [replace(c, hours=args.hours) for c in cases]
    described = {c.key: matrix.describe(matrix.load_case_stations(c)) for c in cases}
    job_list = matrix.jobs(cases, args.loads, args.seeds, models, POLICIES,
                           args.patience_min * 60.0 if args.patience_min > 0 else float("inf"))
    print(f"Scenario matrix: {len(cases)} scenarios x loads {', '.join(f'{m:g}x' for m in args.loads)} x seeds "
          f"{', '.join(map(str, args.seeds))}; policies {', '.join(POLICIES)} (Recarga: {POLICIES[0]}); "
          f"patience {args.patience_min:g} min", flush=True)
    print()
    print(matrix.cases_table(cases, described))
    print()
    t0 = time.perf_counter()
    results = matrix.run(job_list, args.jobs, not args.no_progress)
    wall = time.perf_counter() - t0
    rows = matrix.rows(cases, results)
    print("Per policy: mean time lost / mean wait / p95 wait (minutes) / stranded / gave up "
          "(cars summed over the seeds)")
    print()
    print(matrix.table(rows))
    print()
    for lab in dict.fromkeys(c.labels for c in cases):
        print(f"{lab.city}: {lab.attribution}")
    try:
        matrix.write_csv(results, cases, args.out / "matrix.csv")
    except OSError as e:
        print(f"{COMMAND}: cannot write to {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"ran {len(job_list)} runs in {wall:.0f} s with {args.jobs} worker(s); wrote {args.out / 'matrix.csv'}")
    print(matrix.summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

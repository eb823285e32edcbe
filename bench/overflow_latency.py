"""Overflow latency: the time from a car's reserve request to its answer, for a request its
own region serves and for one served by overflow (origin gateway -> bridge -> central ->
bridge -> target gateway holds -> back the same way), over real Mosquitto bridges.

Setup (all real processes on free loopback ports, auth and ACL on, stopped by pid): the
central broker and `recarga-central run`; regions "a" and "b", each its own bridged
Mosquitto and gateway process, Berlin's stations nearest the centre split between them by
longitude. Region a's western half is free and serves its cars locally; to measure overflow,
its stations are reported occupied, so a's gateway has nothing within max_wait_s and
forwards, and central sends the car to b. Cars are paho clients (MQTT 3.1.1, QoS 1), one
request at a time; each run alternates local and overflow requests, and the figure is the
median over runs of each run's p50 / p99.

    .venv/bin/python bench/overflow_latency.py [--runs 5] [--requests 40] [--quick]

Last line: `overflow p99: A ms (local p99 B ms, ratio R)`. The regions are harness.regions'
RegionsNet, as in tests/integration/central/test_regions.py.
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from harness.regions import RegionsNet, ReservingCar, berlin_split


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def one_run(root: Path, requests: int) -> tuple[list[float], list[float]]:
    stations = berlin_split(["a", "b"], 6)
    net = RegionsNet(root, stations, ["car-l", "car-o"]).start()
    try:
        net.wait_summary("b", lambda st: any(g.free for s in st for g in s.groups))
        local_car, ovf_car = ReservingCar(net, "a", "car-l"), ReservingCar(net, "a", "car-o")
        # each new request replaces the car's previous hold, so every one finds the same room
        local, overflow = [], []
        for _ in range(requests):
            dt, reply = local_car.reserve()
            assert reply["ok"] and "region" not in reply, reply
            local.append(dt)
        for s in stations["a"]:  # region a full: every slot occupied
            net.report("a", s.id, ["occupied"] * len(s.slots))
        time.sleep(0.5)
        for _ in range(requests):
            dt, reply = ovf_car.reserve()
            assert reply["ok"] and reply.get("region") == "b", reply
            overflow.append(dt)
        return local, overflow
    finally:
        net.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=40, help="per kind and run")
    ap.add_argument("--quick", action="store_true", help="one short run (the smoke test)")
    ap.add_argument("--dir", type=Path, help="work directory (removed at the end); default a temporary one")
    args = ap.parse_args(argv)
    runs, requests = (1, 5) if args.quick else (args.runs, args.requests)
    work = Path(tempfile.mkdtemp(prefix="ovf-bench-", dir=args.dir))
    p50s: dict[str, list[float]] = {"local": [], "overflow": []}
    p99s: dict[str, list[float]] = {"local": [], "overflow": []}
    try:
        for run in range(runs):
            local, overflow = one_run(work / f"run{run}", requests)
            for kind, xs in (("local", local), ("overflow", overflow)):
                p50s[kind].append(pct(xs, 0.5) * 1000)
                p99s[kind].append(pct(xs, 0.99) * 1000)
            print(f"run {run + 1}/{runs}: local p50 {p50s['local'][-1]:.1f} ms p99 {p99s['local'][-1]:.1f} ms; "
                  f"overflow p50 {p50s['overflow'][-1]:.1f} ms p99 {p99s['overflow'][-1]:.1f} ms", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: (statistics.median(p50s[k]), statistics.median(p99s[k])) for k in p50s}
    print(f"medians over {runs} run(s) of {requests} requests each: local p50 {med['local'][0]:.1f} ms, "
          f"overflow p50 {med['overflow'][0]:.1f} ms")
    ratio = med["overflow"][1] / med["local"][1] if med["local"][1] > 0 else float("inf")
    print(f"overflow p99: {med['overflow'][1]:.1f} ms (local p99 {med['local'][1]:.1f} ms, ratio {ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

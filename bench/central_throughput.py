"""Central throughput: answered overflow requests per second with 1 and with 2
`recarga-central run` instances (shared subscription, one SQLite file) on one real central
Mosquitto (free loopback port, auth and ACL on), and the CPU each process used.

The regions' sides are paho clients on the central broker logged in as the regions' bridge
users, as in tests/integration/central/test_central_service.py: region "a" sends overflow
requests (harness.central.overflow_request, QoS 1) in a closed loop with --window requests
outstanding, each a new car; region "b" has a retained summary of --stations free stations
and answers every hold request at once with a held reservation (no engine: the target's cost
is not central's). A separate monitoring user counts the answers on the wire. Each run starts a
fresh broker, database and instances, warms up, then counts answers for --seconds; runs
alternate 1 and 2 instances so the machine's noise falls on both, and the figures are
medians over runs. Everything started is stopped by pid, also on failure.

    .venv/bin/python bench/central_throughput.py [--runs 3] [--seconds 10] [--window 64] [--quick]

Last line: `central throughput: A req/s with 1 instance, B req/s with 2 (ratio R)`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from bench.loadgen.cpu import cpu_seconds
from harness.central import (
    MONITOR_ACL,
    MONITOR_USER,
    CentralBroker,
    CentralProcess,
    central_passwords,
    overflow_request,
)
from harness.clients import MqttClient, connect_client
from harness.wait import wait_until
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import central as PC
from recarga.core.protocol import wire as W
from recarga.gateway.overflow import summary_stations

REGIONS = ("a", "b")  # a asks, b holds


class Target:
    """Region b: its summary retained, and a hold answered at once for every hold request."""

    def __init__(self, broker: CentralBroker, stations: int):
        metas = [StationMeta(f"b-{i}", 52.52 + i * 0.002, 13.40, (SlotMeta(150.0, True), SlotMeta(150.0, True)))
                 for i in range(stations)]
        now = time.time()
        self.client = connect_client(broker, "bridge-b", client_id="bench-region-b")
        self.client.paho.on_message = self._on_hold
        self.client.subscribe(PC.central_topic("b", "hold/request"))
        busy = {m.id: [now, now] for m in metas}
        for msg in PC.summary_messages("b", summary_stations(metas, busy, now), now):
            self.client.publish(PC.summary_topic("b", msg["shard"]), W.encode(msg), retain=True)
        self._n = 0

    def _on_hold(self, client, userdata, msg) -> None:
        req = PC.parse_hold_request("b", msg.payload)
        if isinstance(req, PC.HoldRelease):
            return
        self._n += 1
        now = time.time()
        reservation = {"id": f"r{self._n}", "station": req.station or "b-0", "slot": 1, "state": "held",
                       "distance_km": 1.0, "eta": round(now + 600), "wait_min": 0.0, "charge_min": 30.0,
                       "energy_kwh": 20.0, "power_kw": 150.0, "price_eur": 9.5, "hold_until": round(now + 120)}
        answer = PC.hold_answer(req.xid, "b", req.car, req.deadline, reservation=reservation)
        client.publish(PC.central_topic("b", "hold/answer"), W.encode(answer), qos=1)

    def close(self) -> None:
        self.client.close()


class Load:
    """Region a's closed loop: `window` requests outstanding; each answer (counted by the
    monitor) lets the next one go."""

    def __init__(self, broker: CentralBroker, tag: str, window: int):
        self.tag, self.window = tag, window
        self.slots = threading.Semaphore(window)
        self.lock = threading.Lock()
        self.answered: dict[str, float] = {}  # xid -> when its first answer arrived
        self.ok = 0
        self.sent = 0
        self.stopping = threading.Event()
        self.monitor = connect_client(broker, MONITOR_USER, client_id=f"bench-monitor-{tag}")
        self.monitor.paho.on_message = self._on_answer
        self.monitor.subscribe(PC.central_topic("a", "overflow/answer"))
        self.origin = MqttClient(broker, "bridge-a", client_id=f"bench-region-a-{tag}")
        self.origin.paho.max_inflight_messages_set(window)  # paho's default 20 would cap the window
        try:
            self.origin.connect()
        except BaseException:
            self.origin.close()
            self.monitor.close()
            raise
        self.topic = PC.central_topic("a", "overflow/request")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_answer(self, client, userdata, msg) -> None:
        a = PC.parse_overflow_answer("a", msg.payload)
        with self.lock:
            if a.xid in self.answered:
                return  # a re-send
            self.answered[a.xid] = time.monotonic()
            self.ok += a.ok
        self.slots.release()

    def _run(self) -> None:
        while not self.stopping.is_set():
            if not self.slots.acquire(timeout=0.2):
                continue
            _, payload = overflow_request("a", f"car-{self.tag}-{self.sent}", time.time() + 60)
            self.sent += 1
            self.origin.paho.publish(self.topic, payload, qos=1)

    def answers_between(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(t0 <= t < t1 for t in self.answered.values())

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(5)
        for c in (self.origin, self.monitor):
            c.close()


def one_run(root: Path, instances: int, seconds: float, warmup: float, window: int, stations: int) -> dict:
    """Answered requests per second and CPU shares (of one core) over the measured window."""
    things: list = []
    try:
        broker = CentralBroker.launch(root / "broker", regions=REGIONS,
                                      passwords={**central_passwords(REGIONS), MONITOR_USER: "monitor-secret"},
                                      extra_acl=MONITOR_ACL)
        things.append(broker)
        things.append(Target(broker, stations))
        db = root / "central.db"
        # the regions' brokers are not part of this bench: the ports only fill central's answers
        centrals = [CentralProcess(root / f"c{i + 1}", broker, {"a": 18831, "b": 18832}, instance=f"c{i + 1}",
                                   database=db) for i in range(instances)]
        for c in centrals:
            things.append(c)
            c.start()
        for c in centrals:
            c.wait_log("subscribed: serving overflow")
        load = Load(broker, root.name, window)
        things.append(load)
        load.thread.start()
        wait_until(lambda: load.answers_between(0, float("inf")) > 0, 15, "a first answer")
        time.sleep(warmup)
        pids = {"broker": [broker.pid], "central": [c.pid for c in centrals], "bench": [os.getpid()]}
        before = {k: [cpu_seconds(p) for p in v] for k, v in pids.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
        after = {k: [cpu_seconds(p) for p in v] for k, v in pids.items()}
        for c in centrals:
            c.alive()
        n = load.answers_between(t0, t1)
        with load.lock:
            ok, total = load.ok, len(load.answered)
        if ok < total:
            raise RuntimeError(f"{total - ok} of {total} answers were not ok")
        cpu = {k: [(a - b) / (t1 - t0) * 100 for a, b in zip(after[k], before[k])] for k in pids}
        return {"rate": n / (t1 - t0), "cpu": cpu}
    finally:
        for thing in reversed(things):
            (thing.close if hasattr(thing, "close") else thing.stop)()


def fmt_cpu(cpu: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {'+'.join(f'{x:.0f}' for x in v)} %" for k, v in cpu.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time per run and instance count")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--window", type=int, default=64, help="requests outstanding (closed loop)")
    ap.add_argument("--stations", type=int, default=40, help="stations in region b's summary")
    ap.add_argument("--quick", action="store_true", help="one short run (the smoke test)")
    ap.add_argument("--dir", type=Path, help="work directory (removed at the end); default a temporary one")
    args = ap.parse_args(argv)
    runs, seconds, warmup = (1, 1.5, 0.5) if args.quick else (args.runs, args.seconds, args.warmup)
    work = Path(tempfile.mkdtemp(prefix="central-bench-", dir=args.dir))
    rates: dict[int, list[float]] = {1: [], 2: []}
    try:
        for run in range(runs):
            for n in (1, 2):
                got = one_run(work / f"run{run}-{n}", n, seconds, warmup, args.window, args.stations)
                rates[n].append(got["rate"])
                print(f"run {run + 1}/{runs}, {n} instance{'s' if n > 1 else ''}: {got['rate']:.0f} req/s; "
                      f"CPU (% of one core) {fmt_cpu(got['cpu'])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    ratio = two / one if one > 0 else float("inf")
    print(f"medians over {runs} run(s) of {seconds:g} s each, {args.window} requests outstanding, "
          f"{os.cpu_count()} CPUs shared with the bench's own clients")
    print(f"central throughput: {one:.0f} req/s with 1 instance, {two:.0f} req/s with 2 (ratio {ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

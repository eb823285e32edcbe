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

Last line: `overflow p99: A ms (local p99 B ms, ratio R)`. `RegionsNet` is also what
tests/test_regions.py builds its three regions with; its processes are central.localnet's
CentralProcess and gateway.localnet's GatewayProcess.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from harness.central import (  # noqa: E402
    CAR_NEED,
    CENTRAL_USER,
    BridgedBroker,
    CentralBroker,
    CentralProcess,
    central_passwords,
)
from harness.clients import MqttClient, connect_client  # noqa: E402
from harness.services import GatewayProcess, wait_for  # noqa: E402
from recarga.core import protocol as P  # noqa: E402
from recarga.core.model import StationMeta  # noqa: E402
from recarga.core.stations import load_stations  # noqa: E402

BERLIN = ROOT / "data" / "berlin_charging_stations_bnetza.csv"
CENTRE = (52.521, 13.401)
NEED = {**CAR_NEED, "lat": CENTRE[0], "lon": CENTRE[1], "soc": 0.15}


def berlin_split(regions: Sequence[str], per_region: int) -> dict[str, list[StationMeta]]:
    """Berlin's stations nearest the centre, split into `regions` by longitude (west first)."""
    def dist(s: StationMeta) -> float:
        return math.hypot(s.lat - CENTRE[0], (s.lon - CENTRE[1]) * math.cos(math.radians(CENTRE[0])))
    near = sorted(load_stations(BERLIN), key=dist)[: per_region * len(regions)]
    near.sort(key=lambda s: s.lon)
    return {r: near[i * per_region:(i + 1) * per_region] for i, r in enumerate(regions)}


class RegionsNet:
    """Central (broker + process) and bridged regions (broker + gateway with [overflow] on),
    stations as paho clients reporting online and their slot states (retained), cars
    provisioned on every region broker (password <car>-pw)."""

    def __init__(self, root: Path, stations: dict[str, list[StationMeta]], cars: Sequence[str],
                 states: dict[str, str] | None = None, overflow: str = "wait_limit_s = 900\nanswer_within_s = 5\n"):
        self.root = Path(root)
        self.stations = stations
        self.cars = list(cars)
        self.states = states or {}  # region -> slot state its stations report first ("free")
        self.overflow = overflow
        self.central_broker: CentralBroker | None = None
        self.central: CentralProcess | None = None
        self.brokers: dict[str, BridgedBroker] = {}
        self.gateways: dict[str, GatewayProcess] = {}
        self.clients: list[MqttClient] = []
        self._station_client: dict[str, MqttClient] = {}

    def start(self) -> RegionsNet:
        """Start everything and wait until it is connected; on any failure stop what started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        regions = list(self.stations)
        self.central_broker = CentralBroker.launch(self.root / "central-broker", regions=regions,
                                                   passwords=central_passwords(regions))
        for r, metas in self.stations.items():
            users = {"gateway": f"gw-{r}-pw", **{c: f"{c}-pw" for c in self.cars}, **{s.id: f"{s.id}-pw" for s in metas}}
            self.brokers[r] = BridgedBroker.launch(self.root / r / "broker", region=r, central=self.central_broker,
                                                   gateway_user="gateway", passwords=users, cars=self.cars,
                                                   stations=[s.id for s in metas])
            for s in metas:
                c = self.client(r, s.id)
                self._station_client[s.id] = c
                c.publish(P.station_topic(r, s.id, "online"), P.online_message(True), retain=True)
                self.report(r, s.id, [self.states.get(r, "free")] * len(s.slots))
        self.central = CentralProcess(self.root / "central", self.central_broker,
                                      {r: b.port for r, b in self.brokers.items()})
        self.central.start()
        for r, metas in self.stations.items():
            gw = GatewayProcess(self.root / r / "gw", r, self.brokers[r].port, "gateway", f"gw-{r}-pw", metas,
                                hold_s=60, grace_s=300, tick_s=0.2, extra=f"[overflow]\nenabled = true\n{self.overflow}")
            self.gateways[r] = gw
            gw.start()
        for r, gw in self.gateways.items():
            gw.wait_connected(15)
            gw.wait_log("link to central up", 15)
        self.central.wait_log("subscribed: serving overflow", 15)

    def client(self, region: str, user: str) -> MqttClient:
        c = connect_client(self.brokers[region], user)
        self.clients.append(c)
        return c

    def report(self, region: str, sid: str, states: list[str]) -> None:
        """The station's slot states, as the station publishes them (retained)."""
        self._station_client[sid].publish(P.station_topic(region, sid, "status"),
                                          P.encode(P.station_status(states)), retain=True)

    def wait_summary(self, region: str, pred, timeout: float = 15.0) -> None:
        """Until central's broker holds a summary of `region` for which pred(stations) holds."""
        probe = connect_client(self.central_broker, CENTRAL_USER)
        try:
            probe.subscribe(P.central_filter("summary"))

            def ok():
                got = [m for m in probe.messages(P.central_filter("summary")) if f"/{region}/" in m.topic and m.payload]
                return got and pred(P.parse_summary(region, int(got[-1].topic.rsplit("/", 1)[1]), got[-1].payload).stations)
            wait_for(ok, timeout, f"summary of {region} at central")
        finally:
            probe.close()

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        for gw in self.gateways.values():
            gw.stop()
        if self.central is not None:
            self.central.stop()
        for b in self.brokers.values():
            b.stop()
        if self.central_broker is not None:
            self.central_broker.stop()


class Car:
    """A car as a paho client on its region's broker: one reserve at a time, timed."""

    def __init__(self, net: RegionsNet, region: str, car: str):
        self.region, self.car = region, car
        self.client = net.client(region, car)
        self.reply_topic = P.car_topic(region, car, "reply")
        self.client.subscribe(self.reply_topic)
        self._n = 0
        self._cond = threading.Condition()
        self._replies: dict[str, tuple[float, dict]] = {}
        self.client.paho.message_callback_add(self.reply_topic, self._on_reply)

    def _on_reply(self, client, userdata, msg) -> None:
        t = time.perf_counter()
        reply = json.loads(msg.payload)
        with self._cond:
            self._replies.setdefault(reply.get("rid"), (t, reply))
            self._cond.notify_all()

    def reserve(self, timeout: float = 12.0, **need: float) -> tuple[float, dict]:
        """(seconds to the reply, the reply)."""
        self._n += 1
        rid = f"{self.car}-{os.getpid()}-{self._n}"
        payload = P.encode(P.reserve_request(rid, self.car, **{**NEED, **need}))
        t0 = time.perf_counter()
        self.client.publish(P.car_topic(self.region, self.car, "request"), payload)
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._replies, timeout):
                raise TimeoutError(f"{self.car}: no reply to {rid} within {timeout} s")
            t, reply = self._replies[rid]
        return t - t0, reply


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def one_run(root: Path, requests: int) -> tuple[list[float], list[float]]:
    stations = berlin_split(["a", "b"], 6)
    net = RegionsNet(root, stations, ["car-l", "car-o"]).start()
    try:
        net.wait_summary("b", lambda st: any(g.free for s in st for g in s.groups))
        local_car, ovf_car = Car(net, "a", "car-l"), Car(net, "a", "car-o")
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

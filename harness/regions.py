"""Several regions bridged to central on this machine, for tests and benchmarks of overflow.

`RegionsNet` starts the central broker and `recarga-central run` (harness.central), and per
region a bridged Mosquitto and a gateway process with [overflow] on (harness.services);
stations are paho clients reporting online and their slot states (retained), cars are
provisioned on every region broker (password <car>-pw). `berlin_split` gives each region its
part of Berlin's register; `ReservingCar` asks for a slot and times the answer. Everything is
stopped by pid in RegionsNet.stop().
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from harness import ROOT
from harness.central import (
    CAR_NEED,
    MONITOR_ACL,
    MONITOR_USER,
    BridgedBroker,
    CentralBroker,
    CentralProcess,
    central_passwords,
)
from harness.clients import MqttClient, Received, connect_client
from harness.services import GatewayProcess
from recarga.core import certs
from recarga.core.model import StationMeta
from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.core.stations import load_stations

BERLIN = ROOT / "data" / "berlin_charging_stations_bnetza.csv"
CENTRE = (52.521, 13.401)
NEED = {**CAR_NEED, "lat": CENTRE[0], "lon": CENTRE[1], "soc": 0.15}  # a car at the centre, battery low


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
    provisioned on every region broker (password <car>-pw). With `tls` (the default) every
    broker listens on TLS only, with a certificate from one CA (root/tls/ca.crt, `ca_file`),
    the bridges and the gateway and central processes verify their broker's certificate, and
    the paho clients do too."""

    def __init__(self, root: Path, stations: dict[str, list[StationMeta]], cars: Sequence[str],
                 states: dict[str, str] | None = None, overflow: str = "wait_limit_s = 900\nanswer_within_s = 5\n",
                 tls: bool = True):
        self.root = Path(root)
        self.tls = tls
        self.ca_file = certs.ca_files(self.root / "tls").cert if tls else None  # what a handing-over car trusts
        self.stations = stations
        self.cars = list(cars)
        self.states = states or {}  # region -> slot state its stations report first ("free")
        self.overflow = overflow  # lines of the gateways' [overflow] section besides `enabled`
        self.central_broker: CentralBroker | None = None
        self.central: CentralProcess | None = None
        self.brokers: dict[str, BridgedBroker] = {}
        self.gateways: dict[str, GatewayProcess] = {}
        self.clients: list[MqttClient] = []
        self._station_client: dict[str, MqttClient] = {}

    def start(self) -> Self:
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
                                                   passwords={**central_passwords(regions), MONITOR_USER: "monitor-pw"},
                                                   extra_acl=MONITOR_ACL, tls=self._tls_dir())
        for r, metas in self.stations.items():
            users = {"gateway": f"gw-{r}-pw", **{c: f"{c}-pw" for c in self.cars}, **{s.id: f"{s.id}-pw" for s in metas}}
            self.brokers[r] = BridgedBroker.launch(self.root / r / "broker", region=r, central=self.central_broker,
                                                   gateway_user="gateway", passwords=users, cars=self.cars,
                                                   stations=[s.id for s in metas], tls=self._tls_dir())
            for s in metas:
                c = self.client(r, s.id)
                self._station_client[s.id] = c
                c.publish(D.station_topic(r, s.id, "online"), W.online_message(True), retain=True)
                self.report(r, s.id, [self.states.get(r, "free")] * len(s.slots))
        self.central = CentralProcess(self.root / "central", self.central_broker,
                                      {r: b.port for r, b in self.brokers.items()})
        self.central.start()
        for r, metas in self.stations.items():
            gw = GatewayProcess(self.root / r / "gw", r, self.brokers[r].port, "gateway", f"gw-{r}-pw", metas,
                                hold_s=60, grace_s=300, tick_s=0.2, extra=f"[overflow]\nenabled = true\n{self.overflow}",
                                tls_ca=self.brokers[r].ca_file)
            self.gateways[r] = gw
            gw.start()
        for gw in self.gateways.values():
            gw.wait_connected(15)
            gw.wait_log("link to central up", 15)
        self.central.wait_log("subscribed: serving overflow", 15)

    def _tls_dir(self) -> Path | bool:
        return self.root / "tls" if self.tls else False

    def client(self, region: str, user: str, **kwargs: Any) -> MqttClient:
        """A paho client connected to `region`'s broker as `user` (closed in stop())."""
        c = connect_client(self.brokers[region], user, **kwargs)
        self.clients.append(c)
        return c

    def report(self, region: str, sid: str, states: list[str]) -> None:
        """The station's slot states, as the station publishes them (retained)."""
        self._station_client[sid].publish(D.station_topic(region, sid, "status"),
                                          W.encode(D.station_status(states)), retain=True)

    def wait_summary(self, region: str, pred: Callable[[list[PC.SummaryStation]], bool], timeout: float = 15.0) -> None:
        """Until central's broker holds a summary of `region` for which pred(stations) holds."""
        assert self.central_broker is not None
        probe = connect_client(self.central_broker, MONITOR_USER)  # central's own users are in use
        try:
            probe.subscribe(PC.central_filter("summary"))

            def ok() -> bool:
                got = [m for m in probe.messages(PC.central_filter("summary")) if f"/{region}/" in m.topic and m.payload]
                return bool(got) and pred(PC.parse_summary(region, int(got[-1].topic.rsplit("/", 1)[1]),
                                                          got[-1].payload).stations)
            probe.wait(ok, timeout, f"a summary of {region} at central")
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


class ReservingCar:
    """A car as a paho client on its region's broker: one reserve request at a time, timed."""

    def __init__(self, net: RegionsNet, region: str, car: str):
        self.region, self.car = region, car
        self.reply_topic = D.car_topic(region, car, "reply")
        self._n = 0
        self._replies: dict[str, tuple[float, dict]] = {}  # rid -> (when it arrived, the reply)
        self.client = net.client(region, car, on_message=self._on_message)
        self.client.subscribe(self.reply_topic)

    def _on_message(self, msg: Received) -> None:
        t = time.perf_counter()  # first thing: the arrival time is what is measured
        if msg.topic == self.reply_topic:
            reply = json.loads(msg.payload)
            self._replies.setdefault(reply.get("rid"), (t, reply))

    def reserve(self, timeout: float = 12.0, **need: float) -> tuple[float, dict]:
        """(seconds from the request to its reply, the reply); `need` overrides NEED's fields."""
        self._n += 1
        rid = f"{self.car}-{os.getpid()}-{self._n}"
        payload = W.encode(D.reserve_request(rid, self.car, **{**NEED, **need}))
        t0 = time.perf_counter()
        self.client.publish(D.car_topic(self.region, self.car, "request"), payload)
        t, reply = self.client.wait(lambda: self._replies.get(rid), timeout, f"a reply to {rid}")
        return t - t0, reply

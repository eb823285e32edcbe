"""One region on this machine for tests: a Mosquitto (auth and ACL on), the real gateway
process, and its stations as paho clients reporting online and their slot states (retained).

`Region` is stopped by close() (everything by pid); `station_set` makes a grid of stations,
`reserve_msg` a car's reserve request, `ask` sends a request and waits for its reply.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

from harness.broker import MONITOR_USER, REGION, Broker, monitor_acl
from harness.clients import MqttClient, connect_client
from harness.services import GatewayProcess
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

AC22 = SlotMeta(22.0, False)


def station_set(n_stations: int, slots_each: int) -> list[StationMeta]:
    """Stations st-1..st-n of 22 kW AC slots on a grid around Berlin-Mitte, about 300 m apart."""
    return [StationMeta(f"st-{i + 1}", 52.52 + 0.003 * (i // 10), 13.40 + 0.004 * (i % 10),
                        (AC22,) * slots_each, operator="op", price_per_kwh=0.45)
            for i in range(n_stations)]


def reserve_msg(car: str, rid: str, lat: float = 52.521, lon: float = 13.401, **over: Any) -> bytes:
    """A reserve request from a car at (lat, lon) with 20% charge; `over` replaces fields."""
    fields: dict[str, Any] = dict(lat=lat, lon=lon, soc=0.2, battery_kwh=58, consumption_kwh_100km=16.6,
                                  max_ac_kw=11, max_dc_kw=100, target_soc=0.8)
    fields.update(over)
    return W.encode(D.reserve_request(rid, car, **fields))


def ask(car: MqttClient, payload: bytes, timeout: float = 10, region: str = REGION) -> dict:
    """Send a request from `car` (subscribed to its reply topic) and return the next reply."""
    reply_topic = D.car_topic(region, car.username, "reply")
    before = len(car.messages(reply_topic))
    car.publish(D.car_topic(region, car.username, "request"), payload)
    got = car.wait(lambda: car.messages(reply_topic)[before:], timeout, "a reply")
    return json.loads(got[0].payload)


class Region:
    """A broker, a gateway and station clients under `root`, region REGION; passwords are
    <user>-pw ("gw-pw" for the gateway); MONITOR_USER (monitor-pw) may read the whole region
    (client ids are bound to users, so a test never borrows the gateway's). `gw` options go to GatewayProcess. start() brings
    the stations online with `initial` slot states (all free), then the gateway. With `tls`
    the broker's listener is TLS, and the gateway and every client use it."""

    def __init__(self, root: Path, cars: list[str], stations: list[StationMeta],
                 initial: list[str] | None = None, tls: bool | Path = False, **gw: Any):
        self.cars = cars
        self.initial = initial
        self.stations = stations
        self.passwords = {"gateway": "gw-pw", MONITOR_USER: "monitor-pw", **{c: f"{c}-pw" for c in cars},
                          **{s.id: f"{s.id}-pw" for s in stations}}
        self.broker = Broker.launch(Path(root) / "broker", region=REGION, cars=cars,
                                    stations=[s.id for s in stations], passwords=self.passwords, tls=tls,
                                    extra_acl=monitor_acl(REGION))
        self.clients: list[MqttClient] = []
        self.gw = GatewayProcess(Path(root) / "gw", REGION, self.broker.port, "gateway", "gw-pw", stations,
                                 tls_ca=self.broker.ca_file, **gw)

    def start(self) -> Self:
        for s in self.stations:
            self.station_up(s.id, self.initial or ["free"] * len(s.slots))
        self.gw.start().wait_connected()
        return self

    def client(self, user: str, **kw: Any) -> MqttClient:
        c = connect_client(self.broker, user, **kw)
        self.clients.append(c)
        return c

    def station_up(self, sid: str, slots: list[str]) -> MqttClient:
        c = self.client(sid)
        c.subscribe(D.station_topic(REGION, sid, "cmd"))
        c.publish(D.station_topic(REGION, sid, "online"), W.online_message(True), retain=True)
        c.publish(D.station_topic(REGION, sid, "status"), W.encode(D.station_status(slots)), retain=True)
        return c

    def reservations(self, *args: str) -> list[dict]:
        return self.gw.reservations(*args)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.gw.stop()
        self.broker.stop()

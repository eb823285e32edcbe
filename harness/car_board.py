"""Helpers for tests that run the car firmware against real brokers (and gateways).

- `car_config(...)`: a car's config.json (the test board's battery curve and divider; with
  `ca_file` the CA pinned, so the car speaks TLS, checking the broker's certificate for
  harness.broker.SERVER_NAME); `uv_for(soc)` / `pot_for(soc)`: the ADC microvolts / the pot
  position that read as `soc`.
- `virtual_board(tmp, cfg)`: a car on the virtual board (boards/virtual, the boards/car wiring),
  the unmodified firmware from firmware/car and firmware/lib, not started yet. Its serial
  lines say what the car does: `car: handing over to region R: broker H:P`, `car: overflow:
  slot held in region R, ...`, `car: left region ...`, `car: now in region ..., staying with
  region ...`; the serial command `status` prints the state, reservation and region.
- `ScriptedGateway(broker, region, car)`: a paho client logged in as a region broker's
  `gateway` user that plays that region's gateway for one car: every request the car sends
  is parsed with recarga.core.protocol's validator (the contract) and kept in `requests`;
  `respond` (request -> list of messages to send back) answers it; `online()` is the car's
  retained online flag on that broker.
- `region_broker(...)`: a region's broker, TLS by default (`tls`: True, a CA of its own; a
  CA directory, shared by several brokers as one project CA signs every region's broker).
- `World(tmp)`: regions (a TLS broker and the real gateway process each, all brokers signed by
  one CA, `world.ca_file`; stations as paho clients) and paho clients, all stopped by pid /
  closed at the end.
- `reservations(gw)` (the gateway's CLI, JSON).

For the three-region test with central: give the car the origin region in config.json only;
the overflow answer names the other region's broker, the car connects there directly (the
virtual board's TCP proxies cover the config's brokers only, so `board.wifi(False)` does not
cut that connection).
"""
from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from harness import ROOT
from harness.broker import MONITOR_USER, SERVER_NAME, Broker, monitor_acl
from harness.clients import MqttClient, connect_client
from harness.services import GatewayProcess
from harness.wait import wait_until
from recarga.core.model import StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.devices.provision import pinned_ca

CAR = ROOT / "firmware" / "car"
LIB = ROOT / "firmware" / "lib"
BOARD_DIAGRAM = ROOT / "boards" / "car" / "diagram.json"

CURVE = [[300, 0.0], [345, 0.1], [360, 0.3], [372, 0.5], [388, 0.8], [403, 1.0]]
DIVIDER = 130.0


def uv_for(soc: float) -> int:
    """The pin microvolts that give `soc` through CURVE and DIVIDER."""
    for (v0, s0), (v1, s1) in pairwise(CURVE):
        if s0 <= soc <= s1:
            return round((v0 + (soc - s0) / (s1 - s0) * (v1 - v0)) / DIVIDER * 1e6)
    raise ValueError(soc)


def pot_for(soc: float) -> float:
    """The pot position (SIG = position x 3.3 V) that gives `soc`."""
    return uv_for(soc) / 3.3e6


def car_config(car: str, region: str, port: int, *, regions: list[dict] | None = None,
               points=((52.521, 13.401),), speed_kmh=0, telemetry_s=5, ca_file: Path | None = None,
               server_name: str = SERVER_NAME) -> dict:
    """config.json of a car whose home broker is 127.0.0.1:port (region `region`); `regions`
    defaults to that region with Berlin's bounds. With `ca_file` (a broker's ca_file) that CA
    is pinned as provisioning pins it and every broker must show `server_name`: TLS."""
    cfg = {
        "kind": "car", "id": car, "region": region,
        "wifi": {"ssid": "recarga", "password": "pw"},
        "broker": {"host": "127.0.0.1", "port": port, "user": car, "password": f"{car}-pw", "keepalive": 10},
        "log": "info",
        "pins": {"battery_adc": 34, "status_led": 2},
        "battery": {"divider": DIVIDER, "samples": 3, "curve": CURVE},
        "thresholds": {"ask_below": 0.20, "clear_above": 0.25},
        "model": {"name": "Volkswagen ID.3 58 kWh", "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
                  "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8},
        "route": {"speed_kmh": speed_kmh, "loop": True, "points": [list(p) for p in points]},
        "regions": regions or [{"name": region, "host": "127.0.0.1", "port": port,
                                "bounds": [52.33, 13.08, 52.68, 13.77]}],
        "telemetry_s": telemetry_s,
    }
    if ca_file is not None:
        cfg["broker"].update(ca=pinned_ca(ca_file), server_name=server_name)
    return cfg


def virtual_board(tmp: Path, cfg: dict):
    """A virtual car board (not started) with cfg as its config.json (written into tmp)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from boards.virtual.board import VirtualBoard

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(cfg))
    return VirtualBoard(BOARD_DIAGRAM, {"": CAR, "lib": LIB, "config.json": tmp / "config.json"}, name=cfg["id"])


def region_broker(tmp: Path, region: str, cars: list[str], stations: list[str] = (),
                  tls: bool | Path = True) -> Broker:
    """A running broker of `region` (auth and ACL on; users gateway / gw-pw, each car and
    station with the password <id>-pw, and MONITOR_USER / monitor-pw, who may read the region's whole
    tree: a client id is bound to its user, so a test watching beside a gateway needs a user of
    its own); its listener TLS unless `tls` is False (a Path: the CA directory it shares with
    other brokers)."""
    passwords = {"gateway": "gw-pw", MONITOR_USER: "monitor-pw", **{c: f"{c}-pw" for c in cars},
                 **{s: f"{s}-pw" for s in stations}}
    return Broker.launch(tmp, region=region, cars=cars, stations=list(stations), passwords=passwords, tls=tls,
                         extra_acl=monitor_acl(region))


def reservation(rid: str, state: str = "held", station: str = "st-1", slot: int = 1, **kw) -> dict:
    """A reservation object as the gateway sends it."""
    return {"id": rid, "station": station, "slot": slot, "state": state, "distance_km": 1.2,
            "eta": 1795000000, "wait_min": 0.0, "charge_min": 30.0, "energy_kwh": 30.0, "power_kw": 11.0,
            "price_eur": 14.7, "hold_until": 1795000120, **kw}


class ScriptedGateway:
    """Plays `region`'s gateway for `car` on `broker` (as its `gateway` user)."""

    def __init__(self, broker: Broker, region: str, car: str,
                 respond: Callable[[D.CarRequest], list[dict]] | None = None):
        self.region = region
        self.car = car
        self.respond = respond
        self.requests: list[D.CarRequest] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.client: MqttClient = connect_client(broker, "gateway")
        self.reply_topic = D.car_topic(region, car, "reply")
        self.request_topic = D.car_topic(region, car, "request")
        self.online_topic = D.car_topic(region, car, "online")
        self.client.paho.message_callback_add(self.request_topic, self._on_request)
        self.client.subscribe(self.request_topic)
        self.client.subscribe(self.online_topic)

    def _on_request(self, client, userdata, msg) -> None:
        try:  # the contract: whatever the car sends passes the gateway's validator
            req = D.parse_car_request(self.car, msg.payload)
        except W.ProtocolError as e:
            with self._lock:
                self.errors.append(f"{e}: {msg.payload!r}")
            return
        with self._lock:
            self.requests.append(req)
        for m in (self.respond(req) if self.respond else None) or ():
            client.publish(self.reply_topic, W.encode(m), qos=1)

    def send(self, msg: dict) -> None:
        """Publish a reply or event to the car."""
        self.client.publish(self.reply_topic, W.encode(msg), qos=1)

    def ops(self) -> list[tuple[str, str | None]]:
        """(op, reservation) of every request so far."""
        with self._lock:
            return [(r.op, r.fields.get("reservation")) for r in self.requests]

    def wait_request(self, op: str, n: int = 1, timeout: float = 15) -> D.CarRequest:
        """The n-th request with this op (waiting for it)."""
        def get():
            with self._lock:
                got = [r for r in self.requests if r.op == op]
            return got[n - 1] if len(got) >= n else None
        return wait_until(get, timeout, f"{self.region}: request {op} #{n}")

    def online(self) -> bool | None:
        """The car's latest online flag on this broker (None: never seen)."""
        got = self.client.messages(self.online_topic)
        return D.parse_online(got[-1].payload) if got else None

    def close(self) -> None:
        self.client.close()


class World:
    """Regions (broker + gateway + paho station clients), paho clients and boards; all stopped
    at the end."""

    def __init__(self, tmp: Path, tls: bool = True):
        self.tmp = tmp
        self.tls: bool | Path = tmp / "ca" if tls else False  # one CA signs every region's broker
        self.brokers: list[Broker] = []
        self.gateways: list[GatewayProcess] = []
        self.clients: list[MqttClient] = []
        self.cars: list = []  # anything with stop()

    def region(self, name: str, cars: list[str], stations: list[StationMeta]) -> tuple[Broker, GatewayProcess]:
        b = region_broker(self.tmp / name / "broker", name, cars, [s.id for s in stations], tls=self.tls)
        self.brokers.append(b)
        for s in stations:
            c = connect_client(b, s.id)
            self.clients.append(c)
            c.subscribe(D.station_topic(name, s.id, "cmd"))
            c.publish(D.station_topic(name, s.id, "online"), W.online_message(True), retain=True)
            c.publish(D.station_topic(name, s.id, "status"), W.encode(D.station_status(["free"] * len(s.slots))),
                      retain=True)
        gw = GatewayProcess(self.tmp / name / "gw", name, b.port, "gateway", "gw-pw", stations, hold_s=60, grace_s=300,
                            tls_ca=b.ca_file)
        self.gateways.append(gw)
        gw.start().wait_connected()
        return b, gw

    @property
    def ca_file(self) -> Path | None:
        """The CA every region's broker is signed by (None without TLS)."""
        return self.brokers[0].ca_file if self.brokers else None

    def client(self, broker: Broker, user: str) -> MqttClient:
        c = connect_client(broker, user)
        self.clients.append(c)
        return c

    def station(self, sid: str) -> MqttClient:
        return next(c for c in self.clients if c.username == sid)

    def close(self) -> None:
        for car in self.cars:
            car.stop()
        for c in self.clients:
            c.close()
        for gw in self.gateways:
            gw.stop()
        for b in self.brokers:
            b.stop()


def reservations(gw: GatewayProcess) -> list[dict]:
    return gw.reservations()

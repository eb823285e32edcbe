"""The demo's cast: a timeline printer, scripted stations and scripted cars.

Stations and cars are ordinary MQTT clients (the harness's paho client: MQTT 3.1.1, QoS 1), each
logged in as its own broker user, so the broker's ACL applies to them as to real boards. Every
topic and message comes from recarga.core.protocol. Each actor prints what it sends and
receives, as it happens, on one line of the shared Timeline.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from harness import ROOT
from harness.broker import Broker
from harness.clients import MqttClient
from recarga.core.model import StationMeta
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

STATIONS_CSV = ROOT / "data" / "berlin_charging_stations_bnetza.csv"
EV_MODELS_JSON = ROOT / "data" / "ev_models_open_ev_data.json"


class DemoError(RuntimeError):
    """Something the timeline expected did not happen; the message says what."""


# ---------------------------------------------------------------- time and printing

def hm(unix: float | None) -> str:
    return "-" if unix is None else time.strftime("%H:%M", time.localtime(unix))


def hms(unix: float | None) -> str:
    return "-" if unix is None else time.strftime("%H:%M:%S", time.localtime(unix))


class Timeline:
    """One line per event: `+  3.2s  car ioniq5-1     <- gateway  reserved ...`.

    Called from the main thread and from every client's network thread, hence the lock.
    """

    WHO = 16  # width of the actor column

    def __init__(self, out: TextIO = sys.stdout):
        self.out = out
        self.t0 = time.monotonic()
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _write(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()

    def event(self, who: str, arrow: str, whom: str, text: str) -> None:
        self._write(f"+{self.elapsed():5.1f}s  {who:<{self.WHO}} {arrow} {whom:<8} {text}")

    def line(self, who: str, mark: str, text: str) -> None:
        """A line of a virtual board (│ its serial console, ◉ an LED it shows, ⇠ an input the
        demo gives it) or of the gateway's log, with one mark in place of the arrow."""
        self._write(f"+{self.elapsed():5.1f}s  {who:<{self.WHO}} {mark}  {text}")

    def note(self, text: str) -> None:
        self._write(f"+{self.elapsed():5.1f}s  {'':<{self.WHO}} ·  {text}")

    def scene(self, title: str) -> None:
        self._write(f"\n── {title} " + "─" * max(3, 86 - len(title)))

    def plain(self, text: str = "") -> None:
        self._write(text)


# ---------------------------------------------------------------- data: EV models, station labels

@dataclass(frozen=True)
class EvModel:
    name: str
    battery_kwh: float
    consumption_kwh_100km: float
    max_ac_kw: float
    max_dc_kw: float

    def short(self) -> str:
        dc = f", DC {self.max_dc_kw:g} kW" if self.max_dc_kw else ""
        return f"{self.name} ({self.battery_kwh:g} kWh, AC {self.max_ac_kw:g} kW{dc})"


def load_ev_model(brand: str, model: str, variant: str, path: Path = EV_MODELS_JSON) -> EvModel:
    """One vehicle of Open EV Data, by brand, model and variant (exactly as in the file)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)["data"]
    for m in data:
        if (m["brand"], m["model"], m.get("variant") or "") == (brand, model, variant):
            dc = m.get("dc_charger") or {}
            name = " ".join(x for x in (m["brand"], m["model"], variant) if x)
            return EvModel(name, float(m["usable_battery_size"]),
                           float(m["energy_consumption"]["average_consumption"]),
                           float(m["ac_charger"]["max_power"]), float(dc.get("max_power") or 0.0))
    raise DemoError(f"{path.name} has no {brand} {model} {variant!r}")


_LEGAL_FORM = re.compile(r"\s+(GmbH|AG|SE|KG|e\.K\.|inh\.)\b.*$")


def station_labels(stations: dict[str, StationMeta], path: Path = STATIONS_CSV) -> dict[str, str]:
    """'Allego, Alexanderstr. 4' for each station: brand (register name or operator) and address.

    The register's address columns are not part of StationMeta, so they are read here (for the
    few demo stations only) with the csv module, as recarga.core.stations reads the file.
    """
    address: dict[str, str] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            sid = (row.get("Ladeeinrichtungs-ID") or "").strip()
            if sid in stations:
                address[sid] = " ".join(f"{row.get('Straße') or ''} {row.get('Hausnummer') or ''}".split())
    labels = {}
    for sid, meta in stations.items():
        addr = address.get(sid, "")
        brand = meta.name if meta.name and meta.name != addr else meta.operator
        brand = _LEGAL_FORM.sub("", brand).strip() or meta.operator
        labels[sid] = ", ".join(x for x in (brand, addr) if x)
    return labels


def slots_summary(meta: StationMeta) -> str:
    """'2 × 150 kW DC' or '1 × 43 kW DC + 1 × 50 kW DC'."""
    groups: list[tuple[float, bool, int]] = []
    for s in meta.slots:
        if groups and groups[-1][:2] == (s.power_kw, s.dc):
            groups[-1] = (s.power_kw, s.dc, groups[-1][2] + 1)
        else:
            groups.append((s.power_kw, s.dc, 1))
    return " + ".join(f"{n} × {kw:g} kW {'DC' if dc else 'AC'}" for kw, dc, n in groups)


# ---------------------------------------------------------------- the actors' client

class Actor:
    """A scripted device: the harness's paho client (harness.clients.MqttClient) logged in as
    its own broker user, with its online flag as its Last Will."""

    def __init__(self, broker: Broker, user: str, online_topic: str):
        self.online_topic = online_topic
        self.client = MqttClient(broker, user, client_id=f"demo-{user}-{os.getpid()}",
                                 will=(online_topic, W.online_message(False)),
                                 on_message=lambda m: self.on_message(m.topic, m.payload))

    def on_message(self, topic: str, payload: bytes) -> None:
        """Each message it receives, in the client's network thread (overridden)."""

    def come_online(self, topic: str) -> None:
        """Connect, subscribe to `topic`, say it is online (retained)."""
        self.client.connect()
        if any(rc.is_failure for rc in self.client.subscribe(topic, W.QOS)):
            raise DemoError(f"{self.client.username}: the broker refused the subscription to {topic}")
        self.client.publish(self.online_topic, W.online_message(True), W.QOS, retain=True)

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------- stations

class Station(Actor):
    """A station board: one occupancy input and one reserved flag per slot.

    It shows a slot `occupied` or `out_of_service` when that is the physical truth, else
    `reserved` while the gateway's reserve command stands, else `free`; it re-publishes its
    retained status whenever what it shows changes (docs/protocol.md, "Stations").
    """

    def __init__(self, tl: Timeline, region: str, meta: StationMeta, label: str, broker: Broker,
                 peer: str = "gateway"):
        super().__init__(broker, meta.id, D.station_topic(region, meta.id, "online"))
        self.tl, self.region, self.meta, self.label = tl, region, meta, label
        self.peer = peer  # how the timeline names its gateway
        self.sid = meta.id
        self.physical = ["free"] * len(meta.slots)  # free | occupied | out_of_service
        self.reserved = [False] * len(meta.slots)
        self.commands: list[dict[str, Any]] = []
        self.seq = 0
        self._state_lock = threading.RLock()

    @property
    def who(self) -> str:
        return f"station {self.sid}"

    def shown(self) -> list[str]:
        with self._state_lock:
            return [p if p != "free" else ("reserved" if r else "free")
                    for p, r in zip(self.physical, self.reserved)]

    def come_online(self) -> None:
        super().come_online(D.station_topic(self.region, self.sid, "cmd"))
        self.client.wait_published(self._publish_status(f"online: {self.label}, {slots_summary(self.meta)}"),
                                   self.status_topic)

    def _publish_status(self, why: str) -> mqtt.MQTTMessageInfo:
        """Print and publish what the slots show now (retained); does not wait for the PUBACK,
        so it is safe under the state lock and in the network thread."""
        with self._state_lock:
            self.seq += 1
            slots = self.shown()
            text = " · ".join(f"{i} {s}" for i, s in enumerate(slots, 1))
            self.tl.event(self.who, "->", self.peer, f"status [{text}]  ({why})")
            return self.client.publish(self.status_topic, W.encode(D.station_status(slots, self.seq)), W.QOS,
                                       retain=True, timeout=None)

    @property
    def status_topic(self) -> str:
        return D.station_topic(self.region, self.sid, "status")

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            cmd = json.loads(payload)
            if not isinstance(cmd, dict):
                raise TypeError("not a JSON object")
        except (ValueError, TypeError):
            self.tl.event(self.who, "<-", self.peer, f"unreadable command {payload[:80]!r}")
            return
        with self._state_lock:
            self.commands.append(cmd)
            slot = cmd.get("slot")
            if cmd.get("cmd") == "reserve":
                self.tl.event(self.who, "<-", self.peer, f"reserve slot {slot} for {cmd.get('reservation')} "
                              f"(until {hms(cmd.get('until'))})")
            else:
                self.tl.event(self.who, "<-", self.peer, f"{cmd.get('cmd')} slot {slot}")
            if not (isinstance(slot, int) and 1 <= slot <= len(self.reserved)):
                return
            before = self.shown()
            self.reserved[slot - 1] = cmd.get("cmd") == "reserve"
            if self.shown() != before:
                self._publish_status(f"LED slot {slot}: {self.shown()[slot - 1]}")

    def set_slots(self, slots: dict[int, str], why: str) -> None:
        """Change the physical state of some slots (plug in, unplug, fault, repair) at once."""
        with self._state_lock:
            for k, state in slots.items():
                self.physical[k - 1] = state
            info = self._publish_status(why)
        self.client.wait_published(info, self.status_topic)

    def free_slots(self) -> list[int]:
        """Slots nobody is at and no reservation is shown on."""
        return [i for i, s in enumerate(self.shown(), 1) if s == "free"]

    def got_command(self, cmd: str, slot: int, since: int = 0) -> bool:
        with self._state_lock:
            return any(c.get("cmd") == cmd and c.get("slot") == slot for c in self.commands[since:])


# ---------------------------------------------------------------- cars

class Car(Actor):
    """A car board: asks the gateway where to charge and prints every answer and event."""

    def __init__(self, tl: Timeline, region: str, cid: str, model: EvModel, where: str,
                 lat: float, lon: float, soc: float, labels: dict[str, str], broker: Broker,
                 target_soc: float = 0.8, peer: str = "gateway"):
        super().__init__(broker, cid, D.car_topic(region, cid, "online"))
        self.tl, self.region, self.cid, self.model = tl, region, cid, model
        self.peer = peer  # how the timeline names its gateway
        self.where, self.lat, self.lon, self.soc, self.target_soc = where, lat, lon, soc, target_soc
        self.labels = labels
        self.inbox: list[dict[str, Any]] = []
        self.confirmed: set[str] = set()  # reservation ids this car confirmed (for wording)
        self._n = 0

    @property
    def who(self) -> str:
        return f"car {self.cid}"

    def come_online(self) -> None:
        super().come_online(D.car_topic(self.region, self.cid, "reply"))
        self.tl.event(self.who, "->", "broker", f"online: {self.model.short()} at {self.where}, "
                      f"battery at {self.soc:.0%}")

    def next_rid(self) -> str:
        self._n += 1
        return f"{self.cid}-{self._n}"

    # -------------------------------------------------------- requests

    def reserve_payload(self, rid: str, **override: Any) -> bytes:
        fields: dict[str, Any] = {
            "lat": self.lat, "lon": self.lon, "soc": self.soc, "battery_kwh": self.model.battery_kwh,
            "consumption_kwh_100km": self.model.consumption_kwh_100km,
            "max_ac_kw": self.model.max_ac_kw, "max_dc_kw": self.model.max_dc_kw,
            "target_soc": self.target_soc}
        fields.update(override)
        return W.encode(D.reserve_request(rid, self.cid, **fields))

    def say_reserve(self, rid: str, extra: str = "") -> None:
        self.tl.event(self.who, "->", self.peer,
                      f"reserve? rid {rid}: {self.model.name} at {self.where}, "
                      f"{self.soc:.0%} → {self.target_soc:.0%}{extra}")

    def reserve(self, rid: str | None = None, **override: Any) -> dict[str, Any]:
        rid = rid or self.next_rid()
        self.say_reserve(rid)
        return self.ask(rid, self.reserve_payload(rid, **override))

    def confirm(self, reservation: str) -> dict[str, Any]:
        rid = self.next_rid()
        self.tl.event(self.who, "->", self.peer, f"confirm {reservation} (rid {rid})")
        reply = self.ask(rid, W.encode(D.reservation_request("confirm", rid, self.cid, reservation)))
        if reply.get("ok"):
            self.confirmed.add(reservation)
        return reply

    def cancel(self, reservation: str) -> dict[str, Any]:
        rid = self.next_rid()
        self.tl.event(self.who, "->", self.peer, f"cancel {reservation} (rid {rid})")
        return self.ask(rid, W.encode(D.reservation_request("cancel", rid, self.cid, reservation)))

    def send(self, payload: bytes) -> int:
        """Publish a request as it is; returns the inbox position its answer will come after."""
        mark = len(self.inbox)
        self.client.publish(D.car_topic(self.region, self.cid, "request"), payload, W.QOS)
        return mark

    def ask(self, rid: str | None, payload: bytes, timeout: float = 10.0) -> dict[str, Any]:
        return self.answer(rid, self.send(payload), timeout)

    def answer(self, rid: str | None, mark: int, timeout: float = 10.0) -> dict[str, Any]:
        """The first reply to `rid` that arrived after inbox position `mark`."""
        def find() -> dict[str, Any] | None:
            return next((m for m in self.inbox[mark:] if "event" not in m and m.get("rid") == rid), None)
        try:
            return self.client.wait(find, timeout, f"an answer to request {rid}")
        except TimeoutError:
            raise DemoError(f"{self.cid}: no answer to request {rid} within {timeout} s") from None

    def wait_event(self, event: str, timeout: float, since: int = 0) -> dict[str, Any]:
        try:
            return self.client.wait(lambda: next((m for m in self.inbox[since:] if m.get("event") == event), None),
                                    timeout, f"a '{event}' event")
        except TimeoutError:
            raise DemoError(f"{self.cid}: no '{event}' event from the gateway within {timeout:.0f} s") from None

    # -------------------------------------------------------- printing what arrives

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            msg = {"unreadable": payload.decode(errors="replace")}
        try:
            text = self.describe(msg)
        except (KeyError, TypeError, ValueError):  # not the shape docs/protocol.md promises
            text = f"unexpected message {json.dumps(msg)[:200]}"
        self.tl.event(self.who, "<-", self.peer, text)
        self.inbox.append(msg)  # under the client's lock: Car.answer's wait sees it

    def where_is(self, r: dict[str, Any]) -> str:
        label = self.labels.get(r["station"], "not a demo station")
        return f"{r['station']} slot {r['slot']} ({label})"

    def offer_text(self, r: dict[str, Any]) -> str:
        return (f"{self.where_is(r)}: {r['distance_km']:.1f} km, ETA {hm(r['eta'])}, "
                f"wait {r['wait_min']:.0f} min, charge {r['charge_min']:.1f} min at {r['power_kw']:g} kW, "
                f"{r['price_eur']:.2f} EUR, hold until {hms(r['hold_until'])}")

    def describe(self, msg: dict[str, Any]) -> str:
        if "unreadable" in msg:
            return f"unreadable message {msg['unreadable'][:80]!r}"
        r = msg.get("reservation") or {}
        event = msg.get("event")
        if event == "checked_in":
            return (f"checked_in {r['id']} at {self.where_is(r)}: plugged in, charging "
                    f"{r['energy_kwh']:g} kWh at {r['power_kw']:g} kW, about {r['charge_min']:.0f} min")
        if event == "completed":
            return f"completed {r['id']}: unplugged at {r['station']} slot {r['slot']}, the session is over"
        if event == "expired":
            why = ("no-show: the car did not arrive in time" if r["id"] in self.confirmed
                   else "not confirmed within the hold")
            return f"expired {r['id']} ({why}); {r['station']} slot {r['slot']} goes back to free"
        if event == "faulted":
            offer = msg.get("offer")
            new = f"new offer {offer['id']}: {self.offer_text(offer)}" if offer else "no other slot to offer"
            return f"faulted {r['id']}: {r['station']} slot {r['slot']} went out of service; {new}"
        if event is not None:
            return f"event {event}: {json.dumps(msg)}"
        rid = msg.get("rid")
        if not msg.get("ok"):
            err = msg.get("error") or {}
            field = f" (field {err['field']})" if err.get("field") else ""
            text = f"error {err.get('code')}{field}: {err.get('message')}"
            if err.get("code") == W.NO_CAPACITY and err.get("earliest_free"):
                text = (f"error {W.NO_CAPACITY}: every slot within reach is taken; the earliest "
                        f"frees up at {hm(err['earliest_free'])}")
            ovf = msg.get("overflow")
            if ovf:  # why overflow to another region did not help
                text += f"; overflow: {ovf.get('code')} ({ovf.get('message')})"
            return f"{text}  [rid {rid}]"
        op = msg.get("op")
        if op == "reserve" and msg.get("region"):  # an overflow answer: held in another region
            b = msg.get("broker") or {}
            return (f"reserved {r['id']} in region {msg['region']} (its broker {b.get('host')}:{b.get('port')}) "
                    f"at {self.offer_text(r)}  [rid {rid}]")
        if op == "reserve":
            return f"reserved {r['id']} at {self.offer_text(r)}  [rid {rid}]"
        if op == "confirm":
            return (f"confirmed {r['id']} at {r['station']} slot {r['slot']}, kept until "
                    f"{hms(r['hold_until'])} (expected start + grace)  [rid {rid}]")
        if op == "cancel":
            return f"cancelled {r['id']}: {r['station']} slot {r['slot']} is released  [rid {rid}]"
        return json.dumps(msg)

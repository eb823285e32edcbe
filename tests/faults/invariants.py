"""What must hold after any fault, checked against the gateway's own database and what the
test's devices did and saw.

`Ledger` records the devices' side: every request a car sent (and whether the broker
acknowledged it, its PUBACK), every message the cars received on their reply topics, and the
last status each station published. `snapshot(db)` reads the database through a
consistent copy (SQLite's online backup, `recarga.gateway.store.backup`, which opens it
read-only, so the gateway may be running or stopped) with the store's own read functions;
`assert_invariants` fails naming every broken invariant:

- no slot has two active reservations whose times overlap;
- every ok reply a car received matches a stored reservation (id, car, station, slot, and a
  state the reply's state can have become) in the database of the region it names (an
  overflow reply names another region; `assert_invariants(..., elsewhere=...)` gives those
  regions' databases), every reply to one request is the same, the
  stored reply of a remembered request is the one the car got, and a refused request stored
  no reservation;
- no session ended while its slot is occupied: a reservation that is the last on its slot is
  not completed, expired or faulted while the last status its station published shows the
  slot occupied, except where the gateway documents that it ends one: a reservation an
  operator ended (`recarga-gateway reservation end`), and a slot that left service (gone
  from its station's metadata or from the station file, or out of service by an operator),
  each of which the test declares in the ledger (`operator_ended`, `withdrawn`);
- nothing acknowledged is lost: every request the broker acknowledged got a reply or is
  stored;
- no reservation its car was never told of (a request acted on twice makes one).
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import paho.mqtt.client as mqtt

from harness.broker import REGION
from harness.clients import MqttClient
from recarga.core.model import Reservation
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway.store import Store, backup

# the states a reservation's state may have become since a reply or event named it
_LATER = {
    "held": {"held", "confirmed", "checked_in", "completed", "expired", "cancelled", "faulted"},
    "confirmed": {"confirmed", "checked_in", "completed", "expired", "cancelled", "faulted"},
    "checked_in": {"checked_in", "completed", "faulted"},
    **{s: {s} for s in ("completed", "expired", "cancelled", "faulted")},
}
OVERLAP_S = 1e-6  # float slack when one reservation's end is the next one's start
SESSION_ENDS = ("completed", "expired", "faulted")  # what may not befall a session on an occupied slot


@dataclass
class Sent:
    car: str
    rid: str
    info: mqtt.MQTTMessageInfo

    @property
    def acknowledged(self) -> bool:
        """The broker PUBACKed it: from then on it is the broker's and the gateway's to keep."""
        return self.info.is_published()


@dataclass
class Ledger:
    """The devices' side of a scenario: the cars' clients (subscribed to their reply topics),
    their requests, each station's last published slot states, and what the test did that
    may end a session on an occupied slot: reservations an operator ended, slots that left
    service ((station, slot))."""

    cars: dict[str, MqttClient] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    statuses: dict[str, list[str]] = field(default_factory=dict)
    operator_ended: set[str] = field(default_factory=set)
    withdrawn: set[tuple[str, int]] = field(default_factory=set)

    def car(self, client: MqttClient) -> MqttClient:
        """Follow a car's client: subscribe it to its reply topic."""
        client.subscribe(D.car_topic(REGION, client.username, "reply"))
        self.cars[client.username] = client
        return client

    def send(self, car: str, payload: bytes, rid: str) -> Sent:
        """Publish a request at QoS 1 without waiting (acknowledged once its PUBACK is in)."""
        info = self.cars[car].paho.publish(D.car_topic(REGION, car, "request"), payload, qos=W.QOS)
        s = Sent(car, rid, info)
        self.sent.append(s)
        return s

    def ask(self, car: str, payload: bytes, rid: str, timeout: float = 10) -> dict:
        """Send and wait for the reply to `rid`."""
        self.send(car, payload, rid)
        return self.cars[car].wait(lambda: next(iter(self.replies(car, rid)), None), timeout,
                                   f"the reply to {rid}")

    def status(self, station: MqttClient, slots: list[str], seq: int | None = None) -> None:
        """Publish a station's slot states (retained, QoS 1, waiting for the PUBACK)."""
        station.publish(D.station_topic(REGION, station.username, "status"),
                        W.encode(D.station_status(slots, seq)), retain=True)
        self.statuses[station.username] = list(slots)

    def messages(self, car: str) -> list[dict]:
        client = self.cars[car]
        return [json.loads(m.payload) for m in client.messages(D.car_topic(REGION, car, "reply"))]

    def replies(self, car: str, rid: str) -> list[dict]:
        return [m for m in self.messages(car) if "event" not in m and m.get("rid") == rid]

    def answered(self) -> int:
        """How many of the sent requests have a reply."""
        got = {(car, m.get("rid")) for car in self.cars for m in self.messages(car) if "event" not in m}
        return sum((s.car, s.rid) in got for s in self.sent)


@dataclass(frozen=True)
class Snapshot:
    """The gateway's database at one moment, through the store's read functions."""

    reservations: list[Reservation]
    requests: dict[tuple[str, str], dict]


def snapshot(db: Path) -> Snapshot:
    """A consistent read of the gateway's database, running or not: an online backup (which
    opens it read-only) into a temporary file, read with the store's own functions."""
    with tempfile.TemporaryDirectory(prefix="faults-db-") as tmp:
        copy = Path(tmp) / "copy.db"
        backup(Path(db), copy)
        store = Store(copy, "NORMAL")
        try:
            return Snapshot(store.reservations(), {(q.car, q.rid): q.reply for q in store.requests(0.0)})
        finally:
            store.close()


def _overlaps(active: Iterable[Reservation]) -> list[str]:
    by_slot: dict[tuple[str, int], list[Reservation]] = defaultdict(list)
    for r in active:
        by_slot[(r.station, r.slot)].append(r)
    found = []
    for (station, slot), rs in by_slot.items():
        rs.sort(key=lambda r: r.start)
        for a, b in pairwise(rs):
            if b.start < a.end - OVERLAP_S:
                found.append(f"{station} slot {slot} double-booked: {a.id} ({a.state}, {a.start:.0f}-{a.end:.0f}) "
                             f"and {b.id} ({b.state}, {b.start:.0f}-{b.end:.0f})")
    return found


def violations(snap: Snapshot, ledger: Ledger, elsewhere: Mapping[str, Snapshot] | None = None) -> list[str]:
    """Every broken invariant (module docstring), each as one line; [] when all hold.
    `elsewhere`: the snapshots of the other regions replies may name (overflow)."""
    stored = {r.id: r for r in snap.reservations}
    stored_in = {region: {r.id: r for r in other.reservations} for region, other in (elsewhere or {}).items()}
    found = _overlaps(r for r in snap.reservations if r.state in D.ACTIVE_STATES)
    told: dict[str, set[str]] = defaultdict(set)  # car -> reservation ids it was told of
    for car in ledger.cars:
        for m in ledger.messages(car):
            region = m.get("region", REGION)
            if region != REGION:
                if region not in stored_in:
                    found.append(f"{car} was sent to region {region}, whose database the test did not give")
                elif isinstance(m.get("reservation"), dict):
                    found += _matches(car, m["reservation"], stored_in[region])
                continue
            for view in (m.get("reservation"), m.get("offer")):
                if isinstance(view, dict):
                    told[car].add(view["id"])
                    found += _matches(car, view, stored)
    for s in ledger.sent:
        replies = ledger.replies(s.car, s.rid)
        if any(r != replies[0] for r in replies):
            found.append(f"{s.car} {s.rid}: different replies to one request: {replies}")
        kept = snap.requests.get((s.car, s.rid))
        if kept is not None and replies and kept != replies[0]:
            found.append(f"{s.car} {s.rid}: the car got {replies[0]}, the database keeps {kept}")
        if s.acknowledged and not replies and kept is None:
            found.append(f"{s.car} {s.rid}: acknowledged by the broker, never answered and not stored")
        if replies and not replies[0]["ok"]:
            made = [r.id for r in snap.reservations if r.car == s.car and r.rid == s.rid]
            if made:
                found.append(f"{s.car} {s.rid}: refused ({replies[0]['error']['code']}) yet stored {made}")
    for r in snap.reservations:
        if r.id not in told[r.car] and r.car in ledger.cars:
            found.append(f"{r.id} ({r.car} {r.rid}, {r.state}) stored but never told to its car")
    last_on_slot: dict[tuple[str, int], Reservation] = {}
    for r in snap.reservations:  # ordered by creation
        last_on_slot[(r.station, r.slot)] = r
    for (station, slot), r in last_on_slot.items():
        states = ledger.statuses.get(station) or []
        occupied = slot <= len(states) and states[slot - 1] == "occupied"
        allowed = r.id in ledger.operator_ended or (station, slot) in ledger.withdrawn
        if r.state in SESSION_ENDS and occupied and not allowed:
            found.append(f"{r.id} ({r.car}) {r.state} while {station} slot {slot} is occupied")
    return found


def _matches(car: str, view: dict, stored: dict[str, Reservation]) -> list[str]:
    r = stored.get(view["id"])
    if r is None:
        return [f"{car} was told of reservation {view['id']}, which is not stored"]
    told = (car, view["station"], view["slot"])
    if (r.car, r.station, r.slot) != told:
        return [f"{view['id']}: the car was told {told}, the database has {(r.car, r.station, r.slot)}"]
    if r.state not in _LATER[view["state"]]:
        return [f"{view['id']}: told {view['state']}, stored {r.state}, which cannot follow it"]
    return []


def assert_invariants(db: Path, ledger: Ledger, elsewhere: Mapping[str, Path] | None = None) -> Snapshot:
    """Fail listing every broken invariant; otherwise the snapshot checked, for more asserts.
    `elsewhere` maps other regions an overflow reply may name to their gateways' databases."""
    snap = snapshot(db)
    found = violations(snap, ledger, {region: snapshot(other) for region, other in (elsewhere or {}).items()})
    assert not found, "invariants broken:\n" + "\n".join(found)
    return snap

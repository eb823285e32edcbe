"""Devices <-> the region's gateway: the region's topics, the cars' requests, replies and
telemetry, the stations' status, meta and commands, and the states they speak of.

docs/protocol.md up to "Across regions" is the human-readable form.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from recarga.core.protocol import wire as W

MAX_PAYLOAD = 512  # bytes, for everything a device publishes

# Slot states as stations report them and LEDs show them, with their OCPP 1.6 / OCPI 2.2
# equivalents; "offline" is derived by the gateway from a station's Last Will.
SLOT_STATES = ("free", "reserved", "occupied", "out_of_service")
OCPP_STATUS = {
    "free": "Available",
    "reserved": "Reserved",
    "occupied": "Charging",
    "out_of_service": "Faulted",
    "offline": "Unavailable",
}
OCPI_STATUS = {
    "free": "AVAILABLE",
    "reserved": "RESERVED",
    "occupied": "CHARGING",
    "out_of_service": "OUTOFORDER",
    "offline": "UNKNOWN",
}

RESERVATION_STATES = ("held", "confirmed", "checked_in", "completed", "expired", "cancelled", "faulted")
ACTIVE_STATES = frozenset(("held", "confirmed", "checked_in"))

# Error codes in replies to cars (docs/protocol.md lists when each is sent): the shared ones
# of wire and these.
UNKNOWN_STATION = "unknown_station"
UNKNOWN_RESERVATION = "unknown_reservation"
CAR_MISMATCH = "car_mismatch"
BAD_STATE = "bad_state"
RATE_LIMITED = "rate_limited"  # with "retry_after": whole seconds until the car may ask again
# not an error: an ok reserve reply's "notice" when the request's `model` is not one the
# gateway knows (its charge time is then estimated at constant power)
UNKNOWN_MODEL = "unknown_model"
ERROR_CODES = (
    W.BAD_JSON, W.BAD_TYPE, W.MISSING_FIELD, W.UNKNOWN_FIELD, W.OUT_OF_RANGE, W.TOO_LARGE, W.BAD_VERSION,
    W.UNKNOWN_OP, UNKNOWN_STATION, UNKNOWN_RESERVATION, CAR_MISMATCH, W.NO_CAPACITY, BAD_STATE, RATE_LIMITED,
)

# Events the gateway pushes to a car's reply topic without a request ("cancelled": an
# operator ended a held or confirmed reservation, recarga-gateway reservation end).
CAR_EVENTS = ("checked_in", "completed", "expired", "faulted", "cancelled")
# reserve/release come from the gateway's engine, out_of_service/in_service from the gateway
# on an operator's `recarga-gateway slot out-of-service|in-service`; the station then
# reports the new state in its status.
STATION_CMDS = ("reserve", "release", "out_of_service", "in_service")


# ---------------------------------------------------------------- topics

def region_root(region: str) -> str:
    return f"{W.ROOT}/{W.check_id('region', region)}"


# Topic strings are asked for on every message: built (and their ids checked) once each.
_TOPICS_CACHED = 16384


@functools.lru_cache(maxsize=_TOPICS_CACHED)
def station_topic(region: str, sid: str, leaf: str) -> str:
    """leaf: status | meta | online | cmd"""
    assert leaf in ("status", "meta", "online", "cmd")
    return f"{region_root(region)}/station/{W.check_id('station', sid)}/{leaf}"


@functools.lru_cache(maxsize=_TOPICS_CACHED)
def car_topic(region: str, cid: str, leaf: str) -> str:
    """leaf: request | reply | online | telemetry"""
    assert leaf in ("request", "reply", "online", "telemetry")
    return f"{region_root(region)}/car/{W.check_id('car', cid)}/{leaf}"


def car_filter(region: str, leaf: str) -> str:
    """Subscription filter for one leaf of every car in the region."""
    assert leaf in ("request", "reply", "online", "telemetry")
    return f"{region_root(region)}/car/+/{leaf}"


def station_filter(region: str, leaf: str) -> str:
    """Subscription filter for one leaf of every station in the region."""
    assert leaf in ("status", "meta", "online", "cmd")
    return f"{region_root(region)}/station/+/{leaf}"


def gateway_online_topic(region: str) -> str:
    return f"{region_root(region)}/gateway/online"


def gateway_sync_topic(region: str) -> str:
    """The gateway's catch-up marker: it publishes one after subscribing and reads it back
    (docs/protocol.md, "Catching up")."""
    return f"{region_root(region)}/gateway/sync"


def gateway_subscriptions(region: str) -> list[str]:
    """What the gateway subscribes to (all QoS 1); the sync topic last."""
    return [car_filter(region, "request"), station_filter(region, "status"),
            station_filter(region, "meta"), station_filter(region, "online"), gateway_sync_topic(region)]


def sync_message(token: str) -> dict[str, Any]:
    return {"v": W.VERSION, "sync": token}


def parse_sync(payload: bytes) -> str | None:
    """The token of a catch-up marker; None for anything else."""
    try:
        msg = W.decode(payload, MAX_PAYLOAD)
    except W.ProtocolError:
        return None
    token = msg.get("sync")
    return token if isinstance(token, str) and set(msg) == {"v", "sync"} else None


@dataclass(frozen=True, slots=True)
class TopicRef:
    kind: str  # "car" | "station"
    id: str
    leaf: str


def parse_topic(region: str, topic: str) -> TopicRef | None:
    """Split a topic of this region into (kind, id, leaf); None if it is not one of ours."""
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:3]) != region_root(region):
        return None
    _, _, _, kind, ident, leaf = parts
    if kind not in ("car", "station") or not W.ID_RE.match(ident):
        return None
    return TopicRef(kind, ident, leaf)


# ---------------------------------------------------------------- validation

_CAR_REQUEST_FIELDS: dict[str, W.FieldSpec] = {
    "reserve": W.NEED_FIELDS,
    "confirm": {},
    "cancel": {},
}
_OPTIONAL: dict[str, dict[str, tuple[type, ...]]] = {
    "reserve": {"station": (str,), "model": (str,)},
    "confirm": {"reservation": (str,)},
    "cancel": {"reservation": (str,)},
}
_COMMON = ("v", "op", "rid", "car")
# every field an op may carry, and how W.numbers names the op in its errors
_ALLOWED = {op: frozenset((*_COMMON, *required, *_OPTIONAL[op])) for op, required in _CAR_REQUEST_FIELDS.items()}
_FOR_OP = {op: f" for op {op!r}" for op in _CAR_REQUEST_FIELDS}


@dataclass(frozen=True, slots=True)
class CarRequest:
    op: str  # reserve | confirm | cancel
    rid: str
    car: str
    fields: dict[str, Any]


def request_rid(payload: bytes) -> str | None:
    """Best effort: the request id of a message that failed validation, to echo in the error."""
    try:
        msg = json.loads(payload) if len(payload) <= MAX_PAYLOAD else None
    except (ValueError, UnicodeDecodeError):
        return None
    rid = msg.get("rid") if isinstance(msg, dict) else None
    return rid if isinstance(rid, str) and W.RID_RE.match(rid) else None


def parse_car_request(topic_car: str, payload: bytes) -> CarRequest:
    """Validate a message from recarga/v1/<region>/car/<topic_car>/request."""
    msg = W.decode(payload, MAX_PAYLOAD)
    for name in ("op", "rid", "car"):
        if name not in msg:
            raise W.ProtocolError(W.MISSING_FIELD, f"missing field '{name}'", name)
        if type(msg[name]) is not str:
            W.check_field(name, msg[name], (str,))
    op = msg["op"]
    if op not in _CAR_REQUEST_FIELDS:
        raise W.ProtocolError(W.UNKNOWN_OP, f"unknown op {op!r}, expected one of {sorted(_CAR_REQUEST_FIELDS)}", "op")
    if not W.RID_RE.match(msg["rid"]):
        raise W.ProtocolError(W.OUT_OF_RANGE, "field 'rid' must be 1-64 of A-Z a-z 0-9 . _ : -", "rid")
    if msg["car"] != topic_car:
        raise W.ProtocolError(CAR_MISMATCH, f"car {msg['car']!r} in payload does not match topic car {topic_car!r}",
                              "car")
    required = _CAR_REQUEST_FIELDS[op]
    optional = _OPTIONAL[op]
    allowed = _ALLOWED[op]
    if not allowed.issuperset(msg):
        for name in msg:
            if name not in allowed:
                raise W.ProtocolError(W.UNKNOWN_FIELD, f"unknown field {name!r} for op {op!r}", name)
    fields: dict[str, Any] = W.numbers(msg, required, _FOR_OP[op])
    for name, types in optional.items():
        if name in msg:
            W.check_field(name, msg[name], types)
            fields[name] = msg[name]
    if op in ("confirm", "cancel") and "reservation" not in fields:
        raise W.ProtocolError(W.MISSING_FIELD, f"missing field 'reservation' for op {op!r}", "reservation")
    if op == "reserve":
        W.check_need(fields)
        if "station" in fields and not W.ID_RE.match(fields["station"]):
            raise W.ProtocolError(W.OUT_OF_RANGE, "field 'station' is not a valid station id", "station")
        if "model" in fields and not W.RID_RE.match(fields["model"]):
            raise W.ProtocolError(W.OUT_OF_RANGE, "field 'model' must be 1-64 of A-Z a-z 0-9 . _ : -", "model")
    return CarRequest(op, msg["rid"], msg["car"], fields)


# A station numbers its statuses: `boot` counts its boots (kept in flash), `seq` its state
# changes since that boot. Both wrap to 0 after SEQ_MASK (firmware slots.py's _SEQ_WRAP) and
# are compared in serial-number arithmetic (RFC 1982): b is after a if (b - a) mod 2**30 is
# below 2**29.
SEQ_MASK = 0x3FFFFFFF
_SEQ_HALF = (SEQ_MASK + 1) >> 1


@dataclass(frozen=True, slots=True)
class StationStatus:
    slots: list[str]
    boot: int | None  # None without seq (the station does not number its statuses), or counted as 0
    seq: int | None

    @property
    def numbering(self) -> tuple[int, int] | None:
        """(boot, seq), or None for a status without seq."""
        return None if self.seq is None else (self.boot or 0, self.seq)


def serial_before(a: int, b: int) -> bool:
    """a comes before b, counting modulo SEQ_MASK + 1 (wrap-safe)."""
    return a != b and ((b - a) & SEQ_MASK) < _SEQ_HALF


def status_before(got: tuple[int, int], seen: tuple[int, int]) -> bool:
    """A status numbered `got` (boot, seq) is older than one numbered `seen`: from an earlier
    boot, or from the same boot with an earlier seq."""
    if got[0] != seen[0]:
        return serial_before(got[0], seen[0])
    return serial_before(got[1], seen[1])


def parse_station_report(payload: bytes) -> StationStatus:
    """recarga/v1/<region>/station/<sid>/status (retained):
    {"v":1,"slots":["free",...],"boot":3,"seq":17}; boot and seq optional (boot only with seq)."""
    msg = W.decode(payload, MAX_PAYLOAD)
    for name in msg:
        if name not in ("v", "slots", "seq", "boot"):
            raise W.ProtocolError(W.UNKNOWN_FIELD, f"unknown field {name!r} in station status", name)
    if "slots" not in msg:
        raise W.ProtocolError(W.MISSING_FIELD, "missing field 'slots'", "slots")
    slots = msg["slots"]
    if not isinstance(slots, list) or not 1 <= len(slots) <= 32:
        raise W.ProtocolError(W.BAD_TYPE, "field 'slots' must be a list of 1-32 slot states", "slots")
    for s in slots:
        if s not in SLOT_STATES:
            raise W.ProtocolError(W.OUT_OF_RANGE, f"slot state {s!r} not one of {SLOT_STATES}", "slots")
    if "boot" in msg and "seq" not in msg:
        raise W.ProtocolError(W.MISSING_FIELD, "field 'boot' needs field 'seq'", "seq")
    for name in ("boot", "seq"):
        if name in msg:
            W.check_field(name, msg[name], (int,))
            if not 0 <= msg[name] <= SEQ_MASK:
                raise W.ProtocolError(W.OUT_OF_RANGE, f"field '{name}'={msg[name]} outside 0..{SEQ_MASK}", name)
    return StationStatus(slots, msg.get("boot"), msg.get("seq"))


def parse_station_status(payload: bytes) -> list[str]:
    """The slot states of a station status (parse_station_report has its numbering too)."""
    return parse_station_report(payload).slots


CAR_STATES = ("driving", "low", "heading", "waiting", "charging", "done")


def parse_car_telemetry(payload: bytes) -> dict[str, Any]:
    """.../car/<cid>/telemetry: {"v":1,"soc":0.42,"lat":..,"lon":..,"state":"driving",
    "reservation":"r..."|null} — what the car measures and does, for monitoring."""
    msg = W.decode(payload, MAX_PAYLOAD)
    for name in msg:
        if name not in ("v", "soc", "lat", "lon", "state", "reservation"):
            raise W.ProtocolError(W.UNKNOWN_FIELD, f"unknown field {name!r} in car telemetry", name)
    for name in ("soc", "lat", "lon", "state"):
        if name not in msg:
            raise W.ProtocolError(W.MISSING_FIELD, f"missing field '{name}'", name)
    W.check_field("soc", msg["soc"], W.NUMBER, 0.0, 1.0)
    W.check_field("lat", msg["lat"], W.NUMBER, -90.0, 90.0)
    W.check_field("lon", msg["lon"], W.NUMBER, -180.0, 180.0)
    if msg["state"] not in CAR_STATES:
        raise W.ProtocolError(W.OUT_OF_RANGE, f"state {msg['state']!r} not one of {CAR_STATES}", "state")
    if msg.get("reservation") is not None:
        W.check_field("reservation", msg["reservation"], (str,))
    return msg


def parse_online(payload: bytes) -> bool:
    """.../<kind>/<id>/online (retained; the Last Will publishes {"v":1,"online":false})."""
    msg = W.decode(payload, MAX_PAYLOAD)
    if set(msg) != {"v", "online"} or not isinstance(msg["online"], bool):
        raise W.ProtocolError(W.BAD_TYPE, "online message must be exactly {\"v\":1,\"online\":true|false}", "online")
    return msg["online"]


def parse_station_meta(payload: bytes) -> dict[str, Any]:
    """.../station/<sid>/meta (retained): position, operator, price and slot powers."""
    msg = W.decode(payload, MAX_PAYLOAD)
    allowed = {"v", "lat", "lon", "operator", "name", "price_per_kwh", "slots"}
    for name in msg:
        if name not in allowed:
            raise W.ProtocolError(W.UNKNOWN_FIELD, f"unknown field {name!r} in station meta", name)
    for name in ("lat", "lon", "slots"):
        if name not in msg:
            raise W.ProtocolError(W.MISSING_FIELD, f"missing field '{name}'", name)
    W.check_field("lat", msg["lat"], W.NUMBER, -90.0, 90.0)
    W.check_field("lon", msg["lon"], W.NUMBER, -180.0, 180.0)
    if "price_per_kwh" in msg:
        W.check_field("price_per_kwh", msg["price_per_kwh"], W.NUMBER, 0.0, 10.0)
    for name in ("operator", "name"):
        if name in msg:
            W.check_field(name, msg[name], (str,))
    slots = msg["slots"]
    if not isinstance(slots, list) or not 1 <= len(slots) <= 32:
        raise W.ProtocolError(W.BAD_TYPE, "field 'slots' must be a list of 1-32 slots", "slots")
    for s in slots:
        if not isinstance(s, dict) or set(s) - {"power_kw", "dc"} or "power_kw" not in s:
            raise W.ProtocolError(W.BAD_TYPE, "each slot must be {\"power_kw\": number, \"dc\": bool}", "slots")
        W.check_field("power_kw", s["power_kw"], W.NUMBER, W.MIN_CHARGE_KW, W.MAX_SLOT_KW)
        if "dc" in s and not isinstance(s["dc"], bool):
            raise W.ProtocolError(W.BAD_TYPE, "slot field 'dc' must be a boolean", "slots")
    return msg


# ---------------------------------------------------------------- messages the gateway sends

def error_reply(rid: str | None, code: str, message: str, field: str | None = None,
                **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    err.update(extra)
    return {"v": W.VERSION, "rid": rid, "ok": False, "error": err}


def ok_reply(rid: str, op: str, reservation: dict[str, Any], **extra: Any) -> dict[str, Any]:
    msg = {"v": W.VERSION, "rid": rid, "ok": True, "op": op, "reservation": reservation}
    msg.update(extra)
    return msg


def car_event(event: str, reservation: dict[str, Any], offer: dict[str, Any] | None = None,
              **extra: Any) -> dict[str, Any]:
    assert event in CAR_EVENTS
    msg: dict[str, Any] = {"v": W.VERSION, "event": event, "reservation": reservation}
    if offer is not None:
        msg["offer"] = offer
    msg.update(extra)
    return msg


def station_cmd(cmd: str, slot: int, reservation: str | None = None, until: float | None = None) -> dict[str, Any]:
    assert cmd in STATION_CMDS
    msg: dict[str, Any] = {"v": W.VERSION, "cmd": cmd, "slot": slot}
    if reservation is not None:
        msg["reservation"] = reservation
    if until is not None:
        msg["until"] = round(until)
    return msg


# ---------------------------------------------------------------- messages devices send

def station_status(slots: list[str], seq: int | None = None, boot: int | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": W.VERSION, "slots": slots}
    if boot is not None:
        msg["boot"] = boot
    if seq is not None:
        msg["seq"] = seq
    return msg


def reserve_request(rid: str, car: str, *, lat: float, lon: float, soc: float, battery_kwh: float,
                    consumption_kwh_100km: float, max_ac_kw: float, max_dc_kw: float,
                    target_soc: float, station: str | None = None, model: str | None = None) -> dict[str, Any]:
    """Builder used by simulated cars, the demo and tests (firmware builds the same shape)."""
    msg: dict[str, Any] = {
        "v": W.VERSION, "op": "reserve", "rid": rid, "car": car, "lat": lat, "lon": lon, "soc": soc,
        "battery_kwh": battery_kwh, "consumption_kwh_100km": consumption_kwh_100km,
        "max_ac_kw": max_ac_kw, "max_dc_kw": max_dc_kw, "target_soc": target_soc,
    }
    if station is not None:
        msg["station"] = station
    if model is not None:
        msg["model"] = model
    return msg


def reservation_request(op: str, rid: str, car: str, reservation: str) -> dict[str, Any]:
    assert op in ("confirm", "cancel")
    return {"v": W.VERSION, "op": op, "rid": rid, "car": car, "reservation": reservation}

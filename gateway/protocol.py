"""The Recarga wire protocol, v1: the one home of topic names and message validation.

docs/protocol.md is the human-readable contract; this module is its executable form.
Nothing else in the CPython code spells a topic string or checks a message shape.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

VERSION = 1
ROOT = "recarga/v1"
MAX_PAYLOAD = 512  # bytes, for everything a device publishes

QOS = 1  # every topic; devices speak MQTT 3.1.1 through umqtt.simple

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
RID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

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

# Error codes in replies (docs/protocol.md lists when each is sent).
BAD_JSON = "bad_json"
BAD_TYPE = "bad_type"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
OUT_OF_RANGE = "out_of_range"
TOO_LARGE = "too_large"
BAD_VERSION = "bad_version"
UNKNOWN_OP = "unknown_op"
UNKNOWN_STATION = "unknown_station"
UNKNOWN_RESERVATION = "unknown_reservation"
CAR_MISMATCH = "car_mismatch"
NO_CAPACITY = "no_capacity"
BAD_STATE = "bad_state"
ERROR_CODES = (
    BAD_JSON, BAD_TYPE, MISSING_FIELD, UNKNOWN_FIELD, OUT_OF_RANGE, TOO_LARGE, BAD_VERSION,
    UNKNOWN_OP, UNKNOWN_STATION, UNKNOWN_RESERVATION, CAR_MISMATCH, NO_CAPACITY, BAD_STATE,
)

# Events the gateway pushes to a car's reply topic without a request.
CAR_EVENTS = ("checked_in", "completed", "expired", "faulted")
# reserve/release come from the gateway's engine; out_of_service/in_service from an operator
# (recarga-gateway slot ...), the station then reports the new state in its status.
STATION_CMDS = ("reserve", "release", "out_of_service", "in_service")


# ---------------------------------------------------------------- topics

def _check_id(kind: str, value: str) -> str:
    if not ID_RE.match(value):
        raise ValueError(f"bad {kind} id {value!r}: 1-32 of A-Z a-z 0-9 _ -")
    return value


def region_root(region: str) -> str:
    return f"{ROOT}/{_check_id('region', region)}"


def station_topic(region: str, sid: str, leaf: str) -> str:
    """leaf: status | meta | online | cmd"""
    assert leaf in ("status", "meta", "online", "cmd")
    return f"{region_root(region)}/station/{_check_id('station', sid)}/{leaf}"


def car_topic(region: str, cid: str, leaf: str) -> str:
    """leaf: request | reply | online | telemetry"""
    assert leaf in ("request", "reply", "online", "telemetry")
    return f"{region_root(region)}/car/{_check_id('car', cid)}/{leaf}"


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


def gateway_subscriptions(region: str) -> list[str]:
    """What the gateway subscribes to (all QoS 1)."""
    return [car_filter(region, "request"), station_filter(region, "status"),
            station_filter(region, "meta"), station_filter(region, "online")]


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
    if kind not in ("car", "station") or not ID_RE.match(ident):
        return None
    return TopicRef(kind, ident, leaf)


def acl_car(region: str, cid: str) -> list[tuple[str, str]]:
    """(access, topic) pairs a car's broker user gets: its own subtree and nothing else."""
    return [
        ("write", car_topic(region, cid, "request")),
        ("write", car_topic(region, cid, "online")),
        ("write", car_topic(region, cid, "telemetry")),
        ("read", car_topic(region, cid, "reply")),
    ]


def acl_station(region: str, sid: str) -> list[tuple[str, str]]:
    return [
        ("readwrite", station_topic(region, sid, "status")),
        ("write", station_topic(region, sid, "meta")),
        ("write", station_topic(region, sid, "online")),
        ("read", station_topic(region, sid, "cmd")),
    ]


def acl_gateway(region: str) -> list[tuple[str, str]]:
    return [
        ("read", car_filter(region, "request")),
        ("read", car_filter(region, "online")),
        ("read", car_filter(region, "telemetry")),
        ("write", car_filter(region, "reply")),
        ("read", station_filter(region, "status")),
        ("read", station_filter(region, "meta")),
        ("read", station_filter(region, "online")),
        ("write", station_filter(region, "cmd")),
        ("readwrite", gateway_online_topic(region)),
    ]


# ---------------------------------------------------------------- validation

class ProtocolError(ValueError):
    """A message that breaks the contract; code is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.field = field


_NUM = (int, float)

# field -> (types, min, max); min/max inclusive, None = unbounded
_CAR_REQUEST_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], float | None, float | None]]] = {
    "reserve": {
        "lat": (_NUM, -90.0, 90.0),
        "lon": (_NUM, -180.0, 180.0),
        "soc": (_NUM, 0.0, 1.0),
        "battery_kwh": (_NUM, 1.0, 300.0),
        "consumption_kwh_100km": (_NUM, 5.0, 80.0),
        "max_ac_kw": (_NUM, 0.0, 50.0),
        "max_dc_kw": (_NUM, 0.0, 500.0),
        "target_soc": (_NUM, 0.05, 1.0),
    },
    "confirm": {},
    "cancel": {},
}
_OPTIONAL: dict[str, dict[str, tuple[type, ...]]] = {
    "reserve": {"station": (str,)},
    "confirm": {"reservation": (str,)},
    "cancel": {"reservation": (str,)},
}
_COMMON = ("v", "op", "rid", "car")


@dataclass(frozen=True, slots=True)
class CarRequest:
    op: str  # reserve | confirm | cancel
    rid: str
    car: str
    fields: dict[str, Any]


def _decode(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(TOO_LARGE, f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD}")
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(BAD_JSON, f"not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_JSON, "payload must be a JSON object")
    v = msg.get("v")
    if "v" not in msg:
        raise ProtocolError(MISSING_FIELD, "missing field 'v'", "v")
    if type(v) is not int or v != VERSION:
        raise ProtocolError(BAD_VERSION, f"unsupported protocol version {v!r}, this gateway speaks {VERSION}", "v")
    return msg


def _check_field(name: str, value: Any, types: tuple[type, ...], lo: float | None = None,
                 hi: float | None = None) -> None:
    # bool is an int subclass in Python; JSON true is never a number here.
    if isinstance(value, bool) or not isinstance(value, types):
        want = "number" if types == _NUM else "string" if types == (str,) else "/".join(t.__name__ for t in types)
        raise ProtocolError(BAD_TYPE, f"field '{name}' must be a {want}, got {type(value).__name__}", name)
    if types == _NUM:
        if not math.isfinite(value):
            raise ProtocolError(OUT_OF_RANGE, f"field '{name}' must be finite", name)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ProtocolError(OUT_OF_RANGE, f"field '{name}'={value} outside {lo}..{hi}", name)


def request_rid(payload: bytes) -> str | None:
    """Best effort: the request id of a message that failed validation, to echo in the error."""
    try:
        msg = json.loads(payload) if len(payload) <= MAX_PAYLOAD else None
    except (ValueError, UnicodeDecodeError):
        return None
    rid = msg.get("rid") if isinstance(msg, dict) else None
    return rid if isinstance(rid, str) and RID_RE.match(rid) else None


def parse_car_request(topic_car: str, payload: bytes) -> CarRequest:
    """Validate a message from recarga/v1/<region>/car/<topic_car>/request."""
    msg = _decode(payload)
    for name in ("op", "rid", "car"):
        if name not in msg:
            raise ProtocolError(MISSING_FIELD, f"missing field '{name}'", name)
        _check_field(name, msg[name], (str,))
    op = msg["op"]
    if op not in _CAR_REQUEST_FIELDS:
        raise ProtocolError(UNKNOWN_OP, f"unknown op {op!r}, expected one of {sorted(_CAR_REQUEST_FIELDS)}", "op")
    if not RID_RE.match(msg["rid"]):
        raise ProtocolError(OUT_OF_RANGE, "field 'rid' must be 1-64 of A-Z a-z 0-9 . _ : -", "rid")
    if msg["car"] != topic_car:
        raise ProtocolError(CAR_MISMATCH, f"car {msg['car']!r} in payload does not match topic car {topic_car!r}", "car")
    required = _CAR_REQUEST_FIELDS[op]
    optional = _OPTIONAL[op]
    for name in msg:
        if name not in _COMMON and name not in required and name not in optional:
            raise ProtocolError(UNKNOWN_FIELD, f"unknown field {name!r} for op {op!r}", name)
    fields: dict[str, Any] = {}
    for name, (types, lo, hi) in required.items():
        if name not in msg:
            raise ProtocolError(MISSING_FIELD, f"missing field '{name}' for op {op!r}", name)
        _check_field(name, msg[name], types, lo, hi)
        fields[name] = float(msg[name])
    for name, types in optional.items():
        if name in msg:
            _check_field(name, msg[name], types)
            fields[name] = msg[name]
    if op in ("confirm", "cancel") and "reservation" not in fields:
        raise ProtocolError(MISSING_FIELD, f"missing field 'reservation' for op {op!r}", "reservation")
    if op == "reserve":
        if fields["max_ac_kw"] <= 0 and fields["max_dc_kw"] <= 0:
            raise ProtocolError(OUT_OF_RANGE, "one of 'max_ac_kw', 'max_dc_kw' must be above 0", "max_ac_kw")
        if fields["target_soc"] <= fields["soc"]:
            raise ProtocolError(OUT_OF_RANGE, "field 'target_soc' must be above 'soc'", "target_soc")
        if "station" in fields and not ID_RE.match(fields["station"]):
            raise ProtocolError(OUT_OF_RANGE, "field 'station' is not a valid station id", "station")
    return CarRequest(op, msg["rid"], msg["car"], fields)


def parse_station_status(payload: bytes) -> list[str]:
    """recarga/v1/<region>/station/<sid>/status (retained): {"v":1,"slots":["free",...]}"""
    msg = _decode(payload)
    for name in msg:
        if name not in ("v", "slots", "seq"):
            raise ProtocolError(UNKNOWN_FIELD, f"unknown field {name!r} in station status", name)
    if "slots" not in msg:
        raise ProtocolError(MISSING_FIELD, "missing field 'slots'", "slots")
    slots = msg["slots"]
    if not isinstance(slots, list) or not 1 <= len(slots) <= 32:
        raise ProtocolError(BAD_TYPE, "field 'slots' must be a list of 1-32 slot states", "slots")
    for s in slots:
        if s not in SLOT_STATES:
            raise ProtocolError(OUT_OF_RANGE, f"slot state {s!r} not one of {SLOT_STATES}", "slots")
    if "seq" in msg:
        _check_field("seq", msg["seq"], (int,), 0, None)
    return slots


CAR_STATES = ("driving", "low", "heading", "waiting", "charging", "done")


def parse_car_telemetry(payload: bytes) -> dict[str, Any]:
    """.../car/<cid>/telemetry: {"v":1,"soc":0.42,"lat":..,"lon":..,"state":"driving",
    "reservation":"r..."|null} — what the car measures and does, for monitoring."""
    msg = _decode(payload)
    for name in msg:
        if name not in ("v", "soc", "lat", "lon", "state", "reservation"):
            raise ProtocolError(UNKNOWN_FIELD, f"unknown field {name!r} in car telemetry", name)
    for name in ("soc", "lat", "lon", "state"):
        if name not in msg:
            raise ProtocolError(MISSING_FIELD, f"missing field '{name}'", name)
    _check_field("soc", msg["soc"], _NUM, 0.0, 1.0)
    _check_field("lat", msg["lat"], _NUM, -90.0, 90.0)
    _check_field("lon", msg["lon"], _NUM, -180.0, 180.0)
    if msg["state"] not in CAR_STATES:
        raise ProtocolError(OUT_OF_RANGE, f"state {msg['state']!r} not one of {CAR_STATES}", "state")
    if msg.get("reservation") is not None:
        _check_field("reservation", msg["reservation"], (str,))
    return msg


def parse_online(payload: bytes) -> bool:
    """.../<kind>/<id>/online (retained; the Last Will publishes {"v":1,"online":false})."""
    msg = _decode(payload)
    if set(msg) != {"v", "online"} or not isinstance(msg["online"], bool):
        raise ProtocolError(BAD_TYPE, "online message must be exactly {\"v\":1,\"online\":true|false}", "online")
    return msg["online"]


def parse_station_meta(payload: bytes) -> dict[str, Any]:
    """.../station/<sid>/meta (retained): position, operator, price and slot powers."""
    msg = _decode(payload)
    allowed = {"v", "lat", "lon", "operator", "name", "price_per_kwh", "slots"}
    for name in msg:
        if name not in allowed:
            raise ProtocolError(UNKNOWN_FIELD, f"unknown field {name!r} in station meta", name)
    for name in ("lat", "lon", "slots"):
        if name not in msg:
            raise ProtocolError(MISSING_FIELD, f"missing field '{name}'", name)
    _check_field("lat", msg["lat"], _NUM, -90.0, 90.0)
    _check_field("lon", msg["lon"], _NUM, -180.0, 180.0)
    if "price_per_kwh" in msg:
        _check_field("price_per_kwh", msg["price_per_kwh"], _NUM, 0.0, 10.0)
    for name in ("operator", "name"):
        if name in msg:
            _check_field(name, msg[name], (str,))
    slots = msg["slots"]
    if not isinstance(slots, list) or not 1 <= len(slots) <= 32:
        raise ProtocolError(BAD_TYPE, "field 'slots' must be a list of 1-32 slots", "slots")
    for s in slots:
        if not isinstance(s, dict) or set(s) - {"power_kw", "dc"} or "power_kw" not in s:
            raise ProtocolError(BAD_TYPE, "each slot must be {\"power_kw\": number, \"dc\": bool}", "slots")
        _check_field("power_kw", s["power_kw"], _NUM, 0.5, 1000.0)
        if "dc" in s and not isinstance(s["dc"], bool):
            raise ProtocolError(BAD_TYPE, "slot field 'dc' must be a boolean", "slots")
    return msg


# ---------------------------------------------------------------- messages the gateway sends

def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def error_reply(rid: str | None, code: str, message: str, field: str | None = None,
                **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    err.update(extra)
    return {"v": VERSION, "rid": rid, "ok": False, "error": err}


def ok_reply(rid: str, op: str, reservation: dict[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "rid": rid, "ok": True, "op": op, "reservation": reservation}


def car_event(event: str, reservation: dict[str, Any], offer: dict[str, Any] | None = None,
              **extra: Any) -> dict[str, Any]:
    assert event in CAR_EVENTS
    msg: dict[str, Any] = {"v": VERSION, "event": event, "reservation": reservation}
    if offer is not None:
        msg["offer"] = offer
    msg.update(extra)
    return msg


def station_cmd(cmd: str, slot: int, reservation: str | None = None, until: float | None = None) -> dict[str, Any]:
    assert cmd in STATION_CMDS
    msg: dict[str, Any] = {"v": VERSION, "cmd": cmd, "slot": slot}
    if reservation is not None:
        msg["reservation"] = reservation
    if until is not None:
        msg["until"] = round(until)
    return msg


def online_message(online: bool) -> bytes:
    return encode({"v": VERSION, "online": online})


def station_status(slots: list[str], seq: int | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": VERSION, "slots": slots}
    if seq is not None:
        msg["seq"] = seq
    return msg


def reserve_request(rid: str, car: str, *, lat: float, lon: float, soc: float, battery_kwh: float,
                    consumption_kwh_100km: float, max_ac_kw: float, max_dc_kw: float,
                    target_soc: float, station: str | None = None) -> dict[str, Any]:
    """Builder used by simulated cars, the demo and tests (firmware builds the same shape)."""
    msg: dict[str, Any] = {
        "v": VERSION, "op": "reserve", "rid": rid, "car": car, "lat": lat, "lon": lon, "soc": soc,
        "battery_kwh": battery_kwh, "consumption_kwh_100km": consumption_kwh_100km,
        "max_ac_kw": max_ac_kw, "max_dc_kw": max_dc_kw, "target_soc": target_soc,
    }
    if station is not None:
        msg["station"] = station
    return msg


def reservation_request(op: str, rid: str, car: str, reservation: str) -> dict[str, Any]:
    assert op in ("confirm", "cancel")
    return {"v": VERSION, "op": op, "rid": rid, "car": car, "reservation": reservation}

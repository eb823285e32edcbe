"""The Recarga wire protocol, v1: the one home of topic names and message validation.

docs/protocol.md is the human-readable contract; this module is its executable form.
Nothing else in the CPython code spells a topic string or checks a message shape.
"""
from __future__ import annotations

import functools
import hashlib
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


# Topic strings are asked for on every message: built (and their ids checked) once each.
_TOPICS_CACHED = 16384


@functools.lru_cache(maxsize=_TOPICS_CACHED)
def station_topic(region: str, sid: str, leaf: str) -> str:
    """leaf: status | meta | online | cmd"""
    assert leaf in ("status", "meta", "online", "cmd")
    return f"{region_root(region)}/station/{_check_id('station', sid)}/{leaf}"


@functools.lru_cache(maxsize=_TOPICS_CACHED)
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
# every field an op may carry, and how _numbers names the op in its errors
_ALLOWED = {op: frozenset((*_COMMON, *required, *_OPTIONAL[op])) for op, required in _CAR_REQUEST_FIELDS.items()}
_FOR_OP = {op: f" for op {op!r}" for op in _CAR_REQUEST_FIELDS}


@dataclass(frozen=True, slots=True)
class CarRequest:
    op: str  # reserve | confirm | cancel
    rid: str
    car: str
    fields: dict[str, Any]


_scan_json = json.JSONDecoder().scan_once  # the C scanner that json.loads ends in


def _loads(payload: bytes) -> Any:
    """json.loads(payload). A UTF-8 document with nothing around it (what devices send) goes
    straight to the scanner, skipping json.loads' layers; anything else (other encodings,
    whitespace, every error) through json.loads itself, so that it reads the same."""
    if type(payload) is bytes:
        try:
            text = payload.decode()
            value, end = _scan_json(text, 0)
            if end == len(text):
                return value
        except (ValueError, StopIteration):
            pass
    return json.loads(payload)


def _decode(payload: bytes, limit: int = MAX_PAYLOAD) -> dict[str, Any]:
    if len(payload) > limit:
        raise ProtocolError(TOO_LARGE, f"payload is {len(payload)} bytes, limit {limit}")
    try:
        msg = _loads(payload)
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


def _numbers(msg: dict[str, Any], spec: dict[str, tuple[tuple[type, ...], float | None, float | None]],
             where: str = "") -> dict[str, float]:
    """The numeric fields of `spec`, all required, type- and range-checked, as floats."""
    out: dict[str, float] = {}
    for name, (types, lo, hi) in spec.items():
        if name not in msg:
            raise ProtocolError(MISSING_FIELD, f"missing field '{name}'{where}", name)
        value = msg[name]
        t = type(value)
        # the common case without the general checks: a JSON number within (finite) bounds
        # passes every one of them (NaN and infinities fail lo <= value <= hi)
        if not (types is _NUM and (t is float or t is int) and lo is not None and hi is not None
                and lo <= value <= hi):
            _check_field(name, value, types, lo, hi)
            if types == (int,):
                _check_int(name, value, lo, hi)
        out[name] = float(value)
    return out


def _check_int(name: str, value: Any, lo: float | None, hi: float | None) -> int:
    """An integer field with its range (_check_field checks the range of numbers only)."""
    _check_field(name, value, (int,))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ProtocolError(OUT_OF_RANGE, f"field '{name}'={value} outside {lo}..{hi}", name)
    return value


def _check_need(need: dict[str, Any]) -> None:
    """The rules across a car's need fields (a reserve request's, an overflow request's)."""
    if need["max_ac_kw"] <= 0 and need["max_dc_kw"] <= 0:
        raise ProtocolError(OUT_OF_RANGE, "one of 'max_ac_kw', 'max_dc_kw' must be above 0", "max_ac_kw")
    if need["target_soc"] <= need["soc"]:
        raise ProtocolError(OUT_OF_RANGE, "field 'target_soc' must be above 'soc'", "target_soc")


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
        if type(msg[name]) is not str:
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
    allowed = _ALLOWED[op]
    if not allowed.issuperset(msg):
        for name in msg:
            if name not in allowed:
                raise ProtocolError(UNKNOWN_FIELD, f"unknown field {name!r} for op {op!r}", name)
    fields: dict[str, Any] = _numbers(msg, required, _FOR_OP[op])
    for name, types in optional.items():
        if name in msg:
            _check_field(name, msg[name], types)
            fields[name] = msg[name]
    if op in ("confirm", "cancel") and "reservation" not in fields:
        raise ProtocolError(MISSING_FIELD, f"missing field 'reservation' for op {op!r}", "reservation")
    if op == "reserve":
        _check_need(fields)
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


# ================================================================ across regions (central)
#
# docs/protocol.md, "Across regions". Every region has a subtree recarga/v1/<region>/central/
# that its broker's Mosquitto bridge carries to and from the central broker under the same
# name, so the central broker's ACL can confine each region's bridge user to its own subtree.
# Central's own topics are under recarga/v1/central/, so no region may be called "central".

CENTRAL = "central"
CENTRAL_ROOT = f"{ROOT}/{CENTRAL}"
SHARE_GROUP = "central"  # $share/<group>/...: central instances split the work

MAX_CENTRAL_PAYLOAD = 4096  # bytes, every cross-region message but the summary
MAX_SUMMARY_PAYLOAD = 48 * 1024  # bytes per summary shard; brokers accept 64 KiB packets
SUMMARY_SHARD_STATIONS = 400  # stations per shard to start from (about 25 KiB of JSON)
MAX_SUMMARY_SHARDS = 256

OVERFLOW_UNAVAILABLE = "overflow_unavailable"  # central or the bridge cannot be reached/used
DEADLINE_PASSED = "deadline_passed"  # no answer from central before the request's deadline
REGION_MISMATCH = "region_mismatch"  # a region field differs from the topic's region
CENTRAL_ERROR_CODES = (OVERFLOW_UNAVAILABLE, DEADLINE_PASSED, REGION_MISMATCH, NO_CAPACITY)

# leaf below recarga/v1/<region>/central/ -> (direction on the region's bridge, retained)
CENTRAL_LEAVES: dict[str, tuple[str, bool]] = {
    "summary": ("out", True),  # summary/<shard>, gateway -> central
    "overflow/request": ("out", False),  # origin gateway -> central
    "overflow/answer": ("in", False),  # central -> origin gateway
    "hold/request": ("in", False),  # central -> target gateway (hold, release)
    "hold/answer": ("out", False),  # target gateway -> central
    "hold/event": ("out", False),  # target gateway -> central: what became of a hold
}
LINK_LEAF = "link"  # Mosquitto's bridge notification on the region broker: "1" up, "0" down
HOLD_EVENTS = ("confirmed", "checked_in", "completed", "expired", "cancelled", "faulted")

_NEED_FIELDS = _CAR_REQUEST_FIELDS["reserve"]
_TIME = (_NUM, 0.0, 4102444800.0)  # Unix seconds, up to 2100


def check_region(region: str) -> str:
    """A region id usable across regions: an id, and not the reserved name "central"."""
    _check_id("region", region)
    if region == CENTRAL:
        raise ValueError(f"region id {CENTRAL!r} is reserved for central's own topics")
    return region


def _subtree(segment: str, leaf: str) -> str:
    """recarga/v1/<segment>/central/<leaf>; segment is a checked region id or "+"."""
    return f"{ROOT}/{segment}/{CENTRAL}/{leaf}"


def central_topic(region: str, leaf: str) -> str:
    """recarga/v1/<region>/central/<leaf>; leaf: one of CENTRAL_LEAVES but summary, or link."""
    assert leaf == LINK_LEAF or (leaf in CENTRAL_LEAVES and leaf != "summary"), leaf
    return _subtree(check_region(region), leaf)


def summary_topic(region: str, shard: int) -> str:
    assert 0 <= shard < MAX_SUMMARY_SHARDS
    return _subtree(check_region(region), f"summary/{shard}")


def central_filter(leaf: str) -> str:
    """Every region's `leaf` (summary: every shard), as central subscribes to it."""
    assert leaf in CENTRAL_LEAVES
    return _subtree("+", leaf + ("/+" if leaf == "summary" else ""))


def shared(topic_filter: str, group: str = SHARE_GROUP) -> str:
    """A shared subscription: the broker gives each message to one member of the group."""
    return f"$share/{_check_id('share group', group)}/{topic_filter}"


def central_online_topic(instance: str) -> str:
    """A central instance's retained online flag (its Last Will sets it false)."""
    return f"{CENTRAL_ROOT}/online/{_check_id('instance', instance)}"


def central_subscriptions() -> list[str]:
    """What every central instance subscribes to (QoS 1): requests, answers and events
    shared among the instances, summaries (retained) to each instance whole."""
    return [shared(central_filter(leaf)) for leaf in ("overflow/request", "hold/answer", "hold/event")] + \
        [central_filter("summary")]


def gateway_central_subscriptions(region: str) -> list[str]:
    """What a gateway subscribes to for overflow (QoS 1), besides gateway_subscriptions."""
    return [central_topic(region, "overflow/answer"), central_topic(region, "hold/request"),
            central_topic(region, LINK_LEAF)]


@dataclass(frozen=True, slots=True)
class CentralRef:
    region: str
    leaf: str  # a key of CENTRAL_LEAVES
    shard: int | None = None  # summary only


def parse_central_topic(topic: str) -> CentralRef | None:
    """recarga/v1/<region>/central/<leaf> -> (region, leaf, shard); None if it is none of ours."""
    parts = topic.split("/")
    if len(parts) not in (6, 7) or "/".join(parts[:2]) != ROOT or parts[3] != CENTRAL:
        return None
    region = parts[2]
    if not ID_RE.match(region) or region == CENTRAL:
        return None
    rest = "/".join(parts[4:])
    if parts[4] == "summary" and len(parts) == 6 and parts[5].isdigit() and parts[5] == str(int(parts[5])):
        shard = int(parts[5])
        return CentralRef(region, "summary", shard) if shard < MAX_SUMMARY_SHARDS else None
    return CentralRef(region, rest) if rest in CENTRAL_LEAVES and rest != "summary" else None


def bridge_topics(region: str) -> list[tuple[str, str]]:
    """(topic pattern, direction) for the region broker's bridge to central: exactly the
    region's own central subtree, each leaf one way."""
    seg = check_region(region)
    return [(_subtree(seg, leaf + ("/#" if leaf == "summary" else "")), direction)
            for leaf, (direction, _) in CENTRAL_LEAVES.items()]


def _central_rules(segment: str, writes: str) -> list[tuple[str, str]]:
    """ACL lines over the central subtree of `segment`: write the leaves flowing `writes`
    ("out": region to central, "in": central to region), read the others."""
    return [("write" if direction == writes else "read", _subtree(segment, leaf + ("/+" if leaf == "summary" else "")))
            for leaf, (direction, _) in CENTRAL_LEAVES.items()]


def acl_bridge(region: str) -> list[tuple[str, str]]:
    """Central broker: the region's bridge user writes what flows out of the region and reads
    what flows in, in its own region's subtree only."""
    return _central_rules(check_region(region), "out")


def acl_central() -> list[tuple[str, str]]:
    """Central broker: the central service user, for every region ("+")."""
    return _central_rules("+", "in") + [("readwrite", f"{CENTRAL_ROOT}/online/+")]


def acl_gateway_central(region: str) -> list[tuple[str, str]]:
    """Region broker: what the gateway user needs besides acl_gateway to take part in overflow
    (the same as the bridge user's on central, plus the bridge's link notification)."""
    return acl_bridge(region) + [("read", central_topic(region, LINK_LEAF))]


# ---------------------------------------------------------------- cross-region messages

# Overflow ids: "ovf:" + 16 hex digits, made by the origin gateway from (origin, car, rid) so a
# redelivered car request gets the same one. A target gateway holds the slot under the car's
# id with the xid as request id (car rids from firmware never contain ':').
XID_PREFIX = "ovf:"
XID_RE = re.compile(r"^ovf:[0-9a-f]{16}$")


def overflow_id(origin: str, car: str, rid: str) -> str:
    return XID_PREFIX + hashlib.blake2s(f"{origin}/{car}/{rid}".encode(), digest_size=8).hexdigest()


def past_deadline(deadline: float, now: float) -> bool:
    """A cross-region message past its deadline is ignored by whoever receives it."""
    return now > deadline


def _central_decode(payload: bytes, allowed: set[str], required: tuple[str, ...], what: str,
                    limit: int = MAX_CENTRAL_PAYLOAD) -> dict[str, Any]:
    return _check_fields(_decode(payload, limit), allowed, required, what)


def _check_fields(obj: dict[str, Any], allowed: set[str], required: tuple[str, ...], what: str) -> dict[str, Any]:
    for name in obj:
        if name not in allowed:
            raise ProtocolError(UNKNOWN_FIELD, f"unknown field {name!r} in {what}", name)
    for name in required:
        if name not in obj:
            raise ProtocolError(MISSING_FIELD, f"missing field '{name}' in {what}", name)
    return obj


def _check_str(msg: dict[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    _check_field(name, msg[name], (str,))
    if not pattern.match(msg[name]):
        raise ProtocolError(OUT_OF_RANGE, f"field '{name}' is not a valid {what}", name)
    return msg[name]


def _check_region_field(msg: dict[str, Any], name: str, topic_region: str | None) -> str:
    region = _check_str(msg, name, ID_RE, "region id")
    if topic_region is not None and region != topic_region:
        raise ProtocolError(REGION_MISMATCH, f"{name} {region!r} does not match the topic's region "
                                             f"{topic_region!r}", name)
    return region


def _check_need_object(msg: dict[str, Any]) -> dict[str, float]:
    need = msg["need"]
    if not isinstance(need, dict):
        raise ProtocolError(BAD_TYPE, "field 'need' must be an object", "need")
    _check_fields(need, set(_NEED_FIELDS), (), "'need'")
    fields = _numbers(need, _NEED_FIELDS, " in 'need'")
    _check_need(fields)
    return fields


def _check_error(msg: dict[str, Any]) -> dict[str, Any]:
    err = msg["error"]
    if not isinstance(err, dict) or not isinstance(err.get("code"), str) \
            or not isinstance(err.get("message"), str) or set(err) - {"code", "message", "earliest_free"}:
        raise ProtocolError(BAD_TYPE, "field 'error' must be {\"code\": str, \"message\": str}", "error")
    if err["code"] not in ERROR_CODES + CENTRAL_ERROR_CODES:
        raise ProtocolError(OUT_OF_RANGE, f"unknown error code {err['code']!r}", "error")
    return err


# The reservation object (docs/protocol.md) as a hold answer carries it.
_RESERVATION_NUMBERS = {
    "slot": ((int,), 1, 32), "distance_km": (_NUM, 0.0, 20000.0), "eta": _TIME, "wait_min": (_NUM, 0.0, None),
    "charge_min": (_NUM, 0.0, None), "energy_kwh": (_NUM, 0.0, None), "power_kw": (_NUM, 0.0, None),
    "price_eur": (_NUM, 0.0, None), "hold_until": _TIME,
}


def _check_reservation(msg: dict[str, Any]) -> dict[str, Any]:
    r = msg["reservation"]
    if not isinstance(r, dict):
        raise ProtocolError(BAD_TYPE, "field 'reservation' must be an object", "reservation")
    _check_fields(r, set(_RESERVATION_NUMBERS) | {"id", "station", "state"}, ("id", "station", "state"),
                  "'reservation'")
    _check_str(r, "id", ID_RE, "reservation id")
    _check_str(r, "station", ID_RE, "station id")
    if r["state"] != "held":
        raise ProtocolError(OUT_OF_RANGE, f"a hold's reservation must be 'held', not {r['state']!r}", "state")
    _numbers(r, _RESERVATION_NUMBERS, " in 'reservation'")
    return r


@dataclass(frozen=True, slots=True)
class OverflowRequest:
    xid: str
    origin: str
    car: str
    deadline: float
    need: dict[str, float]
    beat_s: float | None  # the local offer's drive + wait + charge seconds; None: nothing local


@dataclass(frozen=True, slots=True)
class OverflowAbandon:
    xid: str
    origin: str


def parse_overflow_request(topic_region: str, payload: bytes) -> OverflowRequest | OverflowAbandon:
    """recarga/v1/<origin>/central/overflow/request: op "overflow" (find a slot elsewhere) or
    "abandon" (the origin no longer wants the answer: release any hold made for it)."""
    msg = _central_decode(payload, {"v", "op", "xid", "origin", "car", "deadline", "need", "beat_s"},
                          ("op", "xid", "origin"), "overflow request")
    op = msg["op"]
    if op not in ("overflow", "abandon"):
        raise ProtocolError(UNKNOWN_OP, f"unknown op {op!r}, expected 'overflow' or 'abandon'", "op")
    xid = _check_str(msg, "xid", XID_RE, "overflow id")
    origin = _check_region_field(msg, "origin", topic_region)
    if op == "abandon":
        extra = set(msg) - {"v", "op", "xid", "origin"}
        if extra:
            raise ProtocolError(UNKNOWN_FIELD, f"unknown field {sorted(extra)[0]!r} for op 'abandon'", sorted(extra)[0])
        return OverflowAbandon(xid, origin)
    for name in ("car", "deadline", "need"):
        if name not in msg:
            raise ProtocolError(MISSING_FIELD, f"missing field '{name}' in overflow request", name)
    car = _check_str(msg, "car", ID_RE, "car id")
    deadline = _numbers(msg, {"deadline": _TIME})["deadline"]
    beat = msg.get("beat_s")
    if beat is not None:
        _check_field("beat_s", beat, _NUM, 0.0, None)
    return OverflowRequest(xid, origin, car, deadline, _check_need_object(msg),
                           None if beat is None else float(beat))


@dataclass(frozen=True, slots=True)
class HoldRequest:
    xid: str
    origin: str
    region: str  # the target region (the topic's)
    car: str
    station: str | None  # central's pick from the summaries; None: the region's best
    deadline: float  # the answer must reach central by then
    confirm_by: float  # the hold lasts until then unless the car confirms
    need: dict[str, float]


@dataclass(frozen=True, slots=True)
class HoldRelease:
    xid: str
    region: str
    car: str
    reservation: str


def parse_hold_request(topic_region: str, payload: bytes) -> HoldRequest | HoldRelease:
    """recarga/v1/<target>/central/hold/request: op "hold" or "release"."""
    msg = _central_decode(payload, {"v", "op", "xid", "origin", "region", "car", "station", "deadline",
                                    "confirm_by", "need", "reservation"},
                          ("op", "xid", "region", "car"), "hold request")
    op = msg["op"]
    if op not in ("hold", "release"):
        raise ProtocolError(UNKNOWN_OP, f"unknown op {op!r}, expected 'hold' or 'release'", "op")
    xid = _check_str(msg, "xid", XID_RE, "overflow id")
    region = _check_region_field(msg, "region", topic_region)
    car = _check_str(msg, "car", ID_RE, "car id")
    fields = {"release": ("reservation",), "hold": ("origin", "deadline", "confirm_by", "need")}[op]
    optional = {"hold": ("station",), "release": ()}[op]
    for name in msg:
        if name not in ("v", "op", "xid", "region", "car") + fields + optional:
            raise ProtocolError(UNKNOWN_FIELD, f"unknown field {name!r} for op {op!r}", name)
    for name in fields:
        if name not in msg:
            raise ProtocolError(MISSING_FIELD, f"missing field '{name}' for op {op!r}", name)
    if op == "release":
        return HoldRelease(xid, region, car, _check_str(msg, "reservation", ID_RE, "reservation id"))
    origin = _check_region_field(msg, "origin", None)
    station = _check_str(msg, "station", ID_RE, "station id") if msg.get("station") is not None else None
    times = _numbers(msg, {"deadline": _TIME, "confirm_by": _TIME})
    if times["confirm_by"] < times["deadline"]:
        raise ProtocolError(OUT_OF_RANGE, "field 'confirm_by' must not be before 'deadline'", "confirm_by")
    return HoldRequest(xid, origin, region, car, station, times["deadline"], times["confirm_by"],
                       _check_need_object(msg))


@dataclass(frozen=True, slots=True)
class HoldAnswer:
    xid: str
    region: str  # the answering (target) region
    car: str
    deadline: float  # echoed from the hold request
    reservation: dict[str, Any] | None  # ok: the held reservation (state "held")
    error: dict[str, Any] | None  # not ok: {"code", "message"}

    @property
    def ok(self) -> bool:
        return self.reservation is not None


def _ok_or_error(msg: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    if "ok" not in msg:
        raise ProtocolError(MISSING_FIELD, "missing field 'ok'", "ok")
    if not isinstance(msg["ok"], bool):
        raise ProtocolError(BAD_TYPE, "field 'ok' must be a boolean", "ok")
    need, other = ("reservation", "error") if msg["ok"] else ("error", "reservation")
    if need not in msg:
        raise ProtocolError(MISSING_FIELD, f"missing field '{need}'", need)
    if other in msg:
        raise ProtocolError(UNKNOWN_FIELD, f"field {other!r} with ok={msg['ok']}", other)
    return (_check_reservation(msg), None) if msg["ok"] else (None, _check_error(msg))


def parse_hold_answer(topic_region: str, payload: bytes) -> HoldAnswer:
    """recarga/v1/<target>/central/hold/answer."""
    msg = _central_decode(payload, {"v", "xid", "region", "car", "deadline", "ok", "reservation", "error"},
                          ("xid", "region", "car", "deadline"), "hold answer")
    xid = _check_str(msg, "xid", XID_RE, "overflow id")
    region = _check_region_field(msg, "region", topic_region)
    car = _check_str(msg, "car", ID_RE, "car id")
    deadline = _numbers(msg, {"deadline": _TIME})["deadline"]
    reservation, error = _ok_or_error(msg)
    return HoldAnswer(xid, region, car, deadline, reservation, error)


@dataclass(frozen=True, slots=True)
class HoldEvent:
    xid: str
    region: str
    event: str  # one of HOLD_EVENTS
    reservation: str


def parse_hold_event(topic_region: str, payload: bytes) -> HoldEvent:
    """recarga/v1/<target>/central/hold/event: what became of an overflow hold."""
    msg = _central_decode(payload, {"v", "xid", "region", "event", "reservation"},
                          ("xid", "region", "event", "reservation"), "hold event")
    xid = _check_str(msg, "xid", XID_RE, "overflow id")
    region = _check_region_field(msg, "region", topic_region)
    if msg["event"] not in HOLD_EVENTS:
        raise ProtocolError(OUT_OF_RANGE, f"event {msg['event']!r} not one of {HOLD_EVENTS}", "event")
    return HoldEvent(xid, region, msg["event"], _check_str(msg, "reservation", ID_RE, "reservation id"))


@dataclass(frozen=True, slots=True)
class OverflowAnswer:
    xid: str
    origin: str
    deadline: float
    region: str | None  # ok: the region holding the slot
    broker: dict[str, Any] | None  # ok: {"host", "port"} of that region's broker, for cars
    reservation: dict[str, Any] | None
    error: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.reservation is not None


_HOST_RE = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")  # a DNS name or an IPv4/IPv6 address


def parse_overflow_answer(topic_region: str, payload: bytes) -> OverflowAnswer:
    """recarga/v1/<origin>/central/overflow/answer: central's answer to the origin gateway."""
    msg = _central_decode(payload, {"v", "xid", "origin", "deadline", "ok", "region", "broker", "reservation",
                                    "error"}, ("xid", "origin", "deadline"), "overflow answer")
    xid = _check_str(msg, "xid", XID_RE, "overflow id")
    origin = _check_region_field(msg, "origin", topic_region)
    deadline = _numbers(msg, {"deadline": _TIME})["deadline"]
    reservation, error = _ok_or_error(msg)
    region = broker = None
    if reservation is not None:
        for name in ("region", "broker"):
            if name not in msg:
                raise ProtocolError(MISSING_FIELD, f"missing field '{name}'", name)
        region = _check_region_field(msg, "region", None)
        broker = msg["broker"]
        if not isinstance(broker, dict) or set(broker) != {"host", "port"} \
                or not isinstance(broker["host"], str) or not _HOST_RE.match(broker["host"]):
            raise ProtocolError(BAD_TYPE, "field 'broker' must be {\"host\": str, \"port\": int}", "broker")
        _check_int("port", broker["port"], 1, 65535)
    elif "region" in msg or "broker" in msg:
        raise ProtocolError(UNKNOWN_FIELD, "'region' and 'broker' belong to an ok answer only", "region")
    return OverflowAnswer(xid, origin, deadline, region, broker, reservation, error)


def parse_link(payload: bytes) -> bool:
    """recarga/v1/<region>/central/link: Mosquitto's bridge notification, b"1" or b"0"."""
    if payload not in (b"0", b"1"):
        raise ProtocolError(BAD_TYPE, f"bridge notification must be 0 or 1, got {payload[:16]!r}")
    return payload == b"1"


# ---------------------------------------------------------------- capacity summary

@dataclass(frozen=True, slots=True)
class SlotGroup:
    """The usable slots of one power at a station."""

    power_kw: float
    dc: bool
    usable: int  # in service, station online
    free: int  # free now and not reserved
    next_free: float | None  # Unix s when the first busy one is expected free (None: all free)


@dataclass(frozen=True, slots=True)
class SummaryStation:
    id: str
    lat: float
    lon: float
    price_per_kwh: float
    groups: tuple[SlotGroup, ...]


@dataclass(frozen=True, slots=True)
class Summary:
    region: str
    shard: int
    of: int  # how many shards the region's summary has now
    at: float  # when the gateway built it (freshness)
    stations: tuple[SummaryStation, ...]


def summary_shard(station: str, of: int) -> int:
    """A station's shard: a stable hash, so a change republishes only its own shard."""
    return int.from_bytes(hashlib.blake2s(station.encode(), digest_size=4).digest(), "big") % of


def _station_entry(s: SummaryStation) -> list[Any]:
    return [s.id, round(s.lat, 5), round(s.lon, 5), round(s.price_per_kwh, 3),
            [[_compact(g.power_kw), int(g.dc), g.usable, g.free,
              None if g.next_free is None else round(g.next_free)] for g in s.groups]]


def _compact(x: float) -> float | int:
    return int(x) if x == int(x) else round(x, 1)


def summary_messages(region: str, stations: list[SummaryStation], at: float) -> list[dict[str, Any]]:
    """The region's summary as shard messages (shard k is published retained on
    summary_topic(region, k)). Shards: one per SUMMARY_SHARD_STATIONS stations, doubled
    until every shard fits MAX_SUMMARY_PAYLOAD."""
    check_region(region)
    of = max(1, math.ceil(len(stations) / SUMMARY_SHARD_STATIONS))
    while True:
        shards: list[list[list[Any]]] = [[] for _ in range(of)]
        for s in sorted(stations, key=lambda s: s.id):
            shards[summary_shard(s.id, of)].append(_station_entry(s))
        msgs = [{"v": VERSION, "region": region, "shard": k, "of": of, "at": round(at), "stations": entries}
                for k, entries in enumerate(shards)]
        if all(len(encode(m)) <= MAX_SUMMARY_PAYLOAD for m in msgs):
            return msgs
        if of * 2 > MAX_SUMMARY_SHARDS:
            raise ValueError(f"region {region}: {len(stations)} stations do not fit "
                             f"{MAX_SUMMARY_SHARDS} summary shards")
        of *= 2


def parse_summary(topic_region: str, topic_shard: int, payload: bytes) -> Summary:
    """recarga/v1/<region>/central/summary/<shard> (retained)."""
    msg = _central_decode(payload, {"v", "region", "shard", "of", "at", "stations"},
                          ("region", "shard", "of", "at", "stations"), "summary", MAX_SUMMARY_PAYLOAD)
    region = _check_region_field(msg, "region", topic_region)
    _check_int("of", msg["of"], 1, MAX_SUMMARY_SHARDS)
    _check_int("shard", msg["shard"], 0, msg["of"] - 1)
    if msg["shard"] != topic_shard:
        raise ProtocolError(OUT_OF_RANGE, f"shard {msg['shard']} does not match the topic's {topic_shard}", "shard")
    at = _numbers(msg, {"at": _TIME})["at"]
    if not isinstance(msg["stations"], list):
        raise ProtocolError(BAD_TYPE, "field 'stations' must be a list", "stations")
    stations = tuple(_summary_station(e) for e in msg["stations"])
    return Summary(region, msg["shard"], msg["of"], at, stations)


def _summary_station(e: Any) -> SummaryStation:
    bad = ProtocolError(BAD_TYPE, "a summary station is [id, lat, lon, price_per_kwh, "
                                  "[[power_kw, dc, usable, free, next_free], ...]]", "stations")
    if not isinstance(e, list) or len(e) != 5 or not isinstance(e[0], str) or not isinstance(e[4], list) \
            or not 1 <= len(e[4]) <= 32:
        raise bad
    sid, lat, lon, price, groups = e
    if not ID_RE.match(sid):
        raise ProtocolError(OUT_OF_RANGE, f"summary station id {sid!r} is not a valid id", "stations")
    _check_field("lat", lat, _NUM, -90.0, 90.0)
    _check_field("lon", lon, _NUM, -180.0, 180.0)
    _check_field("price_per_kwh", price, _NUM, 0.0, 10.0)
    out = []
    for g in groups:
        if not isinstance(g, list) or len(g) != 5 or g[1] not in (0, 1) or isinstance(g[1], bool):
            raise bad
        kw, dc, usable, free, nxt = g
        _check_field("power_kw", kw, _NUM, 0.5, 1000.0)
        _check_int("usable", usable, 1, 32)
        _check_int("free", free, 0, usable)
        if nxt is not None:
            _check_field("next_free", nxt, *_TIME)
        elif free < usable:
            raise ProtocolError(OUT_OF_RANGE, "next_free may be null only when every slot is free", "stations")
        out.append(SlotGroup(float(kw), bool(dc), usable, free, None if nxt is None else float(nxt)))
    if sum(g.usable for g in out) > 32:
        raise ProtocolError(OUT_OF_RANGE, f"summary station {sid!r} has more than 32 slots", "stations")
    return SummaryStation(sid, float(lat), float(lon), float(price), tuple(out))


# ---------------------------------------------------------------- builders

def _need(need: dict[str, float]) -> dict[str, float]:
    return {k: need[k] for k in _NEED_FIELDS}


def overflow_request(xid: str, origin: str, car: str, deadline: float, need: dict[str, float],
                     beat_s: float | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": VERSION, "op": "overflow", "xid": xid, "origin": origin, "car": car,
                           "deadline": round(deadline, 3), "need": _need(need)}
    if beat_s is not None:
        msg["beat_s"] = round(beat_s, 1)
    return msg


def overflow_abandon(xid: str, origin: str) -> dict[str, Any]:
    return {"v": VERSION, "op": "abandon", "xid": xid, "origin": origin}


def hold_request(xid: str, origin: str, region: str, car: str, station: str | None, deadline: float,
                 confirm_by: float, need: dict[str, float]) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": VERSION, "op": "hold", "xid": xid, "origin": origin, "region": region,
                           "car": car, "deadline": round(deadline, 3), "confirm_by": round(confirm_by),
                           "need": _need(need)}
    if station is not None:
        msg["station"] = station
    return msg


def hold_release(xid: str, region: str, car: str, reservation: str) -> dict[str, Any]:
    return {"v": VERSION, "op": "release", "xid": xid, "region": region, "car": car,
            "reservation": reservation}


def hold_answer(xid: str, region: str, car: str, deadline: float, reservation: dict[str, Any] | None = None,
                code: str | None = None, message: str = "") -> dict[str, Any]:
    """ok with the held reservation (its view), or an error `code` with `message`."""
    msg: dict[str, Any] = {"v": VERSION, "xid": xid, "region": region, "car": car, "deadline": round(deadline, 3)}
    return _with_outcome(msg, reservation, code, message)


def _with_outcome(msg: dict[str, Any], reservation: dict[str, Any] | None, code: str | None,
                  message: str) -> dict[str, Any]:
    assert (reservation is None) != (code is None)
    if reservation is not None:
        msg.update(ok=True, reservation=reservation)
    else:
        msg.update(ok=False, error={"code": code, "message": message})
    return msg


def hold_event(xid: str, region: str, event: str, reservation: str) -> dict[str, Any]:
    assert event in HOLD_EVENTS
    return {"v": VERSION, "xid": xid, "region": region, "event": event, "reservation": reservation}


def overflow_answer(xid: str, origin: str, deadline: float, *, region: str | None = None,
                    host: str | None = None, port: int | None = None,
                    reservation: dict[str, Any] | None = None, code: str | None = None,
                    message: str = "") -> dict[str, Any]:
    """ok (region, its broker for cars, the held reservation) or an error `code`."""
    msg: dict[str, Any] = {"v": VERSION, "xid": xid, "origin": origin, "deadline": round(deadline, 3)}
    if reservation is not None:
        msg.update(region=region, broker={"host": host, "port": port})
    return _with_outcome(msg, reservation, code, message)


def overflow_reply(rid: str, reservation: dict[str, Any], region: str, broker: dict[str, Any]) -> dict[str, Any]:
    """The origin gateway's reply to the car: a slot held in another region. The car hands
    over to `broker` (region `region`) and confirms the reservation there."""
    msg = ok_reply(rid, "reserve", reservation)
    msg.update(region=region, broker=dict(broker))
    return msg


def with_overflow_note(reply: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    """The local reply to the car, saying why overflow did not help (OVERFLOW_UNAVAILABLE,
    DEADLINE_PASSED or NO_CAPACITY)."""
    assert code in CENTRAL_ERROR_CODES
    return {**reply, "overflow": {"code": code, "message": message}}

"""Gateways <-> central, across regions: the topics under recarga/v1/<region>/central/ and
central's own, overflow and hold requests, their answers and events, the capacity summary,
and what the origin gateway tells the car about an overflow.

docs/protocol.md, "Across regions", is the human-readable form. Every region has a subtree
recarga/v1/<region>/central/ that its broker's Mosquitto bridge carries to and from the
central broker under the same name, so the central broker's ACL can confine each region's
bridge user to its own subtree. Central's own topics are under recarga/v1/central/, so no
region may be called "central".
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

CENTRAL = "central"
CENTRAL_ROOT = f"{W.ROOT}/{CENTRAL}"
SHARE_GROUP = "central"  # $share/<group>/...: central instances split the work

MAX_CENTRAL_PAYLOAD = 4096  # bytes, every cross-region message but the summary
MAX_SUMMARY_PAYLOAD = 48 * 1024  # bytes per summary shard; brokers accept 64 KiB packets
SUMMARY_SHARD_STATIONS = 400  # stations per shard to start from (about 25 KiB of JSON)
MAX_SUMMARY_SHARDS = 256

OVERFLOW_UNAVAILABLE = "overflow_unavailable"  # central or the bridge cannot be reached/used
DEADLINE_PASSED = "deadline_passed"  # no answer from central before the request's deadline
REGION_MISMATCH = "region_mismatch"  # a region field differs from the topic's region
CENTRAL_ERROR_CODES = (OVERFLOW_UNAVAILABLE, DEADLINE_PASSED, REGION_MISMATCH, W.NO_CAPACITY)

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

_TIME = (W.NUMBER, 0.0, 4102444800.0)  # Unix seconds, up to 2100


# ---------------------------------------------------------------- topics

def check_region(region: str) -> str:
    """A region id usable across regions: an id, and not the reserved name "central"."""
    W.check_id("region", region)
    if region == CENTRAL:
        raise ValueError(f"region id {CENTRAL!r} is reserved for central's own topics")
    return region


def subtree(segment: str, leaf: str) -> str:
    """recarga/v1/<segment>/central/<leaf>; segment is a checked region id or "+"."""
    return f"{W.ROOT}/{segment}/{CENTRAL}/{leaf}"


def central_topic(region: str, leaf: str) -> str:
    """recarga/v1/<region>/central/<leaf>; leaf: one of CENTRAL_LEAVES but summary, or link."""
    assert leaf == LINK_LEAF or (leaf in CENTRAL_LEAVES and leaf != "summary"), leaf
    return subtree(check_region(region), leaf)


def summary_topic(region: str, shard: int) -> str:
    assert 0 <= shard < MAX_SUMMARY_SHARDS
    return subtree(check_region(region), f"summary/{shard}")


def central_filter(leaf: str) -> str:
    """Every region's `leaf` (summary: every shard), as central subscribes to it."""
    assert leaf in CENTRAL_LEAVES
    return subtree("+", leaf + ("/+" if leaf == "summary" else ""))


def shared(topic_filter: str, group: str = SHARE_GROUP) -> str:
    """A shared subscription: the broker gives each message to one member of the group."""
    return f"$share/{W.check_id('share group', group)}/{topic_filter}"


def central_online_topic(instance: str) -> str:
    """A central instance's retained online flag (its Last Will sets it false)."""
    return f"{CENTRAL_ROOT}/online/{W.check_id('instance', instance)}"


def central_subscriptions() -> list[str]:
    """What every central instance subscribes to (QoS 1): requests, answers and events
    shared among the instances, summaries (retained) to each instance whole."""
    return [shared(central_filter(leaf)) for leaf in ("overflow/request", "hold/answer", "hold/event")] + \
        [central_filter("summary")]


def gateway_central_subscriptions(region: str) -> list[str]:
    """What a gateway subscribes to for overflow (QoS 1), besides its device subscriptions."""
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
    if len(parts) not in (6, 7) or "/".join(parts[:2]) != W.ROOT or parts[3] != CENTRAL:
        return None
    region = parts[2]
    if not W.ID_RE.match(region) or region == CENTRAL:
        return None
    rest = "/".join(parts[4:])
    if parts[4] == "summary" and len(parts) == 6 and parts[5].isdigit() and parts[5] == str(int(parts[5])):
        shard = int(parts[5])
        return CentralRef(region, "summary", shard) if shard < MAX_SUMMARY_SHARDS else None
    return CentralRef(region, rest) if rest in CENTRAL_LEAVES and rest != "summary" else None


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
    return _check_fields(W.decode(payload, limit), allowed, required, what)


def _check_fields(obj: dict[str, Any], allowed: set[str], required: tuple[str, ...], what: str) -> dict[str, Any]:
    for name in obj:
        if name not in allowed:
            raise W.ProtocolError(W.UNKNOWN_FIELD, f"unknown field {name!r} in {what}", name)
    for name in required:
        if name not in obj:
            raise W.ProtocolError(W.MISSING_FIELD, f"missing field '{name}' in {what}", name)
    return obj


def _check_str(msg: dict[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    W.check_field(name, msg[name], (str,))
    if not pattern.match(msg[name]):
        raise W.ProtocolError(W.OUT_OF_RANGE, f"field '{name}' is not a valid {what}", name)
    return msg[name]


def _check_region_field(msg: dict[str, Any], name: str, topic_region: str | None) -> str:
    region = _check_str(msg, name, W.ID_RE, "region id")
    if topic_region is not None and region != topic_region:
        raise W.ProtocolError(REGION_MISMATCH, f"{name} {region!r} does not match the topic's region "
                                               f"{topic_region!r}", name)
    return region


def _check_need_object(msg: dict[str, Any]) -> dict[str, float]:
    need = msg["need"]
    if not isinstance(need, dict):
        raise W.ProtocolError(W.BAD_TYPE, "field 'need' must be an object", "need")
    _check_fields(need, set(W.NEED_FIELDS), (), "'need'")
    fields = W.numbers(need, W.NEED_FIELDS, " in 'need'")
    W.check_need(fields)
    return fields


def _check_error(msg: dict[str, Any]) -> dict[str, Any]:
    err = msg["error"]
    if not isinstance(err, dict) or not isinstance(err.get("code"), str) \
            or not isinstance(err.get("message"), str) or set(err) - {"code", "message", "earliest_free"}:
        raise W.ProtocolError(W.BAD_TYPE, "field 'error' must be {\"code\": str, \"message\": str}", "error")
    # a hold's error is the target gateway's reply to the car it holds for, or central's own
    if err["code"] not in D.ERROR_CODES + CENTRAL_ERROR_CODES:
        raise W.ProtocolError(W.OUT_OF_RANGE, f"unknown error code {err['code']!r}", "error")
    return err


# The reservation object (docs/protocol.md) as a hold answer carries it.
_RESERVATION_NUMBERS = {
    "slot": ((int,), 1, 32), "distance_km": (W.NUMBER, 0.0, 20000.0), "eta": _TIME,
    "wait_min": (W.NUMBER, 0.0, None), "charge_min": (W.NUMBER, 0.0, None), "energy_kwh": (W.NUMBER, 0.0, None),
    "power_kw": (W.NUMBER, 0.0, None), "price_eur": (W.NUMBER, 0.0, None), "hold_until": _TIME,
}


def _check_reservation(msg: dict[str, Any]) -> dict[str, Any]:
    r = msg["reservation"]
    if not isinstance(r, dict):
        raise W.ProtocolError(W.BAD_TYPE, "field 'reservation' must be an object", "reservation")
    _check_fields(r, set(_RESERVATION_NUMBERS) | {"id", "station", "state"}, ("id", "station", "state"),
                  "'reservation'")
    _check_str(r, "id", W.ID_RE, "reservation id")
    _check_str(r, "station", W.ID_RE, "station id")
    if r["state"] != "held":
        raise W.ProtocolError(W.OUT_OF_RANGE, f"a hold's reservation must be 'held', not {r['state']!r}", "state")
    W.numbers(r, _RESERVATION_NUMBERS, " in 'reservation'")
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
        raise W.ProtocolError(W.UNKNOWN_OP, f"unknown op {op!r}, expected 'overflow' or 'abandon'", "op")
    xid = _check_str(msg, "xid", XID_RE, "overflow id")
    origin = _check_region_field(msg, "origin", topic_region)
    if op == "abandon":
        extra = set(msg) - {"v", "op", "xid", "origin"}
        if extra:
            name = sorted(extra)[0]
            raise W.ProtocolError(W.UNKNOWN_FIELD, f"unknown field {name!r} for op 'abandon'", name)
        return OverflowAbandon(xid, origin)
    for name in ("car", "deadline", "need"):
        if name not in msg:
            raise W.ProtocolError(W.MISSING_FIELD, f"missing field '{name}' in overflow request", name)
    car = _check_str(msg, "car", W.ID_RE, "car id")
    deadline = W.numbers(msg, {"deadline": _TIME})["deadline"]
    beat = msg.get("beat_s")
    if beat is not None:
        W.check_field("beat_s", beat, W.NUMBER, 0.0, None)
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
        raise W.ProtocolError(W.UNKNOWN_OP, f"unknown op {op!r}, expected 'hold' or 'release'", "op")
    xid = _check_str(msg, "xid", XID_RE, "overflow id")
    region = _check_region_field(msg, "region", topic_region)
    car = _check_str(msg, "car", W.ID_RE, "car id")
    fields = {"release": ("reservation",), "hold": ("origin", "deadline", "confirm_by", "need")}[op]
    optional = {"hold": ("station",), "release": ()}[op]
    for name in msg:
        if name not in ("v", "op", "xid", "region", "car") + fields + optional:
            raise W.ProtocolError(W.UNKNOWN_FIELD, f"unknown field {name!r} for op {op!r}", name)
    for name in fields:
        if name not in msg:
            raise W.ProtocolError(W.MISSING_FIELD, f"missing field '{name}' for op {op!r}", name)
    if op == "release":
        return HoldRelease(xid, region, car, _check_str(msg, "reservation", W.ID_RE, "reservation id"))
    origin = _check_region_field(msg, "origin", None)
    station = _check_str(msg, "station", W.ID_RE, "station id") if msg.get("station") is not None else None
    times = W.numbers(msg, {"deadline": _TIME, "confirm_by": _TIME})
    if times["confirm_by"] < times["deadline"]:
        raise W.ProtocolError(W.OUT_OF_RANGE, "field 'confirm_by' must not be before 'deadline'", "confirm_by")
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
        raise W.ProtocolError(W.MISSING_FIELD, "missing field 'ok'", "ok")
    if not isinstance(msg["ok"], bool):
        raise W.ProtocolError(W.BAD_TYPE, "field 'ok' must be a boolean", "ok")
    need, other = ("reservation", "error") if msg["ok"] else ("error", "reservation")
    if need not in msg:
        raise W.ProtocolError(W.MISSING_FIELD, f"missing field '{need}'", need)
    if other in msg:
        raise W.ProtocolError(W.UNKNOWN_FIELD, f"field {other!r} with ok={msg['ok']}", other)
    return (_check_reservation(msg), None) if msg["ok"] else (None, _check_error(msg))


def parse_hold_answer(topic_region: str, payload: bytes) -> HoldAnswer:
    """recarga/v1/<target>/central/hold/answer."""
    msg = _central_decode(payload, {"v", "xid", "region", "car", "deadline", "ok", "reservation", "error"},
                          ("xid", "region", "car", "deadline"), "hold answer")
    xid = _check_str(msg, "xid", XID_RE, "overflow id")
    region = _check_region_field(msg, "region", topic_region)
    car = _check_str(msg, "car", W.ID_RE, "car id")
    deadline = W.numbers(msg, {"deadline": _TIME})["deadline"]
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
        raise W.ProtocolError(W.OUT_OF_RANGE, f"event {msg['event']!r} not one of {HOLD_EVENTS}", "event")
    return HoldEvent(xid, region, msg["event"], _check_str(msg, "reservation", W.ID_RE, "reservation id"))


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
    deadline = W.numbers(msg, {"deadline": _TIME})["deadline"]
    reservation, error = _ok_or_error(msg)
    region = broker = None
    if reservation is not None:
        for name in ("region", "broker"):
            if name not in msg:
                raise W.ProtocolError(W.MISSING_FIELD, f"missing field '{name}'", name)
        region = _check_region_field(msg, "region", None)
        broker = msg["broker"]
        if not isinstance(broker, dict) or set(broker) != {"host", "port"} \
                or not isinstance(broker["host"], str) or not _HOST_RE.match(broker["host"]):
            raise W.ProtocolError(W.BAD_TYPE, "field 'broker' must be {\"host\": str, \"port\": int}", "broker")
        W.check_int("port", broker["port"], 1, 65535)
    elif "region" in msg or "broker" in msg:
        raise W.ProtocolError(W.UNKNOWN_FIELD, "'region' and 'broker' belong to an ok answer only", "region")
    return OverflowAnswer(xid, origin, deadline, region, broker, reservation, error)


def parse_link(payload: bytes) -> bool:
    """recarga/v1/<region>/central/link: Mosquitto's bridge notification, b"1" or b"0"."""
    if payload not in (b"0", b"1"):
        raise W.ProtocolError(W.BAD_TYPE, f"bridge notification must be 0 or 1, got {payload[:16]!r}")
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
        msgs = [{"v": W.VERSION, "region": region, "shard": k, "of": of, "at": round(at), "stations": entries}
                for k, entries in enumerate(shards)]
        if all(len(W.encode(m)) <= MAX_SUMMARY_PAYLOAD for m in msgs):
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
    W.check_int("of", msg["of"], 1, MAX_SUMMARY_SHARDS)
    W.check_int("shard", msg["shard"], 0, msg["of"] - 1)
    if msg["shard"] != topic_shard:
        raise W.ProtocolError(W.OUT_OF_RANGE, f"shard {msg['shard']} does not match the topic's {topic_shard}", "shard")
    at = W.numbers(msg, {"at": _TIME})["at"]
    if not isinstance(msg["stations"], list):
        raise W.ProtocolError(W.BAD_TYPE, "field 'stations' must be a list", "stations")
    stations = tuple(_summary_station(e) for e in msg["stations"])
    return Summary(region, msg["shard"], msg["of"], at, stations)


def _summary_station(e: Any) -> SummaryStation:
    bad = W.ProtocolError(W.BAD_TYPE, "a summary station is [id, lat, lon, price_per_kwh, "
                                  "[[power_kw, dc, usable, free, next_free], ...]]", "stations")
    if not isinstance(e, list) or len(e) != 5 or not isinstance(e[0], str) or not isinstance(e[4], list) \
            or not 1 <= len(e[4]) <= 32:
        raise bad
    sid, lat, lon, price, groups = e
    if not W.ID_RE.match(sid):
        raise W.ProtocolError(W.OUT_OF_RANGE, f"summary station id {sid!r} is not a valid id", "stations")
    W.check_field("lat", lat, W.NUMBER, -90.0, 90.0)
    W.check_field("lon", lon, W.NUMBER, -180.0, 180.0)
    W.check_field("price_per_kwh", price, W.NUMBER, 0.0, 10.0)
    out = []
    for g in groups:
        if not isinstance(g, list) or len(g) != 5 or g[1] not in (0, 1) or isinstance(g[1], bool):
            raise bad
        kw, dc, usable, free, nxt = g
        W.check_field("power_kw", kw, W.NUMBER, 0.5, 1000.0)
        W.check_int("usable", usable, 1, 32)
        W.check_int("free", free, 0, usable)
        if nxt is not None:
            W.check_field("next_free", nxt, *_TIME)
        elif free < usable:
            raise W.ProtocolError(W.OUT_OF_RANGE, "next_free may be null only when every slot is free", "stations")
        out.append(SlotGroup(float(kw), bool(dc), usable, free, None if nxt is None else float(nxt)))
    if sum(g.usable for g in out) > 32:
        raise W.ProtocolError(W.OUT_OF_RANGE, f"summary station {sid!r} has more than 32 slots", "stations")
    return SummaryStation(sid, float(lat), float(lon), float(price), tuple(out))


# ---------------------------------------------------------------- builders

def _need(need: dict[str, float]) -> dict[str, float]:
    return {k: need[k] for k in W.NEED_FIELDS}


def overflow_request(xid: str, origin: str, car: str, deadline: float, need: dict[str, float],
                     beat_s: float | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": W.VERSION, "op": "overflow", "xid": xid, "origin": origin, "car": car,
                           "deadline": round(deadline, 3), "need": _need(need)}
    if beat_s is not None:
        msg["beat_s"] = round(beat_s, 1)
    return msg


def overflow_abandon(xid: str, origin: str) -> dict[str, Any]:
    return {"v": W.VERSION, "op": "abandon", "xid": xid, "origin": origin}


def hold_request(xid: str, origin: str, region: str, car: str, station: str | None, deadline: float,
                 confirm_by: float, need: dict[str, float]) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": W.VERSION, "op": "hold", "xid": xid, "origin": origin, "region": region,
                           "car": car, "deadline": round(deadline, 3), "confirm_by": round(confirm_by),
                           "need": _need(need)}
    if station is not None:
        msg["station"] = station
    return msg


def hold_release(xid: str, region: str, car: str, reservation: str) -> dict[str, Any]:
    return {"v": W.VERSION, "op": "release", "xid": xid, "region": region, "car": car,
            "reservation": reservation}


def hold_answer(xid: str, region: str, car: str, deadline: float, reservation: dict[str, Any] | None = None,
                code: str | None = None, message: str = "") -> dict[str, Any]:
    """ok with the held reservation (its view), or an error `code` with `message`."""
    msg: dict[str, Any] = {"v": W.VERSION, "xid": xid, "region": region, "car": car, "deadline": round(deadline, 3)}
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
    return {"v": W.VERSION, "xid": xid, "region": region, "event": event, "reservation": reservation}


def overflow_answer(xid: str, origin: str, deadline: float, *, region: str | None = None,
                    host: str | None = None, port: int | None = None,
                    reservation: dict[str, Any] | None = None, code: str | None = None,
                    message: str = "") -> dict[str, Any]:
    """ok (region, its broker for cars, the held reservation) or an error `code`."""
    msg: dict[str, Any] = {"v": W.VERSION, "xid": xid, "origin": origin, "deadline": round(deadline, 3)}
    if reservation is not None:
        msg.update(region=region, broker={"host": host, "port": port})
    return _with_outcome(msg, reservation, code, message)


def overflow_reply(rid: str, reservation: dict[str, Any], region: str, broker: dict[str, Any]) -> dict[str, Any]:
    """The origin gateway's reply to the car: a slot held in another region. The car hands
    over to `broker` (region `region`) and confirms the reservation there."""
    msg = D.ok_reply(rid, "reserve", reservation)
    msg.update(region=region, broker=dict(broker))
    return msg


def with_overflow_note(reply: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    """The local reply to the car, saying why overflow did not help (OVERFLOW_UNAVAILABLE,
    DEADLINE_PASSED or NO_CAPACITY)."""
    assert code in CENTRAL_ERROR_CODES
    return {**reply, "overflow": {"code": code, "message": message}}

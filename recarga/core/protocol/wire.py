"""What every part of the Recarga protocol shares: the version, the topic root, QoS, ids,
the error codes any message can earn, JSON in and out, and the field checks.

The per-audience modules (device, central, access) build on these; docs/protocol.md,
"Transport", is the human-readable form.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

VERSION = 1
ROOT = "recarga/v1"

QOS = 1  # every topic; devices speak MQTT 3.1.1 through umqtt.simple

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
RID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# Error codes any validated message can earn, and no_capacity, which both a car's reply and
# central's answer use (docs/protocol.md lists when each is sent).
BAD_JSON = "bad_json"
BAD_TYPE = "bad_type"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
OUT_OF_RANGE = "out_of_range"
TOO_LARGE = "too_large"
BAD_VERSION = "bad_version"
UNKNOWN_OP = "unknown_op"
NO_CAPACITY = "no_capacity"


def check_id(kind: str, value: str) -> str:
    if not ID_RE.match(value):
        raise ValueError(f"bad {kind} id {value!r}: 1-32 of A-Z a-z 0-9 _ -")
    return value


class ProtocolError(ValueError):
    """A message that breaks the contract; code is one of the error codes."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.field = field


NUMBER = (int, float)  # the types of a JSON number field

# field -> (types, min, max); min/max inclusive, None = unbounded
FieldSpec = dict[str, tuple[tuple[type, ...], float | None, float | None]]

MIN_CHARGE_KW = 1.0  # a charging limit is 0 (cannot charge that way) or at least this
MAX_SLOT_KW = 4000.0  # a charging point's power: up to a megawatt truck charger

# What a car needs charged, as its reserve request and the overflow and hold requests made
# for it carry it.
NEED_FIELDS: FieldSpec = {
    "lat": (NUMBER, -90.0, 90.0),
    "lon": (NUMBER, -180.0, 180.0),
    "soc": (NUMBER, 0.0, 1.0),
    "battery_kwh": (NUMBER, 1.0, 300.0),
    "consumption_kwh_100km": (NUMBER, 5.0, 80.0),
    "max_ac_kw": (NUMBER, 0.0, 50.0),
    "max_dc_kw": (NUMBER, 0.0, 500.0),
    "target_soc": (NUMBER, 0.05, 1.0),
}


_scan_json = json.JSONDecoder().scan_once  # the C scanner that json.loads ends in


def loads(payload: bytes) -> Any:
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


def decode(payload: bytes, limit: int) -> dict[str, Any]:
    """A message of at most `limit` bytes: a JSON object of this protocol version."""
    if len(payload) > limit:
        raise ProtocolError(TOO_LARGE, f"payload is {len(payload)} bytes, limit {limit}")
    try:
        msg = loads(payload)
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


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def online_message(online: bool) -> bytes:
    """The retained online flag of every client (a device, a gateway, a central instance);
    its Last Will publishes the false one."""
    return encode({"v": VERSION, "online": online})


def check_field(name: str, value: Any, types: tuple[type, ...], lo: float | None = None,
                hi: float | None = None) -> None:
    # bool is an int subclass in Python; JSON true is never a number here.
    if isinstance(value, bool) or not isinstance(value, types):
        want = "number" if types == NUMBER else "string" if types == (str,) else "/".join(t.__name__ for t in types)
        raise ProtocolError(BAD_TYPE, f"field '{name}' must be a {want}, got {type(value).__name__}", name)
    if types == NUMBER:
        if not math.isfinite(value):
            raise ProtocolError(OUT_OF_RANGE, f"field '{name}' must be finite", name)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ProtocolError(OUT_OF_RANGE, f"field '{name}'={value} outside {lo}..{hi}", name)


def numbers(msg: dict[str, Any], spec: FieldSpec, where: str = "") -> dict[str, float]:
    """The numeric fields of `spec`, all required, type- and range-checked, as floats."""
    out: dict[str, float] = {}
    for name, (types, lo, hi) in spec.items():
        if name not in msg:
            raise ProtocolError(MISSING_FIELD, f"missing field '{name}'{where}", name)
        value = msg[name]
        t = type(value)
        # the common case without the general checks: a JSON number within (finite) bounds
        # passes every one of them (NaN and infinities fail lo <= value <= hi)
        if not (types is NUMBER and (t is float or t is int) and lo is not None and hi is not None
                and lo <= value <= hi):
            check_field(name, value, types, lo, hi)
            if types == (int,):
                check_int(name, value, lo, hi)
        out[name] = float(value)
    return out


def check_int(name: str, value: Any, lo: float | None, hi: float | None) -> int:
    """An integer field with its range (check_field checks the range of numbers only)."""
    check_field(name, value, (int,))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ProtocolError(OUT_OF_RANGE, f"field '{name}'={value} outside {lo}..{hi}", name)
    return value


def check_need(need: dict[str, Any]) -> None:
    """The rules across a car's need fields (a reserve request's, an overflow request's)."""
    if need["max_ac_kw"] <= 0 and need["max_dc_kw"] <= 0:
        raise ProtocolError(OUT_OF_RANGE, "one of 'max_ac_kw', 'max_dc_kw' must be above 0", "max_ac_kw")
    for name in ("max_ac_kw", "max_dc_kw"):
        # no charger delivers less than 1 kW: a limit of 1e-9 kW made a charge of millions of minutes
        if 0 < need[name] < MIN_CHARGE_KW:
            raise ProtocolError(OUT_OF_RANGE, f"field '{name}'={need[name]} must be 0 (none) or at least "
                                f"{MIN_CHARGE_KW:g} kW", name)
    if need["target_soc"] <= need["soc"]:
        raise ProtocolError(OUT_OF_RANGE, "field 'target_soc' must be above 'soc'", "target_soc")

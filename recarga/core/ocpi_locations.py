"""Stations from OCPI 2.2.1 Locations, the form in which charge point operators publish them.

A Location is a site in OCPI's model: one place with one operator. It becomes one station,
its EVSEs (one car charging at a time each) its slots in document order, and its site is
itself. An EVSE's power is that of its most powerful connector (max_electric_power in W, or
max_voltage x max_amperage x phases); it is DC when that connector is.

Data-quality problems (unusable coordinates, no power, an EVSE that is REMOVED) skip the
Location or EVSE with a warning naming its index and id, as the register's rows are skipped;
a document that is not OCPI Locations at all is refused with a ValueError.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from typing import Any

from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import wire as W
from recarga.core.stations import MAX_SLOT_KW, MIN_SLOT_KW, default_price

log = logging.getLogger(__name__)

_PHASES = {"AC_1_PHASE": 1, "AC_2_PHASE": 2, "AC_2_PHASE_SPLIT": 2, "AC_3_PHASE": 3, "DC": 1}
# Parking only some drivers may use: the spot, hence the EVSE, is not for everyone.
_RESTRICTING = {"CUSTOMERS", "DISABLED", "MOTORCYCLES"}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_HASH_LEN = 8
_ID_MAX = 32  # protocol.wire.ID_RE


def station_id(location_id: str, party: str, unique: bool) -> str:
    """A station id (ID_RE) for a Location: its own id when that is already one and no other
    party's Location shares it; otherwise the id with unsafe characters replaced by '_',
    cut to fit, '-' and 8 hex digits of the SHA-1 of party and id (stable across runs)."""
    if unique and W.ID_RE.match(location_id):
        return location_id
    digest = hashlib.sha1(f"{party}*{location_id}".encode()).hexdigest()[:_HASH_LEN]
    stem = _ID_UNSAFE.sub("_", location_id)[: _ID_MAX - _HASH_LEN - 1]
    return f"{stem}-{digest}" if stem else digest


def _party(loc: dict[str, Any]) -> str:
    return f"{loc.get('country_code') or ''}*{loc.get('party_id') or ''}"


def _locations(doc: Any) -> list[Any]:
    """The Location list: a bare array, or the locations endpoint's response envelope."""
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and "data" in doc:
        code = doc.get("status_code", 1000)
        if not (isinstance(code, int) and 1000 <= code < 2000):
            raise ValueError(f"OCPI response status_code {code!r} is not a success (1xxx): "
                             f"{doc.get('status_message', '')!r}")
        data = doc["data"]
        if isinstance(data, dict):  # the endpoint's answer for one Location
            return [data]
        if isinstance(data, list):
            return data
        raise ValueError(f"OCPI response: data must be a list of Locations, got {type(data).__name__}")
    raise ValueError("not OCPI Locations: expected a JSON array of Location objects or the "
                     "locations endpoint's {\"data\": [...], \"status_code\": 1000} envelope")


def _coordinate(value: Any) -> float:
    """OCPI sends coordinates as decimal strings; numbers are accepted too."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _connector_kw(con: dict[str, Any]) -> float | None:
    watts = _number(con.get("max_electric_power"))
    if watts is None or watts <= 0:
        volts, amps = _number(con.get("max_voltage")), _number(con.get("max_amperage"))
        phases = _PHASES.get(con.get("power_type"), 0)
        watts = volts * amps * phases if volts and amps and phases else None
    return watts / 1000.0 if watts and watts > 0 else None


def _list(value: Any, where: str, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: {field} must be a list, got {type(value).__name__}")
    return value


def _evse_slot(evse: dict[str, Any], where: str, source: str) -> SlotMeta | None:
    best: tuple[float, bool] | None = None
    for c, con in enumerate(_list(evse.get("connectors"), where, "connectors")):
        if not isinstance(con, dict):
            raise ValueError(f"{where} connectors[{c}]: must be an object")
        kw = _connector_kw(con)
        if kw is not None:
            option = (kw, con.get("power_type") == "DC")
            best = option if best is None or option > best else best
    if best is None:
        log.warning("%s: %s has no connector with a power (max_electric_power, or max_voltage, "
                    "max_amperage and power_type), skipped", source, where)
        return None
    if not MIN_SLOT_KW <= best[0] <= MAX_SLOT_KW:
        log.warning("%s: %s skipped: power %g kW outside %g..%g kW",
                    source, where, best[0], MIN_SLOT_KW, MAX_SLOT_KW)
        return None
    return SlotMeta(power_kw=best[0], dc=best[1])


def stations_from_ocpi(doc: Any, source: str = "OCPI Locations") -> list[StationMeta]:
    """One station per usable Location of a parsed OCPI 2.2.1 Locations document."""
    locations = _locations(doc)
    for n, loc in enumerate(locations):
        if not isinstance(loc, dict):
            raise ValueError(f"locations[{n}]: must be a Location object, got {type(loc).__name__}")
        if not isinstance(loc.get("id"), str) or not loc["id"]:
            raise ValueError(f"locations[{n}]: id must be a non-empty string, got {loc.get('id')!r}")
    # parties per id: one Location id may be used by several parties in a hub's feed
    id_count = Counter(lid for _, lid in {(_party(loc), loc["id"]) for loc in locations})
    stations: list[StationMeta] = []
    seen: set[tuple[str, str]] = set()
    for n, loc in enumerate(locations):
        lid = loc["id"]
        where = f"locations[{n}] (id {lid!r})"
        key = (_party(loc), lid)
        if key in seen:
            log.warning("%s: %s: duplicate Location skipped", source, where)
            continue
        seen.add(key)
        coords = loc.get("coordinates")
        if not isinstance(coords, dict):
            coords = {}
        lat, lon = _coordinate(coords.get("latitude")), _coordinate(coords.get("longitude"))
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (lat == 0.0 and lon == 0.0):
            log.warning("%s: %s has unusable coordinates (%r, %r), skipped",
                        source, where, coords.get("latitude"), coords.get("longitude"))
            continue
        slots: list[SlotMeta] = []
        restricted: list[bool] = []
        for e, evse in enumerate(_list(loc.get("evses"), where, "evses")):
            ewhere = f"{where} evses[{e}]"
            if not isinstance(evse, dict):
                raise ValueError(f"{ewhere}: must be an EVSE object")
            if evse.get("status") == "REMOVED":
                continue
            slot = _evse_slot(evse, f"{ewhere} (uid {evse.get('uid')!r})", source)
            if slot is not None:
                slots.append(slot)
                parking = _list(evse.get("parking_restrictions"), ewhere, "parking_restrictions")
                restricted.append(bool(_RESTRICTING.intersection(p for p in parking if isinstance(p, str))))
        if not slots:
            log.warning("%s: %s has no usable EVSE, skipped", source, where)
            continue
        sid = station_id(lid, _party(loc), unique=id_count[lid] == 1)
        operator = loc.get("operator")
        name = operator.get("name") if isinstance(operator, dict) else None
        slots_t = tuple(slots)
        stations.append(StationMeta(
            id=sid, lat=lat, lon=lon, slots=slots_t,
            operator=" ".join(str(name or loc.get("party_id") or "").split()),
            price_per_kwh=default_price(slots_t),
            name=" ".join(str(loc.get("name") or loc.get("address") or "").split()),
            site=sid,
            # publish false: shown only to the drivers named in publish_allowed_to
            access="restricted" if loc.get("publish") is False or all(restricted) else "public",
        ))
    return stations

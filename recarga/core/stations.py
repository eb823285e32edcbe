"""Station metadata: the Bundesnetzagentur register (CSV), the project's JSON format, OCPI
Locations (recarga.core.ocpi_locations), synthetic sets; load_stations picks the format.

Pure loading and validation; nothing here knows about live slot state. docs/stations.md
describes the formats; data/stations.schema.json is the JSON format's schema.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

from recarga.core.geo import offset_deg
from recarga.core.model import AC_MAX_KW, ACCESS, SlotMeta, StationMeta
from recarga.core.protocol import wire as W
from recarga.core.sites import DEFAULT_SITE_DISTANCE_M, group_sites

log = logging.getLogger(__name__)

# The register carries no prices. These defaults are typical Berlin ad-hoc tariffs
# (EUR/kWh) and only feed the price estimate in an offer; an operator can override
# them through the JSON format.
DEFAULT_PRICE_AC = 0.49
DEFAULT_PRICE_DC = 0.59

MAX_POINTS = 6  # the register has six plug column groups per device
MIN_SLOT_KW, MAX_SLOT_KW = W.MIN_CHARGE_KW, W.MAX_SLOT_KW  # a charging point's power

JSON_VERSION = 1
JSON_SHAPE = ('{"v": 1, "stations": [{"id": "A1", "lat": 52.5, "lon": 13.4, '
              '"slots": [{"power_kw": 22}]}]}')

# The register's "Informationen zum Parkraum" values that keep a device from the public.
_BNETZA_RESTRICTED = ("nur für kunden",)
_BNETZA_REQUIRED = ("Ladeeinrichtungs-ID", "Breitengrad", "Längengrad")

# Berlin: 4,528 devices in the register over the city's 891 km^2 -> ~5.1 stations/km^2.
# Synthetic sets keep this density by default so that scale benchmarks see as many
# stations around a car as a real city would, whatever their total count.
BERLIN_STATIONS = 4528
BERLIN_AREA_KM2 = 891.0
BERLIN_DENSITY_PER_KM2 = BERLIN_STATIONS / BERLIN_AREA_KM2


def default_price(slots: Iterable[SlotMeta]) -> float:
    """DC tariff when the station has any DC slot, AC tariff otherwise."""
    return DEFAULT_PRICE_DC if any(s.dc for s in slots) else DEFAULT_PRICE_AC


# --------------------------------------------------------------------------- BNetzA CSV

def _parse_decimal(text: str) -> float:
    """German number ('3,7', '1.234,5') -> float; ValueError if not a finite number."""
    s = text.strip()
    if "," in s:
        s = s.replace(".", "").replace(",", ".")
    value = float(s)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _plug_power(text: str) -> float | None:
    """Largest of the '; '-separated plug powers of one point, None if there is none."""
    values = []
    for part in text.split(";"):
        if part.strip():
            try:
                values.append(_parse_decimal(part))
            except ValueError:
                continue
    values = [v for v in values if v > 0]
    return max(values) if values else None


def _one_line(text: str) -> str:
    """Quoted register fields may hold line breaks; names must stay on one line."""
    return " ".join(text.split())


def load_bnetza_csv(path: str | os.PathLike[str]) -> list[StationMeta]:
    """Stations from the Bundesnetzagentur Ladesäulenregister (one station per device).

    Slot N is the register's charging point N. Rows that cannot be placed on the map or
    whose points have no power at all are skipped with a warning.
    """
    stations: list[StationMeta] = []
    seen: set[str] = set()
    # utf-8-sig strips the BOM; newline='' lets csv handle line breaks inside quotes.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=";")
        missing = [c for c in _BNETZA_REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: not the Bundesnetzagentur register: no column(s) {missing} "
                             f"in the header (a ';'-separated CSV; see docs/stations.md)")
        for row in reader:
            line = reader.line_num
            sid = (row.get("Ladeeinrichtungs-ID") or "").strip()
            if not sid:
                log.warning("%s:%d: row without Ladeeinrichtungs-ID skipped", path, line)
                continue
            if not W.ID_RE.match(sid):
                log.warning("%s:%d: station id %r skipped: topics take 1-32 of A-Z a-z 0-9 _ -", path, line, sid)
                continue
            if sid in seen:
                log.warning("%s:%d: duplicate station %s skipped", path, line, sid)
                continue
            try:
                lat = _parse_decimal(row.get("Breitengrad") or "")
                lon = _parse_decimal(row.get("Längengrad") or "")
            except ValueError:
                lat = lon = math.nan
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (lat == 0.0 and lon == 0.0):
                log.warning("%s:%d: station %s has unusable coordinates (%r, %r), skipped",
                            path, line, sid, row.get("Breitengrad"), row.get("Längengrad"))
                continue
            slots = _bnetza_slots(row)
            if slots is None:
                log.warning("%s:%d: station %s has no usable charging points, skipped",
                            path, line, sid)
                continue
            wrong = [p.power_kw for p in slots if not MIN_SLOT_KW <= p.power_kw <= MAX_SLOT_KW]
            if wrong:
                log.warning("%s:%d: station %s skipped: charging point power %g kW outside %g..%g kW",
                            path, line, sid, wrong[0], MIN_SLOT_KW, MAX_SLOT_KW)
                continue
            name = _one_line(row.get("Anzeigename (Karte)") or "")
            if not name:
                name = _one_line(f"{row.get('Straße') or ''} {row.get('Hausnummer') or ''}")
            parking = (row.get("Informationen zum Parkraum") or "").strip().casefold()
            seen.add(sid)
            stations.append(StationMeta(
                id=sid, lat=lat, lon=lon, slots=slots,
                operator=_one_line(row.get("Betreiber") or ""),
                price_per_kwh=default_price(slots), name=name,
                access="restricted" if parking.startswith(_BNETZA_RESTRICTED) else "public",
            ))
    return stations


def _bnetza_slots(row: dict[str, str]) -> tuple[SlotMeta, ...] | None:
    try:
        count = int((row.get("Anzahl Ladepunkte") or "").strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_POINTS:
        # Infer from the plug groups actually filled in.
        filled = [i for i in range(1, MAX_POINTS + 1)
                  if (row.get(f"Steckertypen{i}") or "").strip()
                  or (row.get(f"Nennleistung Stecker{i}") or "").strip()]
        count = max(filled, default=0)
        if count == 0:
            return None
    try:
        device_kw: float | None = _parse_decimal(row.get("Nennleistung Ladeeinrichtung [kW]") or "")
    except ValueError:
        device_kw = None
    if device_kw is not None and device_kw <= 0:
        device_kw = None
    slots = []
    for i in range(1, count + 1):
        power = _plug_power(row.get(f"Nennleistung Stecker{i}") or "")
        if power is None:
            # A point alone at its device can draw the device's full rating.
            power = device_kw
        if power is None:
            return None  # cannot drop one point: slot numbers must match the physical points
        plugs = row.get(f"Steckertypen{i}") or ""
        # the plug type decides (there are 43 kW AC couplers); power only when none is given
        slots.append(SlotMeta(power_kw=power, dc="DC" in plugs if plugs.strip() else power > AC_MAX_KW))
    return tuple(slots)


# --------------------------------------------------------------------------- JSON

def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}")


def _number(value: Any, where: str, field: str) -> float:
    # bool is an int subclass; true/false is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"{field} must be a finite number, got {value!r}")
    return float(value)


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"{field} must be a string, got {value!r}")
    return value


_STATION_FIELDS = {"id", "lat", "lon", "operator", "name", "price_per_kwh", "slots", "site", "access"}


def stations_from_dict(doc: Any) -> list[StationMeta]:
    """Validate a parsed JSON document; ValueError names the station and field at fault."""
    if isinstance(doc, list):
        raise ValueError(f"stations document must be a JSON object like {JSON_SHAPE}, "
                         "not a bare list (see docs/stations.md)")
    if not isinstance(doc, dict):
        raise ValueError(f"stations document must be a JSON object like {JSON_SHAPE}")
    if "stations" not in doc and "slots" in doc:
        raise ValueError("this is a station's meta message (station/<sid>/meta), not a station "
                         f"file; a station file lists stations with their ids: {JSON_SHAPE}")
    v = doc.get("v")
    if isinstance(v, bool) or v != JSON_VERSION:
        raise ValueError(f"stations document: v must be {JSON_VERSION}, got {v!r}")
    unknown = set(doc) - {"v", "stations"}
    if unknown:
        raise ValueError(f"stations document: unknown field(s) {sorted(unknown)}; known: ['stations', 'v']")
    entries = doc.get("stations")
    if not isinstance(entries, list):
        raise ValueError("stations document: 'stations' must be a list")
    stations: list[StationMeta] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        where = f"stations[{n}]"
        if not isinstance(entry, dict):
            raise _fail(where, "must be an object")
        sid = entry.get("id")
        if not isinstance(sid, str) or not W.ID_RE.match(sid):
            raise _fail(where, f"id must be 1-32 of A-Z a-z 0-9 _ - (it names MQTT topics), got {sid!r}")
        where = f"stations[{n}] (station {sid!r})"
        if sid in seen:
            raise _fail(where, "duplicate id")
        if "v" in entry:
            raise _fail(where, "field 'v' belongs to a station's meta message, not to a station "
                               "file's entry; drop it (the file's version is its top-level v)")
        unknown = set(entry) - _STATION_FIELDS
        if unknown:
            raise _fail(where, f"unknown field(s) {sorted(unknown)}; known: {sorted(_STATION_FIELDS)}")
        if "lat" not in entry or "lon" not in entry:
            raise _fail(where, "lat and lon are required")
        lat = _number(entry["lat"], where, "lat")
        lon = _number(entry["lon"], where, "lon")
        if not -90.0 <= lat <= 90.0:
            raise _fail(where, f"lat {lat} outside -90..90")
        if not -180.0 <= lon <= 180.0:
            raise _fail(where, f"lon {lon} outside -180..180")
        raw_slots = entry.get("slots")
        if not isinstance(raw_slots, list) or not raw_slots:
            raise _fail(where, "slots must be a non-empty list")
        slots = []
        for k, raw in enumerate(raw_slots, start=1):
            swhere = f"{where} slot {k}"
            if not isinstance(raw, dict):
                raise _fail(swhere, "must be an object")
            unknown = set(raw) - {"power_kw", "dc"}
            if unknown:
                raise _fail(swhere, f"unknown field(s) {sorted(unknown)}")
            if "power_kw" not in raw:
                raise _fail(swhere, "power_kw is required")
            power = _number(raw["power_kw"], swhere, "power_kw")
            if not MIN_SLOT_KW <= power <= MAX_SLOT_KW:
                raise _fail(swhere, f"power_kw must be {MIN_SLOT_KW:g}..{MAX_SLOT_KW:g}, got {power:g}")
            dc = raw.get("dc", power > AC_MAX_KW)  # omitted: by power, like the register
            if not isinstance(dc, bool):
                raise _fail(swhere, f"dc must be true or false, got {dc!r}")
            slots.append(SlotMeta(power_kw=power, dc=dc))
        slots_t = tuple(slots)
        price = default_price(slots_t)
        if "price_per_kwh" in entry:
            price = _number(entry["price_per_kwh"], where, "price_per_kwh")
            if price < 0:
                raise _fail(where, f"price_per_kwh must be >= 0, got {price}")
        site = _text(entry.get("site", ""), where, "site")
        if "site" in entry and not W.ID_RE.match(site):
            raise _fail(where, f"site must be 1-32 of A-Z a-z 0-9 _ -, got {site!r}")
        access = entry.get("access", "public")
        if access not in ACCESS:
            raise _fail(where, f"access must be one of {list(ACCESS)}, got {access!r}")
        seen.add(sid)
        stations.append(StationMeta(
            id=sid, lat=lat, lon=lon, slots=slots_t,
            operator=_text(entry.get("operator", ""), where, "operator"),
            price_per_kwh=price,
            name=_text(entry.get("name", ""), where, "name"),
            site=site, access=access,
        ))
    return stations


def stations_to_dict(stations: Sequence[StationMeta]) -> dict[str, Any]:
    return {"v": JSON_VERSION, "stations": [
        {"id": s.id, "lat": s.lat, "lon": s.lon, "operator": s.operator, "name": s.name,
         "price_per_kwh": s.price_per_kwh, "access": s.access, **({"site": s.site} if s.site else {}),
         "slots": [{"power_kw": p.power_kw, "dc": p.dc} for p in s.slots]}
        for s in stations]}


def _read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e


def load_stations_json(path: str | os.PathLike[str]) -> list[StationMeta]:
    """Stations from the project's JSON format (docs/stations.md)."""
    doc = _read_json(path)
    try:
        return stations_from_dict(doc)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _is_project_json(doc: Any) -> bool:
    """The project's format, or a mistake close to it (a bare list of its entries, a meta
    message): stations_from_dict explains what is wrong. False for OCPI Locations; a
    ValueError for a document that is neither."""
    if isinstance(doc, list):
        return any(isinstance(e, dict) and ("slots" in e or "lat" in e) for e in doc)
    if isinstance(doc, dict) and "data" in doc:
        return False
    if isinstance(doc, dict) and not {"v", "stations", "slots"} & set(doc):
        raise ValueError(f"unknown station document (keys {sorted(doc)[:8]}): expected the "
                         f"project's {JSON_SHAPE} or OCPI Locations (a list of Locations, or the "
                         "locations endpoint's {\"data\": [...]}); see docs/stations.md")
    return True


def dump_stations_json(stations: Sequence[StationMeta], path: str | os.PathLike[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stations_to_dict(stations), f, ensure_ascii=False, indent=1)
        f.write("\n")


def load_stations(path: str | os.PathLike[str],
                  site_distance_m: float = DEFAULT_SITE_DISTANCE_M) -> list[StationMeta]:
    """Stations of any supported format, each with its site (recarga.core.sites).

    .csv is the BNetzA register; .json is the project's format ({"v": 1, "stations": [...]})
    or OCPI Locations (a list of Locations or the locations endpoint's {"data": [...]}),
    told apart by content. Stations whose file names no site are grouped: devices of one
    operator within site_distance_m of each other form one site.
    """
    from recarga.core import ocpi_locations  # it imports this module's helpers

    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        stations = load_bnetza_csv(path)
    elif suffix == ".json":
        doc = _read_json(path)
        try:
            stations = (stations_from_dict(doc) if _is_project_json(doc)
                        else ocpi_locations.stations_from_ocpi(doc, source=str(path)))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    else:
        raise ValueError(f"{path}: unknown station file type {suffix!r} (expected .csv: the "
                         "BNetzA register, or .json: the project's format or OCPI Locations; "
                         "see docs/stations.md)")
    return group_sites(stations, site_distance_m)


# --------------------------------------------------------------------------- synthetic

# Device archetypes resembling the Berlin register (share of devices, points per device
# with their weights, power per point in kW, dc), rounded from the 2026 register: 21 %
# single 3.7 kW lantern points, 35 % 11 kW and 28 % 22 kW AC wallboxes (mostly 1-2
# points), 16 % DC: 50 kW (2-3 points), 150 kW and 300 kW high-power chargers (1-2).
_ARCHETYPES: tuple[tuple[float, tuple[tuple[int, float], ...], float, bool], ...] = (
    (0.21, ((1, 1.0),), 3.7, False),
    (0.35, ((1, 0.54), (2, 0.45), (4, 0.01)), 11.0, False),
    (0.28, ((1, 0.20), (2, 0.78), (4, 0.02)), 22.0, False),
    (0.03, ((1, 0.02), (2, 0.70), (3, 0.28)), 50.0, True),
    (0.065, ((1, 0.12), (2, 0.82), (3, 0.05), (4, 0.01)), 150.0, True),
    (0.065, ((1, 0.36), (2, 0.64)), 300.0, True),
)


def synthetic_radius_km(n: int) -> float:
    """Radius of the disc holding n stations at Berlin's density (~16.8 km for Berlin's
    4,528, ~25 km for 10,000, ~79 km for 100,000)."""
    return math.sqrt(n / (BERLIN_DENSITY_PER_KM2 * math.pi))


def synthetic_stations(n: int, seed: int, center: tuple[float, float] = (52.52, 13.405),
                       radius_km: float | None = None) -> list[StationMeta]:
    """n deterministic random stations, uniform over a disc around center.

    radius_km defaults to synthetic_radius_km(n): the area grows with n so density stays
    Berlin-like (a larger n models a larger region, not a denser city).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if radius_km is None:
        radius_km = synthetic_radius_km(n)
    rng = random.Random(seed)
    lat0, lon0 = center
    weights = [a[0] for a in _ARCHETYPES]
    stations = []
    width = len(str(max(n - 1, 0)))
    for i in range(n):
        # sqrt(u) makes the points uniform over the disc's area, not bunched at the center.
        r = radius_km * math.sqrt(rng.random())
        theta = rng.random() * 2.0 * math.pi
        lat, lon = offset_deg(lat0, lon0, r * math.sin(theta), r * math.cos(theta))
        _, counts, power, dc = rng.choices(_ARCHETYPES, weights)[0]
        points = rng.choices([c for c, _ in counts], [w for _, w in counts])[0]
        slots = tuple(SlotMeta(power_kw=power, dc=dc) for _ in range(points))
        stations.append(StationMeta(
            id=f"syn{i:0{width}d}", lat=round(lat, 6), lon=round(lon, 6), slots=slots,
            operator=f"Synthetic {i % 7}", price_per_kwh=default_price(slots),
            name=f"Synthetic station {i}",
        ))
    return stations

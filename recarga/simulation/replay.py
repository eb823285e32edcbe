"""Replay a real session log: each session becomes a car that asks at the session's time and
place for the session's energy (docs/simulation.md, "Replaying a session log").

The log is a CSV with a header. Columns by role (ROLES); which header plays which role is
detected from common names (ALIASES: e.g. the "Start Date", "End Date", "Charging Time
(hh:mm:ss)", "Energy (kWh)", "Station Name", "Latitude"/"Longitude" of public open-data
exports) or given explicitly. Needed: start, energy, and a place (station, or lat and lon).
A row that cannot be used is skipped with its row number and reason; a log with no usable
row is refused.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from recarga.core.evmodels import CarModel
from recarga.core.model import StationMeta
from recarga.simulation.demand import MIN_ASK_SOC, CarPlan, mix, soc_for_energy

ROLES = ("start", "end", "duration", "charging_time", "energy", "station", "lat", "lon")
# role -> normalised header names (lower case, letters and digits only)
ALIASES: dict[str, tuple[str, ...]] = {
    "start": ("start", "startdate", "starttime", "startdatetime", "sessionstart", "plugintime",
              "connectiontime", "begin", "started", "startedat"),
    "end": ("end", "enddate", "endtime", "enddatetime", "sessionend", "disconnecttime",
            "plugouttime", "stop", "stoptime", "ended", "endedat"),
    "duration": ("duration", "totalduration", "totaldurationhhmmss", "sessionduration",
                 "durationhhmmss", "connectedtime", "pluggedtime"),
    "charging_time": ("chargingtime", "chargingtimehhmmss", "chargeduration", "chargingduration"),
    "energy": ("energy", "energykwh", "kwh", "kwhdelivered", "energydelivered", "energydeliveredkwh",
               "totalenergy", "totalenergykwh", "energyconsumed", "energyconsumedkwh", "chargedkwh"),
    "station": ("station", "stationname", "stationid", "chargepoint", "chargepointid", "chargepointname",
                "evseid", "evse", "chargerid", "charger", "location", "locationid"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "lng", "long", "longitude"),
}
TIME_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S",
                "%Y/%m/%d %H:%M", "%Y/%m/%d %H:%M:%S", "%Y-%m-%d %H:%M")
MAX_SKIPS_SHOWN = 10
# A log holds only sessions that happened: its drivers all came, unless a no-show rate is given.
DEFAULT_NO_SHOW = 0.0


class ReplayError(ValueError):
    """A session log that cannot be replayed; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class LogSession:
    row: int  # 1-based CSV line (the header is line 1)
    start: datetime
    energy_kwh: float
    lat: float
    lon: float
    dwell_s: float  # plugged in after charging (end - start - charging time), 0 when unknown


@dataclass
class SessionLog:
    path: Path
    columns: dict[str, str]  # role -> header used
    sessions: list[LogSession]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)

    def summary(self) -> str:
        text = f"replay {self.path}: {len(self.sessions)} sessions"
        if self.skipped:
            shown = "; ".join(f"row {r}: {why}" for r, why in self.skipped[:MAX_SKIPS_SHOWN])
            more = f" (and {len(self.skipped) - MAX_SKIPS_SHOWN} more)" if len(self.skipped) > MAX_SKIPS_SHOWN else ""
            text += f", {len(self.skipped)} rows skipped: {shown}{more}"
        return text


def _norm(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


def detect_columns(headers: list[str], given: dict[str, str] | None = None) -> dict[str, str]:
    """role -> header: the given mapping, the rest detected from ALIASES."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(ROLES))
    if unknown:
        raise ReplayError(f"unknown column role(s) {unknown}; roles: {', '.join(ROLES)}")
    missing = sorted(h for h in given.values() if h not in headers)
    if missing:
        raise ReplayError(f"column(s) {missing} not in the header {headers}")
    by_norm = {_norm(h): h for h in reversed(headers)}  # the first of equal names wins
    cols = dict(given)
    taken = set(given.values())
    for role in ROLES:
        if role in cols:
            continue
        for alias in ALIASES[role]:
            h = by_norm.get(alias)
            if h is not None and h not in taken:
                cols[role] = h
                taken.add(h)
                break
    need = [r for r in ("start", "energy") if r not in cols]
    if not ("station" in cols or ("lat" in cols and "lon" in cols)):
        need.append("station or lat and lon")
    if need:
        raise ReplayError(f"no column for {', '.join(need)} in the header {headers}; "
                          "name them with --replay-columns role=header,... or [replay.columns]")
    return cols


def parse_time(text: str, fmt: str | None) -> datetime:
    """A timestamp as local wall time (a zone, if given, is dropped: the log's own clock)."""
    text = text.strip()
    if fmt:
        return datetime.strptime(text, fmt)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        pass
    for f in TIME_FORMATS:
        try:
            return datetime.strptime(text, f)
        except ValueError:
            continue
    raise ValueError(f"time {text!r} not understood (ISO 8601, M/D/Y H:M, D.M.Y H:M; or set the time format)")


def parse_duration(text: str) -> float:
    """Seconds from "h:mm:ss", "h:mm" or a number of minutes."""
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"duration {text!r} is not h:mm:ss")
        h, m, s = ([int(p) for p in parts] + [0])[:3]
        return h * 3600.0 + m * 60.0 + s
    minutes = float(text)
    if not math.isfinite(minutes):
        raise ValueError(f"duration {text!r} is not finite")
    return minutes * 60.0


def _number(text: str, what: str) -> float:
    try:
        v = float(text.strip().replace(",", "."))
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} {text!r} is not finite")
    return v


def read_log(path: str | Path, stations: list[StationMeta], columns: dict[str, str] | None = None,
             time_format: str | None = None) -> SessionLog:
    """The usable sessions of a log; a station column is matched to station ids (or names),
    lat/lon columns are used as given (and for a station id not among the stations)."""
    path = Path(path)
    by_key: dict[str, StationMeta] = {}
    for s in stations:
        by_key.setdefault(s.id, s)
        if s.name:
            by_key.setdefault(s.name, s)
    try:
        f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        raise ReplayError(f"session log {path} not found") from None
    except OSError as e:
        raise ReplayError(f"session log {path} cannot be read ({e.strerror or e})") from None
    with f:
        reader = csv.reader(f)
        try:
            headers = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ReplayError(f"session log {path} is empty") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise ReplayError(f"session log {path}: {e}") from None
        try:
            cols = detect_columns(headers, columns)
        except ReplayError as e:
            raise ReplayError(f"session log {path}: {e}") from None
        idx = {role: headers.index(h) for role, h in cols.items()}
        log = SessionLog(path, cols, [])
        rows = iter(reader)
        row_no = 1
        while True:
            try:
                rec = next(rows)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as e:
                raise ReplayError(f"session log {path} line {reader.line_num}: {e}") from None
            row_no += 1
            if not any(x.strip() for x in rec):
                continue
            try:
                log.sessions.append(_session(row_no, rec, idx, by_key, time_format))
            except (ValueError, IndexError) as e:
                log.skipped.append((row_no, str(e) if not isinstance(e, IndexError) else "too few columns"))
    if not log.sessions:
        raise ReplayError(f"session log {path}: no usable session"
                          + (f" ({log.skipped[0][1]} on row {log.skipped[0][0]}, ...)" if log.skipped else ""))
    return log


def _session(row: int, rec: list[str], idx: dict[str, int], by_key: dict[str, StationMeta],
             fmt: str | None) -> LogSession:
    def cell(role: str) -> str | None:
        if role not in idx:
            return None
        v = rec[idx[role]].strip()
        return v or None

    start_text = cell("start")
    if start_text is None:
        raise ValueError("no start time")
    start = parse_time(start_text, fmt)
    energy_text = cell("energy")
    if energy_text is None:
        raise ValueError("no energy")
    energy = _number(energy_text, "energy")
    if energy <= 0:
        raise ValueError(f"energy {energy:g} kWh is not above 0")
    plugged = None
    if cell("end") is not None:
        plugged = (parse_time(cell("end"), fmt) - start).total_seconds()
    elif cell("duration") is not None:
        plugged = parse_duration(cell("duration"))
    if plugged is not None and plugged < 0:
        raise ValueError("ends before it starts")
    dwell = 0.0
    if plugged is not None and cell("charging_time") is not None:
        dwell = max(0.0, plugged - parse_duration(cell("charging_time")))
    lat_text, lon_text = cell("lat"), cell("lon")
    station = cell("station")
    meta = by_key.get(station) if station is not None else None
    if meta is not None:
        lat, lon = meta.lat, meta.lon
    elif lat_text is not None and lon_text is not None:
        lat, lon = _number(lat_text, "latitude"), _number(lon_text, "longitude")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"position {lat:g}, {lon:g} is not a latitude and longitude")
    elif station is not None:
        raise ValueError(f"unknown charge point {station!r} and no position")
    else:
        raise ValueError("no charge point or position")
    return LogSession(row, start, energy, lat, lon, dwell)


def plans(log: SessionLog, models: list[CarModel], car_mix: tuple[tuple[str, float], ...],
          target_soc: float, seed: int, copies: float = 1.0, jitter_s: float = 1800.0,
          no_show: float = DEFAULT_NO_SHOW, no_app: float = 0.0) -> list[CarPlan]:
    """One car per session: it asks at the session's place when the session started, for the
    session's energy, with a model from the car mix whose battery can take that energy (the
    largest drawn if none can). copies > 1 adds load: each session again (the fraction at
    random), shifted by up to ±jitter_s; the log itself is copy 0, unshifted. A share no_show
    of the cars never comes, a share no_app drives without the app; both drawn per car from
    the seed, so every policy replays the same cars."""
    for name, share in (("no_show", no_show), ("no_app", no_app)):
        if not 0.0 <= share <= 1.0:
            raise ReplayError(f"{name} {share:g} is not a share between 0 and 1")
    rng = np.random.default_rng(seed)
    fleet, probs = mix(models, car_mix)
    day0 = min(s.start for s in log.sessions).replace(hour=0, minute=0, second=0, microsecond=0)
    base = [((s.start - day0).total_seconds(), s) for s in log.sessions]
    timed = list(base)
    whole, frac = int(copies), copies - int(copies)
    for k in range(1, whole + (1 if frac > 0 else 0)):
        keep = rng.random(len(base)) < (1.0 if k < whole else frac)
        shift = rng.uniform(-jitter_s, jitter_s, len(base))
        timed += [(max(0.0, t + d), s) for (t, s), d, y in zip(base, shift, keep) if y]
    timed.sort(key=lambda x: (x[0], x[1].row))
    n = len(timed)
    draws = rng.choice(len(fleet), (n, 4), p=probs)  # a few tries for a battery that fits
    # drawn after the models, so a share of 0 leaves every other draw as it was
    absent = rng.random(n) < no_show
    without_app = rng.random(n) < no_app
    width = len(str(max(n - 1, 0)))
    out = []
    for i, (t, s) in enumerate(timed):
        cands = [fleet[int(j)] for j in draws[i]]
        fit = [m for m in cands if s.energy_kwh <= m.battery_kwh * (target_soc - MIN_ASK_SOC)]
        m = fit[0] if fit else max(cands, key=lambda x: x.battery_kwh)
        soc_ask, target = soc_for_energy(s.energy_kwh, m.battery_kwh, target_soc)
        out.append(CarPlan(car=f"r{i:0{width}d}", appear_s=t, origin=(s.lat, s.lon), ask_at=(s.lat, s.lon),
                           leg_km=0.0, model=m, soc_start=soc_ask, soc_ask=soc_ask, target_soc=target,
                           no_show=bool(absent[i]), dwell_s=s.dwell_s, app=not bool(without_app[i])))
    return out


def span_hours(plans_: list[CarPlan]) -> float:
    """Hours from the log's first midnight to its last start, at least one day."""
    last = max((p.appear_s for p in plans_), default=0.0)
    return max(24.0, math.ceil(last / 3600.0 + 1e-9))


"""Scenario files: a city's demand (and optionally a session log to replay) in TOML.

    stations = "stations.json"          # optional, relative to this file
    models = "ev_models.json"           # optional
    [demand]                            # any of DemandParams' fields (docs/simulation.md)
    centre = [52.52, 13.405]
    profile = [0.3, 0.2, ...]           # 24 weights, hour 0 to 23
    energy_kwh = [6.0, 14.0]
    car_mix = { "Nissan Leaf" = 6, "Renault Zoe ZE40 R110" = 1 }
    [replay]
    file = "sessions.csv"
    time_format = "%m/%d/%Y %H:%M"      # optional; ISO 8601 and common forms are detected
    [replay.columns]                    # optional; common headers are detected
    start = "Start Date"

The same checks serve the command line (check_demand), so a value is refused with the same
message wherever it comes from; the command line overrides the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recarga.core.config_file import ConfigError, check_table, read_toml

SCHEMA = {
    "": {"stations": str, "models": str},
    "demand": {
        "centre": list, "centre_share": (int, float), "centre_sigma_km": (int, float),
        "station_sigma_km": (int, float), "leg_km": list, "ask_soc": list, "energy_kwh": list,
        "target_soc": (int, float), "car_mix": dict, "no_show": (int, float), "dwell_min": list,
        "no_app": (int, float), "profile": list,
    },
    "replay": {"file": str, "columns": dict, "time_format": str},
}
BOUNDS = {
    ("demand", "centre_share"): (0, 1),
    ("demand", "centre_sigma_km"): (0.01, 1000),
    ("demand", "station_sigma_km"): (0, 100),
    ("demand", "target_soc"): (0.05, 1),
    ("demand", "no_show"): (0, 0.99),
    ("demand", "no_app"): (0, 1),
}
# [lo, hi] pairs: (smallest lo, largest hi)
PAIRS = {"leg_km": (0.0, 500.0), "ask_soc": (0.0, 1.0), "energy_kwh": (0.1, 300.0),
         "dwell_min": (0.0, 7 * 24 * 60.0)}


@dataclass(frozen=True)
class ReplaySpec:
    file: Path
    columns: dict[str, str] = field(default_factory=dict)  # role -> header (replay.ROLES)
    time_format: str | None = None


@dataclass(frozen=True)
class Scenario:
    demand: dict[str, Any] = field(default_factory=dict)  # DemandParams fields
    replay: ReplaySpec | None = None
    stations: Path | None = None
    models: Path | None = None


def _numbers(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in value):
        raise ConfigError(f"{where} must be a list of numbers")
    if not all(math.isfinite(v) for v in value):
        raise ConfigError(f"{where} must hold finite numbers")
    return [float(v) for v in value]


def check_demand(values: dict[str, Any], where: str = "[demand]") -> dict[str, Any]:
    """DemandParams fields from checked raw values (lists, a car_mix table), or a ConfigError
    naming the key. Scalars are checked by check_table (file) or here (command line)."""
    check_table("demand", values, SCHEMA, BOUNDS, where)
    out: dict[str, Any] = {}
    for key, value in values.items():
        at = f"{where} {key}"
        if key in PAIRS:
            lo_ok, hi_ok = PAIRS[key]
            pair = _numbers(value, at)
            if len(pair) != 2 or not lo_ok <= pair[0] <= pair[1] <= hi_ok:
                raise ConfigError(f"{at} must be [low, high] with {lo_ok:g} <= low <= high <= {hi_ok:g}")
            out[key] = (pair[0], pair[1])
        elif key == "centre":
            c = _numbers(value, at)
            if len(c) != 2 or not (-90 <= c[0] <= 90 and -180 <= c[1] <= 180):
                raise ConfigError(f"{at} must be [lat, lon] in degrees")
            out[key] = (c[0], c[1])
        elif key == "profile":
            prof = _numbers(value, at)
            if len(prof) != 24 or min(prof) < 0 or sum(prof) <= 0:
                raise ConfigError(f"{at} must be 24 weights (hours 0-23), none negative, not all 0")
            out[key] = tuple(prof)
        elif key == "car_mix":
            mix = []
            for name, w in value.items():
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w > 0):
                    raise ConfigError(f"{at} weight of {name!r} must be a number above 0")
                mix.append((str(name), float(w)))
            if not mix:
                raise ConfigError(f"{at} names no car model")
            out[key] = tuple(mix)
        else:
            out[key] = float(value)
    return out


def check_consistency(fields: dict[str, Any], where: str = "demand") -> None:
    """Checks across keys, after the command line overrode the file."""
    target = fields.get("target_soc", 0.80)
    ask = fields.get("ask_soc")
    if ask is not None and ask[1] >= target:
        raise ConfigError(f"{where}: ask_soc {ask[1]:g} must be below target_soc {target:g}")


def load(path: str | Path) -> Scenario:
    """A scenario file, checked: unknown keys, wrong types and out-of-range values are
    ConfigErrors naming the file and key."""
    path = Path(path)
    raw = read_toml(path)
    try:
        check_table("", raw, SCHEMA, BOUNDS)
        demand = check_demand(raw.get("demand", {}), "[demand]")
        check_consistency(demand, "[demand]")
        replay = None
        if "replay" in raw:
            r = check_table("replay", raw["replay"], SCHEMA, BOUNDS)
            if "file" not in r:
                raise ConfigError("[replay] needs file (the session log CSV)")
            cols = raw["replay"].get("columns", {})  # check_table returns no sub-tables
            if not all(isinstance(v, str) for v in cols.values()):
                raise ConfigError("[replay] columns must map roles to header names (strings)")
            replay = ReplaySpec(path.parent / r["file"], dict(cols), r.get("time_format"))
    except ConfigError as e:
        raise ConfigError(f"scenario {path}: {e}") from None
    return Scenario(demand, replay,
                    path.parent / raw["stations"] if "stations" in raw else None,
                    path.parent / raw["models"] if "models" in raw else None)

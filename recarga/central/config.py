"""Central's configuration file (TOML): loading, defaults and clear errors.

deploy/central.example.toml documents every key. Unknown keys and wrong types are refused
with a message naming them, as the gateway's config does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recarga.core import config_file
from recarga.core.central_broker import central_user
from recarga.core.config_file import (
    BROKER_BOUNDS,
    SELECTION_BOUNDS,
    TICK_BOUNDS,
    Bounds,
    ConfigError,
    Schema,
    broker_fields,
    check_port,
    check_reconnect,
    check_table,
    log_level,
    read_toml,
)
from recarga.core.model import SelectionParams
from recarga.core.protocol import central as PC
from recarga.core.protocol import wire as W
from recarga.core.selection import POLICIES


@dataclass(frozen=True)
class BrokerConfig(config_file.BrokerConfig):
    # load() defaults it to central_user(instance): each instance logs in as a user of its own
    username: str = ""
    # MQTT 5 session expiry: a restarted instance gets its unacknowledged messages again
    # within this; an instance gone for longer leaves the shared subscription
    session_expiry_s: int = 120


@dataclass(frozen=True)
class RegionInfo:
    name: str
    broker_host: str  # the region's broker as cars reach it (the handover target)
    broker_port: int = 1883
    neighbours: tuple[str, ...] = ()  # regions its cars may be sent to; () = every other region


@dataclass(frozen=True)
class OverflowConfig:
    policy: str = "least_completion"
    max_wait_s: float = 1800.0  # offer a busy slot only if it frees within this
    summary_max_age_s: float = 300.0  # a region whose newest summary is older is not offered
    confirm_s: float = 180.0  # after the answer's deadline, the car has this long to confirm
    relay_s: float = 0.5  # of the request's deadline, kept back to relay the answer to the origin
    max_attempts: int = 2  # regions asked per request (the next best when one refuses)
    selection: SelectionParams = SelectionParams()


@dataclass(frozen=True)
class CentralConfig:
    instance: str
    database: Path
    broker: BrokerConfig
    overflow: OverflowConfig
    regions: dict[str, RegionInfo]
    synchronous: str = "FULL"
    tick_s: float = 1.0
    log_level: str = "INFO"


_NUMBER = (int, float)
_SCHEMA: Schema = {
    "": {"instance": str, "database": str, "log_level": str, "tick_s": _NUMBER, "synchronous": str},
    "broker": {"host": str, "port": int, "username": str, "password": str, "password_file": str,
               "keepalive": int, "session_expiry_s": int, "reconnect_min_s": int, "reconnect_max_s": int,
               "tls_ca": str},
    "overflow": {"policy": str, "max_wait_s": _NUMBER, "summary_max_age_s": _NUMBER, "confirm_s": _NUMBER,
                 "relay_s": _NUMBER, "max_attempts": int},
    "selection": {"road_factor": _NUMBER, "speed_kmh": _NUMBER, "safety_margin_soc": _NUMBER, "nearest_k": int},
    "region": {"broker_host": str, "broker_port": int, "neighbours": list},
}

# (section, key) -> inclusive bounds where "not negative" is not enough: what central can
# sensibly run with (a summary older than a day says nothing of a region's slots now)
_BOUNDS: Bounds = {
    **TICK_BOUNDS, **BROKER_BOUNDS, **SELECTION_BOUNDS,
    ("broker", "session_expiry_s"): (10, 86400),
    ("overflow", "max_wait_s"): (0, 7 * 86400),
    ("overflow", "summary_max_age_s"): (1, 86400),
    ("overflow", "confirm_s"): (1, 3600),
    ("overflow", "relay_s"): (0, 60),
    ("overflow", "max_attempts"): (1, 20),
}


_SECTIONS = ("broker", "overflow", "selection", "regions")  # [regions.<name>] tables are checked as "region"


def _check(section: str, table: Any, where: str | None = None) -> dict[str, Any]:
    return check_table(section, table, _SCHEMA, _BOUNDS, where, _SECTIONS)


def _regions(raw: Any) -> dict[str, RegionInfo]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("[regions] must list at least one region: [regions.<name>] broker_host = ...")
    regions = {}
    for name, table in raw.items():
        where = f"[regions.{name}]"
        try:
            PC.check_region(name)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        t = _check("region", table, where)
        if "broker_host" not in t:
            raise ConfigError(f"{where}: missing broker_host (the region's broker as cars reach it)")
        neighbours = t.get("neighbours", [])
        if not all(isinstance(n, str) for n in neighbours):
            raise ConfigError(f"{where} neighbours must be a list of region names")
        regions[name] = RegionInfo(name, t["broker_host"], check_port(t.get("broker_port", 1883), f"{where} broker_port"),
                                   tuple(neighbours))
    for r in regions.values():
        unknown = [n for n in r.neighbours if n not in regions or n == r.name]
        if unknown:
            raise ConfigError(f"[regions.{r.name}] neighbours {unknown}: not another configured region")
    return regions


def load(path: str | Path) -> CentralConfig:
    path = Path(path)
    raw = read_toml(path)
    top = _check("", raw)
    for key in ("instance", "database"):
        if key not in top:
            raise ConfigError(f"{path}: missing required key {key!r}")
    if not W.ID_RE.match(top["instance"]):
        raise ConfigError(f"instance {top['instance']!r} must be 1-32 of A-Z a-z 0-9 _ -")
    base = path.parent
    broker = broker_fields(_check("broker", raw.get("broker", {})), base)
    check_reconnect(broker)
    broker.setdefault("username", central_user(top["instance"]))
    overflow = _check("overflow", raw.get("overflow", {}))
    if overflow.get("policy", "least_completion") not in POLICIES:
        raise ConfigError(f"[overflow] policy {overflow['policy']!r} unknown; one of {', '.join(POLICIES)}")
    selection = SelectionParams(**_check("selection", raw.get("selection", {})))
    synchronous = top.get("synchronous", "FULL").upper()
    if synchronous not in ("FULL", "NORMAL"):
        raise ConfigError("synchronous must be FULL or NORMAL")
    return CentralConfig(
        instance=top["instance"],
        database=base / top["database"],
        broker=BrokerConfig(**broker),
        overflow=OverflowConfig(selection=selection, **overflow),
        regions=_regions(raw.get("regions")),
        synchronous=synchronous,
        tick_s=float(top.get("tick_s", 1.0)),  # within _BOUNDS
        log_level=log_level(top.get("log_level", "INFO")),
    )

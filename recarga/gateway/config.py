"""Gateway configuration file (TOML): loading, defaults and clear errors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recarga.core import resources
from recarga.core.config_file import (
    BROKER_BOUNDS,
    SELECTION_BOUNDS,
    TICK_BOUNDS,
    Bounds,
    BrokerConfig,
    ConfigError,
    Schema,
    broker_fields,
    check_reconnect,
    check_table,
    log_level,
    read_toml,
)
from recarga.core.model import SelectionParams
from recarga.core.protocol import device as D
from recarga.core.selection import POLICIES
from recarga.core.sites import DEFAULT_SITE_DISTANCE_M
from recarga.gateway.engine import EngineConfig
from recarga.gateway.overflow import OverflowSettings
from recarga.gateway.ratelimit import RateLimit


@dataclass(frozen=True)
class GatewayConfig:
    engine: EngineConfig
    broker: BrokerConfig
    database: Path
    stations: Path
    # devices of one operator within this distance form a site (recarga.core.sites); 0: none
    site_distance_m: float = DEFAULT_SITE_DISTANCE_M
    synchronous: str = "FULL"
    sync_thread: bool = False  # fsync the WAL on a thread of its own (group commit; gateway/syncer.py)
    tick_s: float = 1.0
    log_level: str = "INFO"
    # off unless configured: without a bridge to central nobody would answer
    overflow: OverflowSettings = OverflowSettings(enabled=False)


CAR_REPLY_TIMEOUT_S = 10.0  # the car firmware's wait for a reply (car_logic reply_timeout_ms)

_SCHEMA: Schema = {
    "": {"region": str, "database": str, "stations": str, "site_distance_m": (int, float), "log_level": str,
         "tick_s": (int, float), "synchronous": str, "sync_thread": bool},
    "broker": {"host": str, "port": int, "username": str, "password": str, "password_file": str,
               "keepalive": int, "reconnect_min_s": int, "reconnect_max_s": int, "tls_ca": str},
    "reservations": {"hold_s": (int, float), "grace_s": (int, float), "expected_session_s": (int, float),
                     "min_remaining_s": (int, float), "max_wait_s": (int, float), "request_memory_s": (int, float),
                     "retry_min_s": (int, float), "retry_max_s": (int, float)},
    "selection": {"policy": str, "road_factor": (int, float), "speed_kmh": (int, float),
                  "safety_margin_soc": (int, float), "nearest_k": int},
    "overflow": {"enabled": bool, "wait_limit_s": (int, float), "answer_within_s": (int, float),
                 "summary_min_interval_s": (int, float), "summary_refresh_s": (int, float)},
    "rate_limit": {"requests_per_min": (int, float), "burst": int},
}


# (section, key) -> inclusive bounds where "not negative" is not enough: what a region can
# sensibly run with (a zero hold lapses at once)
_BOUNDS: Bounds = {
    **TICK_BOUNDS, **BROKER_BOUNDS, **SELECTION_BOUNDS,
    # a hub's units stand metres apart; beyond a few hundred metres a driver sees other places
    ("", "site_distance_m"): (0, 500),
    ("reservations", "hold_s"): (1, 86400),
    ("reservations", "grace_s"): (0, 86400),
    ("reservations", "expected_session_s"): (60, 86400),
    ("reservations", "min_remaining_s"): (0, 86400),
    ("reservations", "max_wait_s"): (0, 7 * 86400),
    ("reservations", "request_memory_s"): (60, 30 * 86400),
    # when a refused car is told to ask again (no_capacity's retry_after)
    ("reservations", "retry_min_s"): (1, 3600),
    ("reservations", "retry_max_s"): (1, 3600),
    # a car's reserve and its confirm come back to back: a burst below 2 would refuse confirms
    ("rate_limit", "requests_per_min"): (1, 60000),
    ("rate_limit", "burst"): (2, 10000),
}


def _check(section: str, table: Any) -> dict[str, Any]:
    if section == "broker" and isinstance(table, dict) and "client_id" in table:
        raise ConfigError("[broker] client_id: remove it; the broker takes the user name (username) "
                          "as client id, so no client can borrow another's")
    return check_table(section, table, _SCHEMA, _BOUNDS)


def load(path: str | Path) -> GatewayConfig:
    path = Path(path)
    raw = read_toml(path)
    top = _check("", raw)
    for key in ("region", "database"):
        if key not in top:
            raise ConfigError(f"{path}: missing required key {key!r}")
    try:
        D.region_root(top["region"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    base = path.parent
    broker = broker_fields(_check("broker", raw.get("broker", {})), base)
    check_reconnect(broker)
    sel = _check("selection", raw.get("selection", {}))
    policy = sel.pop("policy", "least_completion")
    if policy not in POLICIES:
        raise ConfigError(f"[selection] policy {policy!r} unknown; one of {', '.join(POLICIES)}")
    reservations = _check("reservations", raw.get("reservations", {}))
    if reservations.get("retry_min_s", 60) > reservations.get("retry_max_s", 1800):
        raise ConfigError("[reservations] retry_min_s must not be above retry_max_s")
    engine = EngineConfig(region=top["region"], policy=policy, selection=SelectionParams(**sel),
                          rate_limit=RateLimit(**_check("rate_limit", raw.get("rate_limit", {}))),
                          **reservations)
    overflow = _overflow(_check("overflow", raw.get("overflow", {})))
    synchronous = top.get("synchronous", "FULL").upper()
    if synchronous not in ("FULL", "NORMAL"):
        raise ConfigError("synchronous must be FULL or NORMAL")
    return GatewayConfig(
        engine=engine,
        broker=BrokerConfig(**broker),
        database=base / top["database"],
        # without a station file of its own: the Berlin register shipped with the package
        stations=base / top["stations"] if "stations" in top else resources.BERLIN_STATIONS,
        site_distance_m=float(top.get("site_distance_m", DEFAULT_SITE_DISTANCE_M)),  # within _BOUNDS
        synchronous=synchronous,
        sync_thread=top.get("sync_thread", False),
        tick_s=float(top.get("tick_s", 1.0)),  # within _BOUNDS
        log_level=log_level(top.get("log_level", "INFO")),
        overflow=overflow,
    )


def _overflow(table: dict[str, Any]) -> OverflowSettings:
    o = OverflowSettings(**{"enabled": False, **table})
    if not 0 < o.answer_within_s < CAR_REPLY_TIMEOUT_S:
        # the car must get its one reply before it gives up waiting and asks again
        raise ConfigError(f"[overflow] answer_within_s must be above 0 and below {CAR_REPLY_TIMEOUT_S:.0f} "
                          "(the car waits that long for its reply)")
    if not 0 < o.summary_min_interval_s <= o.summary_refresh_s:
        raise ConfigError("[overflow] summary_min_interval_s must be above 0 and at most summary_refresh_s")
    return o

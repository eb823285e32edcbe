"""What the gateway's and central's TOML configuration files share: one error type, reading
the file, and the MQTT broker connection settings."""
from __future__ import annotations

import ipaddress
import math
import ssl
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recarga.core.mqtt_tls import client_context


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file, key or value."""


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = "gateway"
    password: str = field(default="", repr=False)
    keepalive: int = 30
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    # TLS with this CA file (PEM) trusted and the broker's name checked against `host`;
    # None: plain MQTT, which broker_fields allows to a loopback host only
    tls_ca: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's TOML, or a ConfigError naming the file."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def check_port(value: int, where: str) -> int:
    if not 0 < value < 65536:
        raise ConfigError(f"{where} must be 1..65535")
    return value


TLS_PORT = 8883  # the port of the brokers' TLS listener unless configured otherwise
PLAIN_PORT = 1883


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (where plain MQTT never crosses a network)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def broker_fields(table: dict[str, Any], base: Path) -> dict[str, Any]:
    """A checked [broker] table as BrokerConfig's fields: `password_file` (relative to the
    config file's directory `base`) becomes the password it holds (its first line);
    `tls_ca` (relative to `base` too) must be a readable PEM CA file, and switches the
    default port to TLS_PORT. Plain MQTT to a host that is not loopback is refused: the
    password would cross the network in clear text."""
    fields = dict(table)
    if "password_file" in fields:
        pw_path = base / fields.pop("password_file")
        try:
            fields["password"] = pw_path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"[broker] password_file: {e}") from None
    if "tls_ca" in fields:
        ca = base / fields["tls_ca"]
        try:
            client_context(ca)
        except FileNotFoundError:
            raise ConfigError(f"[broker] tls_ca: CA file {ca} not found") from None
        except ssl.SSLError:  # an OSError too: first
            raise ConfigError(f"[broker] tls_ca: {ca} holds no PEM certificate") from None
        except OSError as e:
            raise ConfigError(f"[broker] tls_ca: CA file {ca} cannot be read ({e.strerror or e})") from None
        fields["tls_ca"] = ca
    fields.setdefault("port", TLS_PORT if "tls_ca" in fields else PLAIN_PORT)
    check_port(fields["port"], "[broker] port")
    host = fields.get("host", BrokerConfig.host)
    if "tls_ca" not in fields and not is_loopback(host):
        raise ConfigError(f"[broker] host {host!r} is not loopback: set tls_ca (the broker's CA file) so the "
                          "connection is TLS; plain MQTT is for a broker on this machine only")
    return fields


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_number(value: float, where: str) -> float:
    """A number from a config file: finite (TOML allows nan and inf) and not negative."""
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, not {value}")
    if value < 0:
        raise ConfigError(f"{where} must not be negative")
    return value


Schema = dict[str, dict[str, type | tuple[type, ...]]]  # section ("" top level) -> key -> type(s)
Bounds = dict[tuple[str, str], tuple[float, float]]  # (section, key) -> inclusive bounds

# bounds both services share: what a broker link and the selection can sensibly run with
BROKER_BOUNDS: Bounds = {
    ("broker", "keepalive"): (5, 3600),
    ("broker", "reconnect_min_s"): (1, 3600),
    ("broker", "reconnect_max_s"): (1, 3600),
}
SELECTION_BOUNDS: Bounds = {
    ("selection", "road_factor"): (1, 5),  # below 1 a road would be shorter than the line
    ("selection", "speed_kmh"): (1, 200),
    ("selection", "safety_margin_soc"): (0, 0.5),
    ("selection", "nearest_k"): (1, 100),
}
TICK_BOUNDS: Bounds = {("", "tick_s"): (0.01, 60)}  # 0 would spin the loop; above a minute timers lag


def check_table(section: str, table: Any, schema: Schema, bounds: Bounds, where: str | None = None,
                sections: Sequence[str] | None = None) -> dict[str, Any]:
    """One table of a config file checked against `schema[section]`: known keys, the right
    types (a bool only where a bool is meant), numbers finite and within `bounds` (not
    negative where no bound is given). Returns its values but the sub-tables; at the top
    level (section "") a sub-table must be one of `sections` (default: the schema's)."""
    where = where or (f"[{section}]" if section else "top level")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    allowed = schema[section]
    for key, value in table.items():
        if isinstance(value, dict) and not section:
            sections = sorted(sections or (k for k in schema if k))
            if key not in sections:
                raise ConfigError(f"unknown section [{key}]; allowed: {', '.join(sections)}")
            continue
        if key not in allowed:
            raise ConfigError(f"unknown key {key!r} at {where}; allowed: {', '.join(sorted(allowed))}")
        if isinstance(value, bool) != (allowed[key] is bool) or not isinstance(value, allowed[key]):
            raise ConfigError(f"{where} {key} has the wrong type ({type(value).__name__})")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(value, f"{where} {key}")
            lo, hi = bounds.get((section, key), (0, math.inf))
            if not lo <= value <= hi:
                raise ConfigError(f"{where} {key} = {value} outside {lo:.15g}..{hi:.15g}")
    return {k: v for k, v in table.items() if not isinstance(v, dict)}


def check_reconnect(broker: dict[str, Any]) -> None:
    if broker.get("reconnect_min_s", BrokerConfig.reconnect_min_s) > broker.get("reconnect_max_s",
                                                                                 BrokerConfig.reconnect_max_s):
        raise ConfigError("[broker] reconnect_min_s must not be above reconnect_max_s")


def log_level(value: str) -> str:
    """A log level name (any case) as logging knows it."""
    level = value.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level {value!r} unknown; one of {', '.join(LOG_LEVELS)}")
    return level


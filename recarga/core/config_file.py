"""What the gateway's and central's TOML configuration files share: one error type, reading
the file, and the MQTT broker connection settings."""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file, key or value."""


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = "gateway"
    password: str = field(default="", repr=False)
    keepalive: int = 30
    client_id: str = ""  # default: recarga-gateway-<region>
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30


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


def broker_fields(table: dict[str, Any], base: Path) -> dict[str, Any]:
    """A checked [broker] table as BrokerConfig's fields: `password_file` (relative to the
    config file's directory `base`) becomes the password it holds (its first line)."""
    fields = dict(table)
    if "password_file" in fields:
        pw_path = base / fields.pop("password_file")
        try:
            fields["password"] = pw_path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"[broker] password_file: {e}") from None
    check_port(fields.get("port", 1883), "[broker] port")
    return fields


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_number(value: float, where: str) -> float:
    """A number from a config file: finite (TOML allows nan and inf) and not negative."""
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, not {value}")
    if value < 0:
        raise ConfigError(f"{where} must not be negative")
    return value


def log_level(value: str) -> str:
    """A log level name (any case) as logging knows it."""
    level = value.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level {value!r} unknown; one of {', '.join(LOG_LEVELS)}")
    return level


def tick_seconds(value: float) -> float:
    """How often a service runs its timers: above 0 (0 would spin the loop)."""
    if value <= 0:
        raise ConfigError("tick_s must be above 0")
    return float(value)

"""Devices: provisioning car and station boards and flashing the firmware onto them.

- `recarga.devices.provision`: a new device's broker user (Mosquitto password file), its ACL block
  (from recarga.core.protocol.access) and its config.json.
- `recarga.devices.flash`: copy firmware/lib, the board's firmware and its config.json to a board with
  mpremote (optionally compiled with mpy-cross), verify what is on the board, reset it.
- `recarga.devices.cli`: the `recarga-device` command (`python -m recarga.devices` from a checkout).

docs/flashing.md is the manual; docs/firmware.md describes the board's filesystem and config.
"""
from __future__ import annotations

import json
from pathlib import Path

KINDS = ("car", "station")


def read_json_object(path: Path, what: str, error: type[Exception], missing_hint: str = "") -> dict:
    """A JSON object from a file, or `error` with one clear line (what = "config", "template")."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} not found{missing_hint}") from None
    except (OSError, ValueError) as e:
        raise error(f"{what} {path} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object")
    return data

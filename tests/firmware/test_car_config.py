"""Car config.json validation (firmware/car/car_config.py + lib config) and the halt on a bad
or missing config, on the real MicroPython unix port with a 96 KB heap."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from harness import micropython as mp

VIRTUAL_MP = mp.ROOT / "boards" / "virtual" / "mp"  # emulated machine (Pin) for the halt's LED

# docs/firmware.md's example, as provisioning writes it
GOOD = {
    "kind": "car", "id": "car-0001", "region": "berlin",
    "wifi": {"ssid": "recarga", "password": "secret"},
    "broker": {"host": "192.168.1.10", "port": 1883, "user": "car-0001", "password": "pw", "keepalive": 30},
    "log": "info",
    "pins": {"battery_adc": 34, "status_led": 2},
    "battery": {"divider": 130.0, "samples": 9,
                "curve": [[300, 0.0], [345, 0.1], [360, 0.3], [372, 0.5], [388, 0.8], [403, 1.0]]},
    "thresholds": {"ask_below": 0.20, "clear_above": 0.25},
    "model": {"name": "Volkswagen ID.3 58 kWh", "battery_kwh": 58.0, "consumption_kwh_100km": 16.6,
              "max_ac_kw": 11.0, "max_dc_kw": 100.0, "target_soc": 0.8},
    "route": {"speed_kmh": 30, "loop": True, "points": [[52.5200, 13.4050], [52.5300, 13.4200]]},
    "regions": [{"name": "berlin", "host": "192.168.1.10", "port": 1883, "bounds": [52.33, 13.08, 52.68, 13.77]}],
    "telemetry_s": 30,
}


def check(tmp_path: Path, cfg: dict | str) -> dict:
    """Validate on MicroPython: {"ok": cfg} or {"error": message}."""
    (tmp_path / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return mp.run_json("""
import json, config, car_config
try:
    print(json.dumps({"ok": car_config.load("config.json")}))
except config.ConfigError as e:
    print(json.dumps({"error": str(e)}))
""", board="car", cwd=tmp_path)[0]


def test_the_documented_example_is_valid(tmp_path):
    got = check(tmp_path, GOOD)["ok"]
    assert got["model"]["battery_kwh"] == 58.0 and got["battery"]["samples"] == 9


def test_defaults_are_filled_in(tmp_path):
    cfg = copy.deepcopy(GOOD)
    del cfg["thresholds"], cfg["telemetry_s"], cfg["battery"]["samples"], cfg["route"]["loop"]
    got = check(tmp_path, cfg)["ok"]
    assert got["thresholds"] == {"ask_below": 0.2, "clear_above": 0.25}
    assert (got["telemetry_s"], got["battery"]["samples"], got["route"]["loop"]) == (30, 9, True)


def broken(path: str, value) -> dict:
    cfg = copy.deepcopy(GOOD)
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        node = node[int(p) - 1] if isinstance(node, list) else node[p]
    if value is KeyError:
        del node[leaf]
    elif isinstance(node, list):
        node[int(leaf) - 1] = value
    else:
        node[leaf] = value
    return cfg


@pytest.mark.parametrize("path,value,message", [
    ("pins.battery_adc", 25, "config error: pins.battery_adc must be an ADC1 pin (32-39)"),
    ("pins.status_led", 36, "config error: pins.status_led must be between 0 and 33, got 36"),
    ("battery.divider", KeyError, "config error: battery.divider is missing"),
    ("battery.curve.3", [340, 0.3], "config error: battery.curve.3: volts must rise along the curve"),
    ("battery.curve.2", [345, 1.5], "config error: battery.curve.2.2 must be between 0.0 and 1.0, got 1.5"),
    ("thresholds.clear_above", 0.15, "config error: thresholds.clear_above must be above thresholds.ask_below"),
    ("model.max_dc_kw", "fast", "config error: model.max_dc_kw must be a number"),
    ("model.target_soc", 0.22, "config error: model.target_soc must be above thresholds.clear_above"),
    ("model.battery_kwh", 0, "config error: model.battery_kwh must be between 1 and 300, got 0"),
    ("route.points", [], "config error: route.points length must be at least 1, got 0"),
    ("route.points", [[52.5, 13.4]] * 33, "config error: route.points length must be at most 32, got 33"),
    ("battery.curve", [[300 + i, i / 16] for i in range(17)],
     "config error: battery.curve length must be at most 16, got 17"),
    ("route.points.1", [95, 13.4], "config error: route.points.1.1 must be between -90.0 and 90.0, got 95"),
    ("regions.1.bounds", [52.68, 13.08, 52.33, 13.77],
     "config error: regions.1.bounds must be [lat_min, lon_min, lat_max, lon_max]"),
    ("regions", GOOD["regions"] * 9, "config error: regions length must be at most 8, got 9"),
    ("regions.1.name", "berlin/x", "config error: regions.1.name must be 1-32 of A-Z a-z 0-9 _ -"),
    ("kind", "station", "config error: kind must be 'car' for this firmware, got 'station'"),
])
def test_bad_values_give_one_clear_line(tmp_path, path, value, message):
    assert check(tmp_path, broken(path, value)) == {"error": message}


def test_dc_only_and_ac_only_cars_are_fine_but_not_neither(tmp_path):
    assert "ok" in check(tmp_path, broken("model.max_ac_kw", 0))
    cfg = broken("model.max_ac_kw", 0)
    cfg["model"]["max_dc_kw"] = 0
    assert check(tmp_path, cfg) == {"error": "config error: model.max_ac_kw or model.max_dc_kw must be above 0"}


@pytest.mark.parametrize("content,line", [
    (None, "config error: config.json not found"),
    ("{not json", "config error: config.json is not valid JSON"),
    (json.dumps(broken("model.target_soc", KeyError)), "config error: model.target_soc is missing"),
])
def test_main_halts_with_one_line_and_no_crash_loop(tmp_path, content, line):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    (tmp_path / "main.py").write_text((mp.CAR / "main.py").read_text())
    board = mp.MicroPython(tmp_path / "main.py", board="car", cwd=tmp_path, extra_path=[VIRTUAL_MP])
    with board:
        board.wait_line(line, timeout=10)
        time.sleep(1.0)
        assert board.running  # halted, not crashed and not rebooting
        out = board.lines()
    assert out == [line], out

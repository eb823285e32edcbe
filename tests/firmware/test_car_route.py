"""Car route and region lookup (firmware/car/route.py) on the real MicroPython, 96 KB heap."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness import micropython as mp


def run_mp(tmp_path: Path, code: str) -> list:
    """Run `code` on micropython (96 KB heap, firmware/car on the path); its JSON lines."""
    return mp.run_json(code, board="car", cwd=tmp_path)


def haversine(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


# three legs going north, then east (roughly 1.11 km and 0.68 km)
POINTS = [[52.50, 13.40], [52.51, 13.40], [52.51, 13.41]]


def test_distance_and_speed(tmp_path):
    got = run_mp(tmp_path, f"""
import json
from route import Route, haversine_km
r = Route({POINTS}, 36, loop=False)   # 36 km/h = 10 m/s
out = {{"len": r.length_km, "d01": haversine_km(52.50, 13.40, 52.51, 13.40), "pos": []}}
for _ in range(4):
    r.advance(30000)                  # 30 s = 300 m
    out["pos"].append([r.lat, r.lon, r.travelled_km])
for _ in range(100):
    r.advance(30000)
out["end"] = [r.lat, r.lon, r.stopped]
print(json.dumps(out))
""")[0]
    d01 = haversine(52.50, 13.40, 52.51, 13.40)
    d12 = haversine(52.51, 13.40, 52.51, 13.41)
    assert got["d01"] == pytest.approx(d01, rel=1e-6)
    assert got["len"] == pytest.approx(d01 + d12, rel=1e-6)
    for i, (lat, lon, km) in enumerate(got["pos"][:3]):
        assert km == pytest.approx(0.3 * (i + 1), rel=1e-6)
        assert lon == pytest.approx(13.40)
        assert haversine(52.50, 13.40, lat, lon) == pytest.approx(0.3 * (i + 1), rel=1e-3)
    lat, lon, km = got["pos"][3]  # 1.2 km: 0.088 km into the eastward leg
    assert lat == pytest.approx(52.51)
    assert haversine(52.51, 13.40, lat, lon) == pytest.approx(1.2 - d01, rel=1e-3)
    assert got["end"] == [pytest.approx(52.51), pytest.approx(13.41), True]  # stops at the end


def test_loop_goes_back_to_the_start(tmp_path):
    got = run_mp(tmp_path, f"""
import json
from route import Route
r = Route({POINTS}, 36, loop=True)
total = r.length_km
r.advance(int(total / 36 * 3600000) + 30000)   # once round + 300 m
print(json.dumps([r.length_km, r.lat, r.lon, r.stopped, r.travelled_km]))
""")[0]
    length, lat, lon, stopped, km = got
    closing = haversine(52.51, 13.41, 52.50, 13.40)
    assert length == pytest.approx(haversine(52.50, 13.40, 52.51, 13.40) + haversine(52.51, 13.40, 52.51, 13.41)
                                   + closing, rel=1e-6)
    assert not stopped
    assert km == pytest.approx(0.3, abs=1e-3)
    assert haversine(52.50, 13.40, lat, lon) == pytest.approx(0.3, rel=1e-2)


def test_serial_override_pins_the_position_until_resume(tmp_path):
    got = run_mp(tmp_path, f"""
import json
from route import Route
r = Route({POINTS}, 36)
r.advance(30000)
r.set_position(52.40, 13.06)
r.advance(30000)
a = [r.lat, r.lon]
r.resume()
b = [r.lat, r.lon, r.travelled_km]
one = Route([[52.5, 13.4]], 50)
one.advance(60000)
print(json.dumps([a, b, [one.lat, one.lon]]))
""")[0]
    assert got[0] == [52.40, 13.06]
    assert got[1][2] == pytest.approx(0.3)  # the route did not move while overridden
    assert got[2] == [52.5, 13.4]


def test_region_lookup(tmp_path):
    regions = [{"name": "berlin", "bounds": [52.33, 13.08, 52.68, 13.77]},
               {"name": "potsdam", "bounds": [52.30, 12.90, 52.45, 13.10]},
               {"name": "hamburg", "bounds": [53.39, 9.73, 53.74, 10.33]}]
    got = run_mp(tmp_path, f"""
import json
from route import find_region
R = [r["bounds"] for r in {json.dumps(regions)}] + [None]   # None: the home region, no bounds
print(json.dumps([
    find_region(R, 52.52, 13.40),          # berlin
    find_region(R, 52.40, 13.00),          # potsdam only
    find_region(R, 52.40, 13.09),          # both: the first that contains it
    find_region(R, 52.40, 13.09, 1),       # both: the current one wins
    find_region(R, 53.55, 10.00, 0),       # left berlin for hamburg
    find_region(R, 48.14, 11.58),          # nowhere
    find_region(R, 52.33, 13.08),          # on the boundary counts as inside
]))
""")[0]
    assert got == [0, 1, 0, 1, 2, -1, 0]

"""Geometry on the sphere (recarga/core/geo.py): great-circle distances, points on the sphere and
their chords, degree scales at a latitude, local east/north km."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recarga.core import geo

R = geo.EARTH_RADIUS_KM


def random_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-89.0, 89.0, n), rng.uniform(-180.0, 180.0, n)


def test_great_circle_distances_of_known_arcs():
    assert geo.haversine_km(0.0, 0.0, 0.0, 1.0) == pytest.approx(geo.KM_PER_DEG_LAT, rel=1e-12)
    assert geo.haversine_km(0.0, 0.0, 90.0, 0.0) == pytest.approx(math.pi / 2 * R, rel=1e-12)
    # antipodes: the haversine loses precision there (asin near 1), still within metres
    assert geo.haversine_km(10.0, 20.0, -10.0, -160.0) == pytest.approx(math.pi * R, abs=1e-3)
    assert geo.haversine_km(52.52, 13.405, 52.52, 13.405) == 0.0
    # Berlin - Paris, about 878 km on the mean sphere
    assert geo.haversine_km(52.52, 13.405, 48.8566, 2.3522) == pytest.approx(877.5, abs=1.0)
    assert geo.KM_PER_DEG_LAT == pytest.approx(111.195, abs=1e-3)


def test_the_array_distance_matches_the_scalar_and_broadcasts():
    lat1, lon1 = random_points(200, 1)
    lat2, lon2 = random_points(200, 2)
    got = geo.haversine_km_np(lat1, lon1, lat2, lon2)
    want = [geo.haversine_km(a, b, c, d) for a, b, c, d in zip(lat1, lon1, lat2, lon2)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-9)
    one = geo.haversine_km_np(40.4, -3.7, lat2, lon2)  # one point against many
    assert one == pytest.approx([geo.haversine_km(40.4, -3.7, c, d) for c, d in zip(lat2, lon2)], rel=1e-12)


def test_chords_between_sphere_points_convert_to_great_circle_distances():
    lat, lon = random_points(300, 3)
    xyz = geo.sphere_xyz(lat, lon)
    assert xyz.shape == (300, 3)
    assert np.linalg.norm(xyz, axis=1) == pytest.approx(np.full(300, R), rel=1e-12)
    chord = np.linalg.norm(xyz[1:] - xyz[:-1], axis=1)
    arc = geo.haversine_km_np(lat[1:], lon[1:], lat[:-1], lon[:-1])
    assert geo.chord_to_arc_np(chord) == pytest.approx(arc, rel=1e-9, abs=1e-6)
    assert [geo.chord_to_arc(c) for c in chord] == pytest.approx(arc, rel=1e-9, abs=1e-6)
    assert [geo.arc_to_chord(a) for a in arc] == pytest.approx(chord, rel=1e-9, abs=1e-6)


def test_chord_and_arc_at_the_limits():
    assert geo.arc_to_chord(0.0) == 0.0 and geo.chord_to_arc(0.0) == 0.0
    assert geo.arc_to_chord(math.pi * R * 0.999999) == pytest.approx(2 * R, rel=1e-9)
    assert geo.arc_to_chord(math.pi * R) == math.inf  # half the circumference reaches everything
    assert geo.arc_to_chord(math.inf) == math.inf
    assert geo.chord_to_arc(2 * R * (1 + 1e-12)) == pytest.approx(math.pi * R)  # float residue past 2R


@pytest.mark.parametrize("lat", [0.0, 38.72, 52.52, -33.9, 60.17, 78.2])
def test_east_west_scale_follows_the_latitude(lat):
    step = geo.haversine_km(lat, 10.0, lat, 10.001) / 0.001
    assert geo.km_per_deg_lon(lat) == pytest.approx(step, rel=1e-6)
    assert geo.km_per_deg_lon(lat) == pytest.approx(geo.KM_PER_DEG_LAT * math.cos(math.radians(lat)))


def test_local_km_and_offset_are_inverse_and_true_to_scale_near_the_reference():
    ref = (60.17, 24.94)  # Helsinki: a degree east is half a degree north
    lat, lon = geo.offset_deg(*ref, north_km=2.0, east_km=3.0)
    assert geo.local_km(lat, lon, ref) == pytest.approx((3.0, 2.0), rel=1e-12)
    assert geo.haversine_km(*ref, lat, lon) == pytest.approx(math.hypot(2.0, 3.0), rel=1e-3)
    north, east = np.array([0.5, -1.0, 4.0]), np.array([-2.0, 0.0, 1.5])
    la, lo = geo.offset_deg(np.full(3, ref[0]), np.full(3, ref[1]), north, east, ref_lat=ref[0])
    x, y = geo.local_km(la, lo, ref)
    assert x == pytest.approx(east, abs=1e-12) and y == pytest.approx(north, abs=1e-12)

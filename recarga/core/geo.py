"""Geometry on the Earth's sphere: the one home for distances and degree scales.

Positions are (lat, lon) in degrees. Distances are great-circle kilometres on a sphere of the
mean Earth radius. Points on the sphere (sphere_xyz) are 3-D coordinates in km: the straight
chord between two of them grows monotonically with their great-circle distance, so a k-d
tree over them finds nearest-by-arc exactly and needs no local projection that would
distort a large region. Local east/north km (local_km, offset_deg) are an equirectangular
approximation at a reference latitude: good within a city, not across a continent.
"""
from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)
KM_PER_DEG_LAT = math.pi * EARTH_RADIUS_KM / 180.0  # ~111.195 km, everywhere


def km_per_deg_lon(lat: float) -> float:
    """East-west km per degree of longitude at latitude lat (0 at a pole)."""
    return KM_PER_DEG_LAT * math.cos(math.radians(lat))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2.0) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2.0) ** 2)
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def haversine_km_np(lat1: np.ndarray | float, lon1: np.ndarray | float,
                    lat2: np.ndarray | float, lon2: np.ndarray | float) -> np.ndarray:
    """haversine_km element-wise over arrays (broadcast: one point against many works)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = (np.sin((p2 - p1) / 2.0) ** 2
         + np.cos(p1) * np.cos(p2) * np.sin(np.radians(np.subtract(lon2, lon1)) / 2.0) ** 2)
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(1.0, a)))


def sphere_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(n, 3) points on the sphere in km (the unit vectors scaled by EARTH_RADIUS_KM), so
    that chords compare with arcs through chord_to_arc / arc_to_chord."""
    la, lo = np.radians(lat), np.radians(lon)
    c = np.cos(la)
    return EARTH_RADIUS_KM * np.column_stack((c * np.cos(lo), c * np.sin(lo), np.sin(la)))


def chord_to_arc(chord: float) -> float:
    """Great-circle km between two points on the sphere whose straight chord is chord km."""
    return 2.0 * EARTH_RADIUS_KM * math.asin(min(1.0, chord / (2.0 * EARTH_RADIUS_KM)))


def chord_to_arc_np(chord: np.ndarray) -> np.ndarray:
    """chord_to_arc element-wise."""
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, chord / (2.0 * EARTH_RADIUS_KM)))


def arc_to_chord(arc: float) -> float:
    """Straight chord km between two points arc great-circle km apart; inf from half the
    circumference on (every point of the sphere is within such an arc)."""
    if arc >= math.pi * EARTH_RADIUS_KM:
        return math.inf
    return 2.0 * EARTH_RADIUS_KM * math.sin(arc / (2.0 * EARTH_RADIUS_KM))


def local_km(lat: np.ndarray | float, lon: np.ndarray | float,
             ref: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) km of positions from ref, equirectangular at ref's latitude."""
    return ((np.asarray(lon) - ref[1]) * km_per_deg_lon(ref[0]),
            (np.asarray(lat) - ref[0]) * KM_PER_DEG_LAT)


def offset_deg(lat: np.ndarray | float, lon: np.ndarray | float,
               north_km: np.ndarray | float, east_km: np.ndarray | float,
               ref_lat: float | None = None) -> tuple[np.ndarray | float, np.ndarray | float]:
    """(lat, lon) moved north_km north and east_km east, equirectangular at ref_lat (the
    position's own latitude when not given; a scalar lat then)."""
    scale = km_per_deg_lon(float(lat) if ref_lat is None else ref_lat)
    return lat + north_km / KM_PER_DEG_LAT, lon + east_km / scale

"""Sites: the charging devices a driver sees as one place.

A register lists devices (one pillar, one wallbox); at a hub a driver takes whichever unit is
free. Devices of one operator within a distance of each other (default 50 m) form a site,
transitively: A-B and B-C within reach make A, B and C one site even when A-C is farther.

Pure functions over StationMeta; pairs within reach come from a k-d tree over points on the
sphere (the chord grows monotonically with the great-circle distance, so the cut is exact).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from recarga.core.geo import arc_to_chord, sphere_xyz
from recarga.core.model import StationMeta

DEFAULT_SITE_DISTANCE_M = 50.0


def operator_key(operator: str) -> str:
    """Operator names as registers spell them: case and spacing vary between rows."""
    return " ".join(operator.split()).casefold()


def group_sites(stations: Sequence[StationMeta],
                distance_m: float = DEFAULT_SITE_DISTANCE_M) -> list[StationMeta]:
    """The stations in the same order, each with its site set.

    A station that already names its site (a station file's `site`, an OCPI Location) keeps
    it. The others are grouped: same operator (operator_key) and within distance_m, chained.
    A site's id is the smallest id (string order) of its members, so it does not depend on
    the file's row order and is a valid station id itself. A station without an operator
    is a site alone (nothing says who runs the devices near it); distance_m = 0 makes every
    device its own site.
    """
    if not (math.isfinite(distance_m) and distance_m >= 0):
        raise ValueError(f"site distance must be a finite number of metres >= 0, got {distance_m!r}")
    todo = [i for i, s in enumerate(stations) if not s.site]
    site_of = {i: stations[i].id for i in todo}
    if len(todo) > 1 and distance_m > 0:
        lat = np.array([stations[i].lat for i in todo])
        lon = np.array([stations[i].lon for i in todo])
        pairs = cKDTree(sphere_xyz(lat, lon)).query_pairs(arc_to_chord(distance_m / 1000.0),
                                                    output_type="ndarray")
        keys = [operator_key(stations[i].operator) for i in todo]
        keep = [k for k, (a, b) in enumerate(pairs) if keys[a] and keys[a] == keys[b]]
        pairs = pairs[keep]
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                           shape=(len(todo), len(todo)))
        _, label = connected_components(graph, directed=False)
        first: dict[int, str] = {}
        for k, i in enumerate(todo):
            sid = stations[i].id
            first[label[k]] = min(first.get(label[k], sid), sid)
        site_of = {i: first[label[k]] for k, i in enumerate(todo)}
    return [replace(s, site=site_of[i]) if i in site_of else s for i, s in enumerate(stations)]


def by_site(stations: Sequence[StationMeta]) -> dict[str, list[StationMeta]]:
    """Members of each site, sites in order of their first member; ungrouped stations
    (site "") count as sites of their own."""
    sites: dict[str, list[StationMeta]] = {}
    for s in stations:
        sites.setdefault(s.site or s.id, []).append(s)
    return sites

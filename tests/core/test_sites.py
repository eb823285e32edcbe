"""Sites: devices of one operator within a distance of each other, chained."""
from __future__ import annotations

import math
import time

import pytest

from harness import ROOT
from recarga.core.geo import haversine_km
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.sites import by_site, group_sites
from recarga.core.stations import load_bnetza_csv

M_PER_DEG_LAT = 111_194.9  # metres per degree of latitude on the mean sphere


def _at(sid: str, north_m: float, operator: str = "Op", east_m: float = 0.0,
        lat0: float = 52.5, site: str = "") -> StationMeta:
    lat = lat0 + north_m / M_PER_DEG_LAT
    lon = 13.4 + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat0)))
    return StationMeta(sid, lat, lon, (SlotMeta(22.0, False),), operator=operator, site=site)


def _sites(stations) -> list[str]:
    return [s.site for s in group_sites(stations)]


def test_distance_boundary():
    assert _sites([_at("a", 0), _at("b", 49.9)]) == ["a", "a"]
    assert _sites([_at("a", 0), _at("b", 50.1)]) == ["a", "b"]
    assert [s.site for s in group_sites([_at("a", 0), _at("b", 50.1)], 60.0)] == ["a", "a"]
    assert [s.site for s in group_sites([_at("a", 0), _at("b", 1.0)], 0.0)] == ["a", "b"]


def test_east_west_distance_uses_the_stations_latitude():
    # 45 m east at 60 degrees north; measured with Berlin's latitude it would be 55 m
    assert _sites([_at("a", 0, lat0=60.0), _at("b", 0, east_m=45.0, lat0=60.0)]) == ["a", "a"]
    assert _sites([_at("a", 0, lat0=60.0), _at("b", 0, east_m=60.0, lat0=60.0)]) == ["a", "b"]


def test_chained_within_reach_is_one_site():
    # a-b 40 m, b-c 40 m, a-c 80 m: one site; d is 45 m beyond c but of another operator
    stations = [_at("c", 80), _at("a", 0), _at("b", 40), _at("d", 125, operator="Other")]
    assert _sites(stations) == ["a", "a", "a", "d"]


def test_operator_boundary_and_spelling():
    stations = [_at("x1", 0, operator="Stadtwerke GmbH"), _at("x2", 10, operator=" stadtwerke  gmbh"),
                _at("y1", 5, operator="Other GmbH"), _at("n1", 2, operator=""), _at("n2", 3, operator="")]
    assert _sites(stations) == ["x1", "x1", "y1", "n1", "n2"]


def test_site_id_does_not_depend_on_row_order():
    stations = [_at("k9", 0), _at("k10", 20), _at("k2", 40)]
    assert _sites(stations) == ["k10", "k10", "k10"]  # the smallest id in string order
    assert _sites(stations[::-1]) == ["k10", "k10", "k10"]


def test_named_sites_are_kept_and_not_regrouped():
    stations = [_at("a", 0, site="hub"), _at("b", 10), _at("c", 20)]
    assert _sites(stations) == ["hub", "b", "b"]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_distance_is_refused(bad):
    with pytest.raises(ValueError, match="site distance"):
        group_sites([_at("a", 0)], bad)


def test_by_site_lists_members():
    grouped = group_sites([_at("a", 0), _at("c", 500), _at("b", 10)])
    assert {k: [s.id for s in v] for k, v in by_site(grouped).items()} == {"a": ["a", "b"], "c": ["c"]}


def test_berlin_register_grouped():
    berlin = load_bnetza_csv(ROOT / "data" / "berlin_charging_stations_bnetza.csv")
    start = time.perf_counter()
    grouped = group_sites(berlin)
    assert time.perf_counter() - start < 1.0
    assert [s.id for s in grouped] == [s.id for s in berlin]
    sites = by_site(grouped)
    assert len(sites) == 2625
    # a parking garage: 55 devices of E.ON Drive, chained within 50 m
    garage = sites["1136244"]
    assert len(garage) == 55 and {s.operator for s in garage} == {"E.ON Drive GmbH"}
    for site in sites.values():
        assert len({s.operator.casefold() for s in site}) == 1
        for s in site:  # every member is within reach of another member
            assert len(site) == 1 or min(haversine_km(s.lat, s.lon, t.lat, t.lon)
                                         for t in site if t is not s) <= 0.050
    assert len(by_site(group_sites(berlin, 0.0))) == len(berlin)

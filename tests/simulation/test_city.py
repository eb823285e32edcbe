"""The synthetic small city with hubs (recarga/simulation/city.py): its stations, their sites
and its demand."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recarga.core import evmodels
from recarga.core.geo import haversine_km
from recarga.core.sites import by_site, group_sites
from recarga.core.stations import dump_stations_json, load_stations
from recarga.simulation import city, demand


def test_the_town_has_sixty_points_three_dc_hubs_and_ac_posts():
    town = city.stations(1)
    assert sum(len(s.slots) for s in town) == 60
    hubs = [s for s in town if s.id.startswith("hub")]
    posts = [s for s in town if s.id.startswith("ac")]
    assert len(hubs) + len(posts) == len(town)
    per_hub: dict[str, list] = {}
    for s in hubs:
        per_hub.setdefault(s.operator, []).append(s)
    assert len(per_hub) == 3
    for units in per_hub.values():
        assert 4 <= len(units) <= 6
        powers = {sl.power_kw for u in units for sl in u.slots}
        assert len(powers) == 1 and powers <= {50.0, 150.0}
        assert all(len(u.slots) == 1 and u.slots[0].dc for u in units)
        # a few metres apart: one place for a driver
        assert max(haversine_km(a.lat, a.lon, b.lat, b.lon) for a in units for b in units) <= 0.020
    assert all(not sl.dc and 7.0 <= sl.power_kw <= 22.0 for s in posts for sl in s.slots)
    assert len(posts) > 2 * len(hubs) / 3 and len({s.operator for s in posts}) == 4


def test_grouping_makes_each_hub_one_site_and_leaves_posts_alone():
    town = city.stations(1)
    sites = by_site(group_sites(town))
    multi = [members for members in sites.values() if len(members) > 1]
    assert sorted(len(m) for m in multi) == sorted(
        sum(s.operator == op for s in town) for op in {s.operator for s in town if s.id.startswith("hub")})
    assert all({s.operator for s in m} == {m[0].operator} and m[0].id.startswith("hub") for m in multi)
    assert len(by_site(group_sites(town, 0.0))) == len(town)


def test_the_town_is_a_function_of_its_seed_and_lies_within_its_radius():
    p = city.CityParams(centre=(41.15, -8.61), radius_km=2.0)
    a, b = city.stations(7, p), city.stations(7, p)
    assert a == b and a != city.stations(8, p)
    assert all(haversine_km(41.15, -8.61, s.lat, s.lon) <= 2.0 + 0.02 for s in a)


def test_the_town_survives_its_station_file(tmp_path):
    town = city.stations(3)
    path = tmp_path / "town.json"
    dump_stations_json(town, path)
    back = load_stations(path)
    assert [(s.id, s.lat, s.lon, s.slots, s.operator) for s in back] == \
        [(s.id, s.lat, s.lon, s.slots, s.operator) for s in town]
    assert len(by_site(back)) == len(by_site(group_sites(town)))


def test_demand_is_about_two_hundred_ten_kwh_sessions_mostly_one_40_kwh_model():
    town = city.stations(1)
    slots = sum(len(s.slots) for s in town)
    models = evmodels.load_models()
    fleet, probs = demand.mix(models, city.DEMAND["car_mix"])
    leaf = fleet[int(np.argmax(probs))]
    assert probs.max() == pytest.approx(0.6) and 36.0 <= leaf.battery_kwh <= 40.0 and not leaf.phev
    cars, energy, leafs = [], [], 0
    for seed in range(1, 6):
        p = demand.DemandParams(cars_per_day=city.load_per_slot(slots) * slots, **city.DEMAND)
        plans = demand.generate(seed, p, town, models, road_factor=1.3)
        cars.append(len(plans))
        energy += [(c.target_soc - c.soc_ask) * c.model.battery_kwh for c in plans]
        leafs += sum(c.model is leaf for c in plans)
    assert 170 <= np.mean(cars) <= 230  # Poisson around 200: sd ~6 over five days
    assert 9.5 <= np.mean(energy) <= 10.5 and min(energy) >= 6.0 - 1e-9 and max(energy) <= 14.0 + 1e-9
    assert 0.55 <= leafs / sum(cars) <= 0.65


@pytest.mark.parametrize("change, words", [
    ({"hubs": 20}, "do not fit in 60 charge points"),
    ({"units_per_hub": (5, 4)}, "units_per_hub"),
    ({"radius_km": 0.0}, "radius"),
])
def test_parameters_that_make_no_town_are_refused(change, words):
    with pytest.raises(ValueError, match=words):
        city.stations(1, replace(city.CityParams(), **change))


def test_load_per_slot_gives_the_sessions_per_day():
    assert city.load_per_slot(60) * 60 == pytest.approx(city.SESSIONS_PER_DAY)
    with pytest.raises(ValueError, match="no charge points"):
        city.load_per_slot(0)

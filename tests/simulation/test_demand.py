"""Demand for any city (recarga/simulation/demand.py): centre and spread from the stations,
local distances, no pile-up at the area's edge, the car mix, energy per session, dwell and
drivers without the app; plug-in hybrids from the models file."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recarga.core import evmodels
from recarga.core.geo import haversine_km
from recarga.core.model import SlotMeta, StationMeta
from recarga.simulation import demand
from recarga.simulation.cli import select_stations


@pytest.fixture(scope="module")
def models():
    return evmodels.load_models()


def city(lat: float, lon: float, n: int = 30, spread_deg: float = 0.02, seed: int = 1) -> list[StationMeta]:
    """n AC stations scattered around (lat, lon)."""
    rng = np.random.default_rng(seed)
    return [StationMeta(f"s{i}", lat + float(rng.uniform(-spread_deg, spread_deg)),
                        lon + float(rng.uniform(-spread_deg, spread_deg)), (SlotMeta(22.0, False),) * 2)
            for i in range(n)]


def test_plug_in_hybrids_load_as_ac_only_cars(models):
    phev = [m for m in models if m.phev]
    assert phev and all(m.max_dc_kw == 0 and not m.dc_curve and m.max_ac_kw > 0 for m in phev)
    assert all(m.model_id for m in models)
    assert evmodels.describe(models) == f"{len(models) - len(phev)} battery-electric, {len(phev)} plug-in hybrid"


def test_the_default_mix_is_the_battery_electric_models(models):
    fleet, probs = demand.mix(models, ())
    assert fleet and not any(m.phev for m in fleet)
    assert probs.sum() == pytest.approx(1.0)


def test_a_car_mix_names_models_by_name_or_id_with_weights(models):
    phev = next(m for m in models if m.phev)
    bev = next(m for m in models if not m.phev)
    stations = city(38.72, -9.14)
    p = demand.DemandParams(cars_per_day=2000, car_mix=((bev.name, 3.0), (phev.model_id, 1.0)))
    plans = demand.generate(1, p, stations, models, 1.3)
    got = Counter(pl.model.name for pl in plans)
    assert set(got) == {bev.name, phev.name}
    assert got[bev.name] / len(plans) == pytest.approx(0.75, abs=0.05)
    with pytest.raises(ValueError, match="unknown car model 'No Such Car'"):
        demand.mix(models, (("No Such Car", 1.0),))


def test_the_centre_and_spread_come_from_the_stations():
    stations = city(38.72, -9.14)  # Lisbon
    a = demand.area(stations, demand.DemandParams(cars_per_day=1))
    assert a.centre == pytest.approx((float(np.median([s.lat for s in stations])),
                                      float(np.median([s.lon for s in stations]))))
    assert 0.3 <= a.sigma_km < 2.0  # half the median distance of stations ~2 km apart
    # east-west scale at the centre's latitude, not Berlin's: a short great-circle step east
    assert a.km_per_deg_lon == pytest.approx(haversine_km(*a.centre, a.centre[0], a.centre[1] + 1e-3) * 1e3,
                                             rel=1e-6)
    given = demand.area(stations, demand.DemandParams(cars_per_day=1, centre=(38.7, -9.1), centre_sigma_km=2.5))
    assert given.centre == (38.7, -9.1) and given.sigma_km == 2.5


def test_radius_selection_measures_from_the_stations_own_centre():
    stations = city(38.72, -9.14)
    assert len(select_stations(stations, 3.0)) > len(stations) // 2
    assert select_stations(stations, 3.0, centre=(52.52, 13.405)) == []


def test_no_pile_up_at_the_edge_of_the_area(models):
    # a wide centre spread around a small cluster: clamping would put many cars on one corner
    stations = city(60.17, 24.94, n=10, spread_deg=0.01)  # Helsinki
    p = demand.DemandParams(cars_per_day=3000, centre_sigma_km=30.0, centre_share=1.0)
    plans = demand.generate(2, p, stations, models, 1.3)
    a = demand.area(stations, p)
    pts = Counter((round(pl.origin[0], 6), round(pl.origin[1], 6)) for pl in plans)
    assert pts.most_common(1)[0][1] / len(plans) < 0.05
    lat0, lat1, lon0, lon1 = a.box
    assert all(lat0 <= pl.origin[0] <= lat1 and lon0 <= pl.origin[1] <= lon1 for pl in plans)


def test_leg_lengths_use_the_local_latitude(models):
    stations = city(60.17, 24.94, n=20, spread_deg=0.2)
    p = demand.DemandParams(cars_per_day=500, leg_km=(3.0, 6.0), ask_soc=(0.5, 0.6))
    plans = demand.generate(3, p, stations, models, 1.3)
    checked = 0
    for pl in plans:
        straight = haversine_km(*pl.origin, *pl.ask_at)
        if pl.soc_start < 1.0 and straight > 0.5 and pl.leg_km >= 3.0:  # not shortened, not at the destination
            assert straight * 1.3 == pytest.approx(pl.leg_km, rel=0.01)
            checked += 1
    assert checked > 50


def test_energy_per_session_sets_the_state_of_charge_at_request(models):
    stations = city(38.72, -9.14)
    p = demand.DemandParams(cars_per_day=300, energy_kwh=(8.0, 12.0), target_soc=0.8)
    plans = demand.generate(4, p, stations, models, 1.3)
    for pl in plans:
        e = (pl.target_soc - pl.soc_ask) * pl.model.battery_kwh
        if pl.soc_ask > demand.MIN_ASK_SOC:
            assert 8.0 - 1e-9 <= e <= 12.0 + 1e-9
        else:  # a small battery: charges what it can, up to full
            assert pl.target_soc <= 1.0


def test_dwell_and_drivers_without_the_app_are_drawn(models):
    stations = city(38.72, -9.14)
    p = demand.DemandParams(cars_per_day=2000, dwell_min=(10.0, 20.0), no_app=0.25)
    plans = demand.generate(5, p, stations, models, 1.3)
    assert all(600.0 <= pl.dwell_s <= 1200.0 for pl in plans)
    assert sum(not pl.app for pl in plans) / len(plans) == pytest.approx(0.25, abs=0.04)
    plain = demand.generate(5, demand.DemandParams(cars_per_day=200), stations, models, 1.3)
    assert all(pl.dwell_s == 0.0 and pl.app for pl in plain)

"""Estimates along the car model's charge curves (CarNeed.model), against evmodels."""
from __future__ import annotations

from dataclasses import replace

import pytest
from test_selection import AC11, AC22, DC50, DC150, NOW, FakeView, car, station

from recarga.core.evmodels import CarModel, charge_seconds
from recarga.core.model import SelectionParams
from recarga.core.selection import POLICIES, Selector

# tapers from 150 kW at 50 % to 30 kW at 100 %; 11 kW on a three-phase point, 7.4 on a 7.4
TAPER = CarModel("Taper", 60.0, 18.0, 11.0, 150.0, ((7.4, 7.4), (11.0, 11.0), (22.0, 11.0)),
                 ((0.0, 150.0), (0.5, 150.0), (1.0, 30.0)), "taper-1")


def soc_at(ch, c) -> float:
    return c.target_soc - ch.energy_kwh / c.battery_kwh


@pytest.mark.parametrize("policy", POLICIES)
def test_a_dc_charge_into_high_soc_takes_longer_along_the_curve_and_is_its_integral(policy):
    stations = [station("A", 1.0, 0.0, DC150)]
    flat = car(target_soc=0.95)
    curved = replace(flat, model=TAPER)
    sel = Selector(stations, SelectionParams())
    a = sel.choose(policy, flat, NOW, FakeView(stations=stations))
    b = sel.choose(policy, curved, NOW, FakeView(stations=stations))
    assert a.energy_kwh == pytest.approx(b.energy_kwh)
    expected = charge_seconds(TAPER.power_curve(150.0, True), 60.0, soc_at(b, curved), 0.95)
    assert b.charge_s == pytest.approx(expected)
    assert b.charge_s > 1.3 * a.charge_s  # the taper above 50 %
    assert b.power_kw == pytest.approx(b.energy_kwh * 3600.0 / b.charge_s)


def test_the_curve_is_capped_by_the_limit_the_request_states():
    stations = [station("A", 1.0, 0.0, DC150)]
    c = replace(car(max_dc_kw=50.0, target_soc=0.95), model=TAPER)
    ch = Selector(stations, SelectionParams()).choose("least_completion", c, NOW, FakeView(stations=stations))
    expected = charge_seconds(TAPER.power_curve(150.0, True, 50.0), 60.0, soc_at(ch, c), 0.95)
    assert ch.charge_s == pytest.approx(expected)


def test_ac_follows_the_power_the_model_draws_at_the_point():
    stations = [station("A", 1.0, 0.0, AC22)]
    c = replace(car(max_ac_kw=22.0, max_dc_kw=0.0), model=TAPER)
    ch = Selector(stations, SelectionParams()).choose("least_completion", c, NOW, FakeView(stations=stations))
    assert ch.power_kw == pytest.approx(11.0)  # its on-board charger on a 22 kW point
    assert ch.charge_s == pytest.approx(ch.energy_kwh / 11.0 * 3600.0)


def test_least_completion_ranks_by_the_curve():
    # at constant power the 150 kW slot 4 km away finishes first; along the curve (its taper
    # above 50 % makes 150 kW slots little faster than 50 kW ones) the 50 kW slot near by does
    near = station("near", 0.5, 0.0, DC50)
    far = station("far", 4.0, 0.0, DC150)
    flat = car(soc=0.6, target_soc=0.95)
    c = replace(flat, model=TAPER)
    stations = [near, far]
    for scan in (0, 10_000):  # the spatial search and the whole-region scan
        sel = Selector(stations, SelectionParams(), scan_max_slots=scan)
        assert sel.choose("least_completion", flat, NOW, FakeView(stations=stations)).station_id == "far"
        best = sel.choose("least_completion", c, NOW, FakeView(stations=stations))
        assert best.station_id == "near"
        each = [Selector([s], SelectionParams()).choose("least_completion", c, NOW, FakeView(stations=[s]))
                for s in stations]
        assert best.completion_s == pytest.approx(min(x.completion_s for x in each))
        assert best.station_id == min(each, key=lambda x: x.completion_s).station_id


def test_a_model_without_a_dc_curve_keeps_constant_power_on_dc():
    phev = CarModel("Hybrid", 12.0, 20.0, 3.7, 0.0, (), (), "phev-1", True)
    c = replace(car(battery_kwh=12.0, max_ac_kw=3.7, max_dc_kw=50.0), model=phev)
    stations = [station("A", 1.0, 0.0, DC50)]
    ch = Selector(stations, SelectionParams()).choose("least_completion", c, NOW, FakeView(stations=stations))
    assert ch.charge_s == pytest.approx(ch.energy_kwh / 50.0 * 3600.0)


def test_without_a_model_nothing_changes():
    stations = [station("A", 1.0, 0.0, AC11)]
    ch = Selector(stations, SelectionParams()).choose("least_completion", car(), NOW, FakeView(stations=stations))
    assert ch.power_kw == 11.0 and ch.charge_s == pytest.approx(ch.energy_kwh / 11.0 * 3600.0)

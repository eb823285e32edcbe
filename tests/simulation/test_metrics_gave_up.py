"""Drivers' patience in the loop (recarga/simulation/loop.py): a driver who has waited past
it leaves without charging, counts as gave up and holds nothing any more."""
from __future__ import annotations

import logging
import math

import pytest

from recarga.core import evmodels
from recarga.core.model import SlotMeta, StationMeta
from recarga.simulation import loop, metrics
from recarga.simulation.demand import CarPlan

STATION = StationMeta("s1", 40.0, -8.0, (SlotMeta(11.0, False),))


@pytest.fixture(scope="module")
def model():
    return next(m for m in evmodels.load_models() if m.max_ac_kw >= 11 and not m.phev)


def plans(model, socs, target=0.8):
    """Cars that appear at the station one second apart and ask there."""
    here = (STATION.lat, STATION.lon)
    return [CarPlan(car=f"c{i}", appear_s=float(i), origin=here, ask_at=here, leg_km=0.0, model=model,
                    soc_start=s, soc_ask=s, target_soc=target, no_show=False) for i, s in enumerate(socs)]


def simulate(policy, plans, patience_s):
    cfg = loop.SimConfig(policy, loop.engine_config(policy), day_s=60.0, patience_s=patience_s)
    sim = loop.Simulation(cfg, [STATION], plans)
    return sim, sim.run()


@pytest.mark.parametrize("policy", ["nearest", "least_completion"])
def test_drivers_queueing_past_their_patience_give_up(model, policy):
    # the first car charges for hours: the others queue on site (nearest) or are refused and
    # park (least_completion), and leave after 20 minutes of waiting
    _, r = simulate(policy, plans(model, (0.2, 0.2, 0.2)), 1200.0)
    assert not r.anomalies
    assert [c.state for c in r.cars] == [loop.FINISHED, loop.GAVE_UP, loop.GAVE_UP]
    assert [c.leave_s for c in r.cars[1:]] == [pytest.approx(1201.0), pytest.approx(1202.0)]
    assert all(c.plug_s is None for c in r.cars[1:])
    m = metrics.measure(r, 3.0)
    assert (m.gave_up, m.finished, m.came) == (2, 1, 3)
    assert m.p95_wait_min == pytest.approx(20.0)


def test_a_reserving_driver_who_gives_up_cancels_the_reservation(model, caplog):
    # the first car charges about 20 minutes: the second gets a reservation after it, waits
    # on site, and runs out of patience after 5 minutes
    with caplog.at_level(logging.DEBUG, logger="recarga.engine"):
        sim, r = simulate("least_completion", plans(model, (0.65, 0.65), target=0.7), 300.0)
    assert not r.anomalies
    first, second = r.cars
    assert 900.0 < first.charge_end_s - first.plug_s < 1800.0
    assert (first.state, second.state, second.leave_s) == (loop.FINISHED, loop.GAVE_UP, pytest.approx(301.0))
    assert second.requests == 1 and second.refused == 0  # it did hold a reservation
    c1 = [m.split(") ")[-1] for m in caplog.messages if m.startswith("reservation ") and "(car c1," in m]
    assert c1 == ["confirmed", "cancelled"]
    assert not sim.engine.by_slot.get(("s1", 1))


def test_without_patience_nobody_gives_up(model):
    _, r = simulate("nearest", plans(model, (0.2, 0.2, 0.2)), math.inf)
    assert [c.state for c in r.cars] == [loop.FINISHED] * 3
    assert metrics.measure(r, 3.0).gave_up == 0


@pytest.mark.parametrize("policy", ["nearest", "least_completion"])
def test_a_driver_who_gives_up_still_needs_its_charge(model, policy):
    # queueing on site (nearest) or parked after refusals (least_completion): the charge
    # still needed is the one at the station's 11 kW unit, from the state of charge it left with
    _, r = simulate(policy, plans(model, (0.2, 0.2)), 1200.0)
    first, second = r.cars
    assert second.state == loop.GAVE_UP
    curve = model.power_curve(11.0, False)
    need = evmodels.charge_seconds(curve, model.battery_kwh, second.soc, 0.8)
    assert second.charge_left_s == pytest.approx(need) and need > 3600.0
    m = metrics.measure(r, 2.0)
    lost_first = first.charge_end_s - first.ask_s
    assert m.mean_lost_min == pytest.approx((lost_first + second.leave_s - second.ask_s + need) / 2 / 60)

"""Demand the loop must honour: cars that stay plugged in after charging (dwell) and drivers
without the app, who ask nobody and take a free slot where they arrive."""
from __future__ import annotations

import pytest

from recarga.core import evmodels
from recarga.core.model import SlotMeta, StationMeta
from recarga.simulation import loop
from recarga.simulation.demand import CarPlan

NEAR = StationMeta("near", 38.7200, -9.1400, (SlotMeta(50.0, True),))
FAR = StationMeta("far", 38.7300, -9.1400, (SlotMeta(50.0, True),))


@pytest.fixture(scope="module")
def model():
    return next(m for m in evmodels.load_models() if not m.phev and m.max_dc_kw >= 50)


def car(name: str, t: float, model, *, dwell_s: float = 0.0, app: bool = True) -> CarPlan:
    at = (38.7201, -9.1400)  # next to "near"
    return CarPlan(name, t, at, at, 0.0, model, 0.3, 0.3, 0.8, False, dwell_s=dwell_s, app=app)


def run(policy: str, stations, plans):
    cfg = loop.SimConfig(policy, loop.engine_config(policy), patience_s=float("inf"))
    return loop.simulate(cfg, stations, plans)


@pytest.mark.parametrize("policy", ["least_completion", "nearest"])
def test_a_dwelling_car_keeps_its_slot_after_charging(policy, model):
    plans = [car("a", 0.0, model, dwell_s=900.0), car("b", 60.0, model)]
    r = run(policy, [NEAR], plans)
    a, b = r.cars
    assert a.charge_end_s is not None and a.leave_s == pytest.approx(a.charge_end_s + 900.0)
    assert b.plug_s == pytest.approx(a.leave_s)  # the slot was free only when "a" left
    first = next(s for s in r.sessions if s.car == 0)
    assert first.end == pytest.approx(a.charge_end_s)  # the session is the charging, not the dwell
    assert not r.anomalies


@pytest.mark.parametrize("policy", ["least_completion", "nearest", "most_free"])
def test_drivers_without_the_app_take_the_nearest_free_slot_and_ask_nobody(policy, model):
    plans = [car("x", 0.0, model, app=False), car("y", 30.0, model, app=False)]
    r = run(policy, [FAR, NEAR], plans)
    x, y = r.cars
    assert x.requests == y.requests == 0 and r.decisions == 0
    assert x.station == y.station == "near"
    assert x.state == y.state == loop.FINISHED
    assert y.plug_s == pytest.approx(x.leave_s)  # queued on site behind "x"


def test_the_gateway_sees_slots_taken_without_the_app(model):
    # "x" (no app) plugs in at "near" first; a Recarga car asking then is sent to "far"
    plans = [car("x", 0.0, model, app=False), car("z", 120.0, model)]
    r = run("least_completion", [FAR, NEAR], plans)
    x, z = r.cars
    assert x.station == "near" and z.station == "far"
    assert z.plug_s < x.leave_s

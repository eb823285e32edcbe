"""What a run measured (recarga/simulation/metrics.py), on hand-made car lives."""
from __future__ import annotations

import numpy as np
import pytest

from recarga.core.model import SlotMeta, StationMeta
from recarga.simulation import loop, metrics


def test_gini():
    assert metrics.gini(np.array([1.0, 1.0, 1.0])) == pytest.approx(0.0)
    assert metrics.gini(np.array([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.75)
    assert metrics.gini(np.zeros(3)) == 0.0


def car(state: str, **kw) -> loop.CarRun:
    return loop.CarRun(plan=None, state=state, **kw)  # metrics never read the plan


AC = (SlotMeta(11.0, False),)
ONE = (StationMeta("a", 1.0, 1.0, AC),)


def result(cars, sessions=(), stations=ONE, end_s=4000.0, day_s=3600.0):
    return loop.SimResult("nearest", list(cars), list(sessions), list(stations), day_s, end_s)


def test_time_lost_is_drive_wait_and_charge_but_not_dwell():
    cars = [
        # drove 5 min, waited 10, charged 30, then stayed plugged in 15 more
        car(loop.FINISHED, ask_s=0.0, drive_s=300.0, plug_s=900.0, charge_end_s=2700.0, leave_s=3600.0,
            est_charge_s=1500.0),
        # drove 5 min, waited 30 and left, still needing a 20 min charge
        car(loop.GAVE_UP, ask_s=0.0, drive_s=300.0, leave_s=2100.0, charge_left_s=1200.0),
        # still waiting when the run stopped at 4000 s: counts with its time so far
        car(loop.WAITING, ask_s=1000.0),
        car(loop.NO_SHOW, ask_s=0.0),
        car(loop.STRANDED, ask_s=0.0),
        car(loop.PENDING),
    ]
    sessions = [loop.Session("a", 1, 0, 900.0, 3600.0, 11.0, 5.5)]
    m = metrics.measure(result(cars, sessions), 6.0)
    assert (m.cars, m.came, m.finished, m.gave_up, m.stranded, m.no_show, m.unfinished) == (6, 3, 1, 1, 1, 1, 2)
    assert m.mean_lost_min == pytest.approx((45 + 55 + 50) / 3)
    assert m.p95_lost_min == pytest.approx(np.percentile([45, 55, 50], 95))
    assert m.mean_wait_min == pytest.approx((10 + 30 + 50) / 3)
    assert m.mean_drive_min == pytest.approx(10 / 3)
    assert m.mean_charge_min == pytest.approx(30.0)
    assert m.charge_vs_estimate == pytest.approx(1800 / 1500)
    assert m.energy_kwh == pytest.approx(5.5)


def test_giving_up_never_costs_less_time_than_charging_when_leaving():
    # the same driver: drove 5 min and waited 30; then plugs in for a 40 min charge, or
    # gives up still needing that charge. A policy that drives its drivers away cannot
    # lower its mean time lost by it.
    stayed = car(loop.FINISHED, ask_s=0.0, drive_s=300.0, plug_s=2100.0, charge_end_s=4500.0)
    left = car(loop.GAVE_UP, ask_s=0.0, drive_s=300.0, leave_s=2100.0, charge_left_s=2400.0)
    late = car(loop.FINISHED, ask_s=0.0, drive_s=300.0, plug_s=2400.0, charge_end_s=4800.0)
    lost = {name: metrics.measure(result([c], end_s=9000.0), 1.0).mean_lost_min
            for name, c in (("stayed", stayed), ("left", left), ("late", late))}
    assert lost["left"] == pytest.approx(lost["stayed"]) == pytest.approx(75.0)
    assert lost["left"] < lost["late"]  # waiting longer still costs more


def test_evenness_is_over_sites_when_stations_are_grouped():
    grouped = [StationMeta("a", 1.0, 1.0, AC, site="hub"), StationMeta("b", 1.0, 1.0, AC, site="hub"),
               StationMeta("c", 1.0, 1.1, AC)]
    sessions = [loop.Session("a", 1, 0, 0.0, 1800.0, 11.0, 5.0), loop.Session("c", 1, 1, 0.0, 1800.0, 11.0, 5.0)]
    r = result([], sessions, grouped)
    assert list(metrics.site_utilisation(r)) == pytest.approx([0.25, 0.5])  # the hub: half of two slots
    m = metrics.measure(r, 0.0)
    assert m.sites == 2 and m.gini == pytest.approx(metrics.gini(np.array([0.25, 0.5])))
    # the same stations ungrouped: three sites, one idle
    alone = [StationMeta(s.id, s.lat, s.lon, s.slots) for s in grouped]
    m = metrics.measure(result([], sessions, alone), 0.0)
    assert m.sites == 3 and m.gini == pytest.approx(metrics.gini(np.array([0.5, 0.0, 0.5])))


def test_an_empty_run_measures_nothing():
    m = metrics.measure(result([]), 0.0)
    assert (m.cars, m.came, m.mean_lost_min, m.mean_wait_min, m.energy_kwh, m.utilisation) == (0, 0, 0, 0, 0, 0)
